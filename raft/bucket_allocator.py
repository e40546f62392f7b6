"""The farm's bucket allocator, pure: who owns each of the 256 traffic buckets.

Applied inside a replicated op, so it must give the same table on every Raft
member: no randomness, no dict-order dependence (members are sorted by name),
integer arithmetic only.

Shares: each member's exact share is power/total*256. Its quota is that share
rounded down or up, so it is always within one bucket of proportional. Which
members get the rounded-up quota: first those that already own that many
buckets (so a balanced table never moves), then those below their floor (they
gain buckets anyway), then by largest remainder, ties by name. Moves: a member keeps its buckets up to its quota (lowest indexes
first); buckets of members that left, unowned buckets and each member's
surplus go, in index order, to the members under quota. Nothing else moves, so
the number of buckets that change owner is the least any allocation with these
quotas can achieve: the sum over old owners of (old count - new count) where
positive.

Homes (``allocate_with_homes``): a bucket handed on because its owner left the
farm remembers that owner as its *home*. When the owner comes back, the others give
away their homed buckets first (of what they must give) and it takes its own old
buckets first: a returning node gets back the traffic (and the caches) it had,
and the same number of buckets moves as without homes.
"""
from __future__ import annotations

BUCKETS = 256


class AllocationError(ValueError):
    """Bad input to the allocator (not a plain table or power map)."""


def _check(table: list[str | None] | None, powers: dict[str, int]) -> None:
    if not isinstance(powers, dict):
        raise AllocationError(f"farm powers must be a dict of member -> power, got {powers!r}")
    for name, power in powers.items():
        if not isinstance(name, str) or not name:
            raise AllocationError(f"farm member name must be a non-empty string, got {name!r}")
        if not isinstance(power, int) or isinstance(power, bool) or power <= 0:
            raise AllocationError(f"farm power of {name!r} must be a positive integer, got {power!r}")
    if table is None:
        return
    if not isinstance(table, (list, tuple)) or len(table) != BUCKETS:
        raise AllocationError(f"bucket table must be a list of {BUCKETS} owners, got "
                              f"{type(table).__name__} of length {len(table) if hasattr(table, '__len__') else '?'}")
    for i, owner in enumerate(table):
        if owner is not None and not isinstance(owner, str):
            raise AllocationError(f"bucket {i}: owner must be a member name or None, got {owner!r}")


def shares(table: list[str | None]) -> dict[str, int]:
    """How many buckets each owner holds (unowned buckets are not counted)."""
    counts: dict[str, int] = {}
    for owner in table:
        if owner is not None:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def quotas(powers: dict[str, int], current: dict[str, int] | None = None) -> dict[str, int]:
    """Each member's bucket count: its proportional share rounded down or up,
    summing to BUCKETS. ``current``: counts owned now; a member that already
    owns the rounded-up count is preferred for it, so that it keeps its buckets."""
    _check(None, powers)
    if not powers:
        return {}
    current = current or {}
    total = sum(powers.values())
    floor = {n: p * BUCKETS // total for n, p in powers.items()}
    remainder = {n: p * BUCKETS % total for n, p in powers.items()}
    spare = BUCKETS - sum(floor.values())
    # Only members with a fractional share can take a rounded-up bucket: first those
    # that own more than their floor (they keep it), then those that gain buckets
    # anyway (a joiner), and only then one that owns exactly its floor, which would
    # gain a bucket only for the rounding (from a member that stayed, on a join).
    def rank(n: str) -> int:
        if not current:                 # a fresh table: nobody keeps or gives anything
            return 0
        have = current.get(n, 0)
        return 0 if have > floor[n] else 1 if have < floor[n] else 2

    candidates = sorted((n for n in powers if remainder[n] > 0),
                        key=lambda n: (rank(n), -remainder[n], n))
    result = dict(floor)
    for n in candidates[:spare]:
        result[n] += 1
    return result


def allocate(table: list[str | None] | None, powers: dict[str, int]) -> list[str | None]:
    """The new owner of each bucket for the members ``powers`` (name -> power),
    starting from ``table`` (None: no owners yet). Raises AllocationError on bad input."""
    return allocate_with_homes(table, powers, None)[0]


def allocate_with_homes(table: list[str | None] | None, powers: dict[str, int],
                        homes: list[str | None] | None
                        ) -> tuple[list[str | None], list[str | None]]:
    """``allocate``, preferring to give each bucket back to its home (see module
    doc); returns (new table, new homes)."""
    _check(table, powers)
    _check(homes, {})
    old: list[str | None] = list(table) if table is not None else [None] * BUCKETS
    home: list[str | None] = list(homes) if homes is not None else [None] * BUCKETS
    if not powers:
        return [None] * BUCKETS, [h or o for h, o in zip(home, old, strict=True)]
    current = shares([o if o in powers else None for o in old])
    target = quotas(powers, current)
    new: list[str | None] = [None] * BUCKETS

    def homed_elsewhere(i: int, owner: str) -> bool:
        return home[i] is not None and home[i] != owner and home[i] in powers

    kept: dict[str, int] = {n: 0 for n in powers}
    # Each member keeps up to its quota, its own (not homed elsewhere) buckets first.
    for i in sorted(range(BUCKETS), key=lambda i: (homed_elsewhere(i, old[i] or ""), i)):
        owner = old[i]
        if owner in powers and kept[owner] < target[owner]:
            new[i] = owner
            kept[owner] += 1
    free = [i for i in range(BUCKETS) if new[i] is None]
    for name in sorted(powers):
        want = target[name] - kept[name]
        mine = [i for i in free if home[i] == name][:want]
        taken = set(mine)
        rest = [i for i in free if i not in taken][:want - len(mine)]
        for i in mine + rest:
            new[i] = name
        taken.update(rest)
        free = [i for i in free if i not in taken]
    new_home: list[str | None] = []
    for i in range(BUCKETS):
        if new[i] is not None and new[i] == home[i]:
            new_home.append(None)                   # back home
        elif old[i] is not None and old[i] not in powers and new[i] != old[i]:
            new_home.append(home[i] or old[i])      # its owner left: remember it
        else:
            new_home.append(home[i])
    return new, new_home
