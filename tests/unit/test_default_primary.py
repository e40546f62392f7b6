"""defaultprim decisions (pure)."""
from __future__ import annotations

from hacluster.mirror.default_primary import first_start_names_good_copy, preferred_is_peer
from hacluster.mirror.machine import View

BOTH = View(holder=None, epoch=4, in_sync=frozenset({"n1", "n2"}), peer_live=True)


def test_first_start_names_the_configured_node_only_on_a_fresh_module():
    fresh = View()
    assert first_start_names_good_copy("n1", "n1", fresh)
    assert not first_start_names_good_copy("n1", "n2", fresh)
    assert not first_start_names_good_copy("lastprim", "n1", fresh)
    assert not first_start_names_good_copy(None, "n1", fresh)
    # once a primary existed or someone is in sync, the history decides, not the config
    assert not first_start_names_good_copy("n1", "n1", View(epoch=1))
    assert not first_start_names_good_copy("n1", "n1", View(in_sync=frozenset({"n2"})))


def test_named_node_is_preferred_when_both_could_start():
    assert preferred_is_peer("n1", "n2", "n1", BOTH, None, starting=True)
    assert not preferred_is_peer("n1", "n1", "n2", BOTH, None, starting=True)
    assert not preferred_is_peer("alone", "n2", "n1", BOTH, None, starting=True)
    assert not preferred_is_peer(None, "n2", "n1", BOTH, None, starting=True)


def test_no_deferral_when_the_peer_cannot_take_it_or_on_failover():
    assert not preferred_is_peer("n1", "n2", "n1", View(epoch=4, in_sync=frozenset({"n1", "n2"}),
                                                         peer_live=False), None, starting=True)
    assert not preferred_is_peer("n1", "n2", "n1", View(epoch=4, in_sync=frozenset({"n2"}),
                                                         peer_live=True), None, starting=True)
    assert not preferred_is_peer("n1", "n2", "n1", View(holder="n1", epoch=4, peer_live=True,
                                                         in_sync=frozenset({"n1", "n2"})),
                                 None, starting=True)
    # a secondary whose primary died takes over at once, whatever the preference
    assert not preferred_is_peer("n1", "n2", "n1", BOTH, None, starting=False)


def test_lastprim_prefers_the_holder_of_the_newest_epoch():
    assert not preferred_is_peer("lastprim", "n1", "n2", BOTH, 4, starting=True)
    assert preferred_is_peer("lastprim", "n2", "n1", BOTH, 3, starting=True)
    assert preferred_is_peer("lastprim", "n2", "n1", BOTH, None, starting=True)
    assert not preferred_is_peer("lastprim", "n2", "n1", View(in_sync=frozenset({"n1", "n2"}),
                                                               peer_live=True), None, starting=True)
