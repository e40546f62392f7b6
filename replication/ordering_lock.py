"""The lock that keeps channel order equal to local order (see OrderingLock)."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class OrderingLock:
    """Channel order = local order, without serialising unrelated data writes.

    Exclusive side (``with lock:``, reentrant like an RLock): namespace and
    metadata operations, and whoever must see no change in flight (reintegration).
    Shared side (``with lock.shared():``): data operations on an open file, which
    additionally hold that inode's own lock. Writers are preferred: once an
    exclusive holder waits, new shared holders wait too.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Exclusive (reentrant)."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            free = lambda: self._owner is None and not self._readers  # noqa: E731
            self._waiting += 1
            try:
                if blocking:
                    ok = self._cond.wait_for(free, None if timeout < 0 else timeout)
                else:
                    ok = free()
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._cond.notify_all()  # shared waiters held back by us may go on
            if ok:
                self._owner, self._depth = me, 1
            return ok

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of an OrderingLock not held by this thread")
            self._depth -= 1
            if not self._depth:
                self._owner = None
                self._cond.notify_all()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # already exclusive: nothing more to take
                held = False
            else:
                self._cond.wait_for(lambda: self._owner is None and not self._waiting)
                self._readers += 1
                held = True
        try:
            yield
        finally:
            if held:
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()
