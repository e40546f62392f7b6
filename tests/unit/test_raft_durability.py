"""The journal is on disk (fsynced) before it is relied on. Every member SIGKILLed at once
and restarted in the lab: tests/lab/test_raft_durability.py."""
import os


from raft import durable_storage


def test_journal_sync_writes_entries_and_meta_durably(tmp_path, monkeypatch):
    durable_storage.install()
    path = str(tmp_path / "raft.journal")
    journal = durable_storage.DurableFileJournal(path)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])

    journal.add(b"\x00cmd-1", 2, 1)
    assert journal.dirty
    journal.sync()
    assert not journal.dirty and fsynced, "sync() must fsync the journal"
    count = len(fsynced)
    journal.sync()
    assert len(fsynced) == count, "a clean journal is not fsynced again"

    journal.setCurrentTerm(7, "10.0.0.1:7400")  # vote: stored durably before it is sent
    assert len(fsynced) > count
    journal._destroy()

    reopened = durable_storage.DurableFileJournal(path)
    assert [e[1] for e in reopened[0:len(reopened)]] == [2]
    assert reopened.getCurrentTerm() == 7
    assert reopened.getVotedForNodeId() == "10.0.0.1:7400"
    reopened._destroy()
