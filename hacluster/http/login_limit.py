"""How many failed logins the API takes: per source address and per user name, in a
sliding window; past the limit a login is answered 429 with Retry-After, before the
password is even hashed (scrypt costs memory and time: an unlimited login endpoint
would be a way to exhaust the node that also renews leases).

Pure: the caller passes the monotonic time. Per member (not replicated): an attacker
spreading over three members gets three times the attempts, which is still a handful
per minute. Memory is bounded: at most ``max_keys`` addresses and users are tracked.
"""
from __future__ import annotations

from collections import OrderedDict, deque

WINDOW_S = 300.0
PER_ADDRESS = 20
PER_USER = 5


class LoginLimit:
    def __init__(self, window_s: float = WINDOW_S, per_address: int = PER_ADDRESS,
                 per_user: int = PER_USER, max_keys: int = 10000) -> None:
        self.window_s = window_s
        self.limits = {"address": per_address, "user": per_user}
        self.max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, address: str, user: str, now: float) -> float:
        """0 when a login from ``address`` as ``user`` may be tried now, else the seconds
        until it may."""
        wait = 0.0
        for kind, value in (("address", address), ("user", user)):
            times = self._recent((kind, value), now)
            if len(times) >= self.limits[kind]:
                wait = max(wait, times[-self.limits[kind]] + self.window_s - now)
        return wait

    def failed(self, address: str, user: str, now: float) -> None:
        for key in (("address", address), ("user", user)):
            times = self._failures.setdefault(key, deque())
            self._failures.move_to_end(key)
            times.append(now)
            while len(times) > max(self.limits.values()):
                times.popleft()
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """A good password clears the user's count (not the address's: one good account
        does not license guessing others)."""
        self._failures.pop(("user", user), None)
