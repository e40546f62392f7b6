"""Make pysyncobj's storage durable (DESIGN.md rule 5).

pysyncobj 0.3.17 writes its journal into an mmap and its term/vote file and
dumps with a rename, and never fsyncs any of them: a power cut can lose an
entry that this node already acknowledged, or a vote it already cast. Here:

* ``DurableFileJournal`` fsyncs the journal, mmap included (``sync()``), and
  ``RaftMember`` calls it before any message leaves the node (so no ack or
  append is sent for an entry that is not on disk) and once per tick (so a
  single-voter leader is covered too);
* term and vote (``.meta``) are written to a temp file, fsynced, renamed and
  the directory fsynced, before pysyncobj sends the vote;
* dumps (log compaction) go through the same durable replace before the
  journal is truncated.

Nothing of it is readable by other users: the Raft directory is made 0700
(``private_dir``), the journal, ``.meta`` and dumps 0600.

``install()`` points pysyncobj at these; it is idempotent.
"""
from __future__ import annotations

import os

import pysyncobj.journal as _journal
import pysyncobj.serializer as _serializer
import pysyncobj.syncobj as _syncobj

from replication.durable_file import durable_replace, fsync_parent


def private_dir(path: "str | os.PathLike") -> None:
    """Create ``path`` (and missing parents) as 0700, and take group and other
    permissions off it if it exists: state directories hold the journal, secrets,
    module configurations."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)


def _private_replace(tmp_path: str, path: str) -> None:
    """durable_replace for pysyncobj's dumps, which it creates with the umask's mode."""
    os.chmod(tmp_path, 0o600)
    durable_replace(tmp_path, path)


class DurableMetaStorer(_journal.MetaStorer):
    def storeMeta(self, meta: dict) -> None:  # noqa: N802 (pysyncobj's name)
        tmp = self.getPath() + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o600)
            f.write(_journal.dumps(meta))
        durable_replace(tmp, self.getPath())


class DurableFileJournal(_journal.FileJournal):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        # FileJournal keeps its MetaStorer private; swap in the durable one.
        self._FileJournal__metaStorer = DurableMetaStorer(path + ".meta")
        self._fd = os.open(path, os.O_RDONLY)
        os.fchmod(self._fd, 0o600)  # pysyncobj creates it with the umask's mode
        self._dirty = True
        fsync_parent(path)
        self.sync()

    def add(self, command, idx, term):  # noqa: D102 - pysyncobj API
        super().add(command, idx, term)
        self._dirty = True

    def clear(self):
        super().clear()
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom):  # noqa: N802,N803
        super().deleteEntriesFrom(entryFrom)
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def sync(self) -> None:
        """Everything added so far is on disk when this returns."""
        if not self._dirty:
            return
        # One fsync covers the records written through the mmap too: on Linux,
        # msync(MS_SYNC) is itself an fsync of the mapped range (mm/msync.c calls
        # vfs_fsync_range), and fsync writes back every dirty page of the file,
        # mapped or not. So no separate msync: CPython 3.11's mmap.flush() also
        # holds the GIL while the disk works, freezing the event loop meanwhile.
        os.fsync(self._fd)
        self._dirty = False

    def _destroy(self):
        self.sync()
        super()._destroy()
        os.close(self._fd)


def _create_journal(journal_file=None):
    if journal_file is None:
        return _journal.MemoryJournal()
    return DurableFileJournal(journal_file)


def install() -> None:
    _syncobj.createJournal = _create_journal
    _serializer.atomicReplace = _private_replace
