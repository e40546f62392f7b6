"""The lock that keeps channel order equal to local order (see OrderingLock)."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


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
        # (taken, released): run by the exclusive holder right after it took the
        # lock and right before it lets go (outermost level only). The C write path
        # holds its writes back there (replication/native_fuse.py).
        self.exclusive_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._held_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None

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
            hooks = self.exclusive_hooks
        if ok and hooks is not None:
            try:
                hooks[0]()
            except BaseException:
                self._let_go()
                raise
            self._held_hooks = hooks   # released by the same ones, even if changed meanwhile
        return ok

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of an OrderingLock not held by this thread")
            if self._depth > 1:
                self._depth -= 1
                return
            hooks, self._held_hooks = self._held_hooks, None
        if hooks is not None:
            hooks[1]()
        self._let_go()

    def _let_go(self) -> None:
        with self._cond:
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
