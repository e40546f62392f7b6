"""``<service defaultprim="alone|NODE|lastprim">``: which node should become primary
when both could. Pure decisions; the mirror driver applies them.

Safety does not depend on any of this (the Raft lease and the in-sync set decide
who *may* be primary); it only chooses among nodes that may, so that a planned
start of both nodes puts the application where the administrator wants it:

* ``NODE``: that node is preferred. On a module's very first start (no primary
  ever, nobody in sync) its copy is taken as the good one, as if ``prim`` had been
  typed there; the administrator named it in the configuration.
* ``lastprim``: the node that held the last primary epoch is preferred.
* ``alone`` (and no attribute): no preference; whichever in-sync node asks first.

The node that is not preferred waits a little before asking for the lease while
the preferred one is live and in sync, then asks anyway (a preference must not
leave the application down).
"""
from __future__ import annotations

from .machine import View


def first_start_names_good_copy(defaultprim: str | None, node: str, view: View) -> bool:
    """A plain ``start`` here should act as ``prim``: the module never had a
    primary, nobody is in sync, and the configuration names this node."""
    return (defaultprim == node and view.epoch == 0 and view.holder is None
            and not view.in_sync)


def preferred_is_peer(defaultprim: str | None, node: str, peer: str, view: View,
                      last_epoch_here: int | None, starting: bool) -> bool:
    """Should this node hold back its contention for the module lease?

    ``last_epoch_here``: the last epoch this node held the lease at (kept on its
    disk), or None if it never did. ``starting``: this node is starting (WAIT); a
    secondary taking over from a dead primary is never held back.
    """
    if (not starting or view.holder is not None or not view.peer_live
            or peer not in view.in_sync):
        return False
    if defaultprim == peer:
        return True
    if defaultprim == "lastprim":
        # Epochs rise with every grant: if the newest one is not ours, the peer's it is.
        return view.epoch > 0 and last_epoch_here != view.epoch
    return False
