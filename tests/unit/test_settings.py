"""raft/settings.py: Raft timers and lease timing."""
from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import SyncObjConf

from raft.lease import LeaseTiming
from raft.settings import RaftSettings, SettingsError


def test_defaults_valid():
    s = RaftSettings()
    assert s.lease_timing == LeaseTiming(1.5, 0.3)
    # renewal (lease/4) comes well before the holder deadline (lease - margin)
    assert s.lease_timing.renew_interval_s < s.lease_s - s.lease_margin_s
    # a lost leader steps down before a lease could run out on it
    assert s.leader_fallback_s <= s.lease_s
    assert RaftSettings.from_dict(None) == s
    assert RaftSettings.from_dict({}) == s


def test_to_dict_round_trip():
    s = RaftSettings(lease_s=3.0, lease_margin_s=0.5, log_compaction_entries=100)
    d = s.to_dict()
    assert d["lease_s"] == 3.0 and d["log_compaction_entries"] == 100
    assert RaftSettings.from_dict(d) == s


def test_from_dict_unknown_key():
    with pytest.raises(SettingsError) as e:
        RaftSettings.from_dict({"lease": 2.0, "zzz": 1, "tick_period_s": 0.01}, where="x.json: raft")
    assert str(e.value) == "x.json: raft: unknown setting(s) lease, zzz"


@pytest.mark.parametrize("value", ["1.0", None, True, [1], {"a": 1}])
def test_from_dict_wrong_type(value):
    with pytest.raises(SettingsError) as e:
        RaftSettings.from_dict({"lease_s": value})
    assert "lease_s must be a number" in str(e.value)
    assert str(e.value).startswith("raft settings: ")


def test_defaults_do_not_batch_appends():
    assert RaftSettings().syncobj_kwargs()["appendEntriesUseBatch"] is False
    assert RaftSettings.from_dict({"batch_appends": True}).syncobj_kwargs()["appendEntriesUseBatch"] is True


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_from_dict_bool_setting_needs_a_bool(value):
    with pytest.raises(SettingsError, match="batch_appends must be true or false"):
        RaftSettings.from_dict({"batch_appends": value})


def test_from_dict_int_setting_needs_an_integer():
    with pytest.raises(SettingsError, match="log_compaction_entries must be an integer"):
        RaftSettings.from_dict({"log_compaction_entries": 10.5})
    assert RaftSettings.from_dict({"log_compaction_entries": 10}).log_compaction_entries == 10
    # an int where a float is expected is fine
    assert RaftSettings.from_dict({"lease_s": 3}).lease_s == 3


@pytest.mark.parametrize("data", [[], "lease_s=1", 3])
def test_from_dict_not_an_object(data):
    with pytest.raises(SettingsError, match="where: must be an object"):
        RaftSettings.from_dict(data, where="where")


@pytest.mark.parametrize("data, setting", [
    ({"election_timeout_min_s": 0.1}, "election_timeout_min_s"),           # <= 3 x append period
    ({"election_timeout_max_s": 0.3}, "election_timeout_max_s"),           # == min
    ({"connection_timeout_s": 0.5}, "connection_timeout_s"),               # < election max
    ({"leader_fallback_s": 0.05}, "leader_fallback_s"),                    # == append period
    ({"tick_period_s": 0}, "tick_period_s"),
    ({"tick_period_s": -0.1}, "tick_period_s"),
    ({"lease_check_period_s": 0}, "lease_check_period_s"),
    ({"append_entries_period_s": 0}, "append_entries_period_s"),
    ({"append_entries_period_s": -1}, "append_entries_period_s"),
    ({"connection_retry_s": -5}, "connection_retry_s"),
    ({"connection_retry_s": math.inf}, "connection_retry_s"),
    ({"log_compaction_entries": 1}, "log_compaction_entries"),   # pysyncobj needs >= 2
    ({"log_compaction_min_time_s": -1}, "log_compaction_min_time_s"),
    ({"tick_period_s": math.nan}, "tick_period_s"),
    ({"tick_period_s": math.inf}, "tick_period_s"),
    ({"lease_check_period_s": math.inf}, "lease_check_period_s"),
    ({"lease_margin_s": 0}, "lease_margin_s"),
    ({"lease_margin_s": 1.125}, "lease_margin_s"),                         # >= lease - lease/4
    ({"lease_s": 0.3}, "lease_s"),                                         # margin no longer fits
    ({"lease_s": -1}, "lease_s"),
])
def test_unsafe_settings_refused_naming_the_setting(data, setting):
    with pytest.raises(SettingsError) as e:
        RaftSettings.from_dict(data, where="cluster.json: raft")
    msg = str(e.value)
    assert msg.startswith("cluster.json: raft: ")
    assert setting in msg


def test_direct_construction_refuses_with_settings_error():
    with pytest.raises(SettingsError, match="lease_margin_s"):
        RaftSettings(lease_margin_s=0.0)
    with pytest.raises(SettingsError, match="election_timeout_max_s"):
        RaftSettings(election_timeout_max_s=0.1)


def test_valid_non_default_combination():
    s = RaftSettings.from_dict({"append_entries_period_s": 0.1, "election_timeout_min_s": 0.5,
                                "election_timeout_max_s": 1.0, "connection_timeout_s": 1.0,
                                "lease_s": 3.0, "lease_margin_s": 1.5})
    assert s.lease_timing.max_drift == pytest.approx(0.5)


def test_syncobj_kwargs_mapping():
    s = RaftSettings(tick_period_s=0.002, append_entries_period_s=0.04, election_timeout_min_s=0.2,
                     election_timeout_max_s=0.4, connection_timeout_s=0.8, connection_retry_s=0.3,
                     leader_fallback_s=0.9, log_compaction_entries=1234,
                     log_compaction_min_time_s=60.0, batch_appends=True)
    assert s.syncobj_kwargs() == {
        "appendEntriesUseBatch": True,
        "autoTickPeriod": 0.002,
        "appendEntriesPeriod": 0.04,
        "raftMinTimeout": 0.2,
        "raftMaxTimeout": 0.4,
        "connectionTimeout": 0.8,
        "connectionRetryTime": 0.3,
        "leaderFallbackTimeout": 0.9,
        "logCompactionMinEntries": 1234,
        "logCompactionMinTime": 60.0,
    }


def test_syncobj_kwargs_are_accepted_by_pysyncobj():
    conf = SyncObjConf(**RaftSettings().syncobj_kwargs())
    conf.validate()
    assert conf.raftMinTimeout == RaftSettings().election_timeout_min_s
    assert conf.autoTickPeriod == RaftSettings().tick_period_s


def _values_for(f):
    if isinstance(f.default, bool):
        return st.booleans()
    if isinstance(f.default, int):
        return st.integers(-2, 10_000)
    return st.floats(allow_nan=True, allow_infinity=True) | st.integers(-1, 5)


setting_values = st.fixed_dictionaries({}, optional={f.name: _values_for(f) for f in fields(RaftSettings)})


@settings(max_examples=300)
@given(setting_values)
def test_whatever_we_accept_pysyncobj_accepts(data):
    # Settings are refused with a message at load time, never by an AssertionError deep
    # inside pysyncobj when the daemon starts.
    try:
        s = RaftSettings.from_dict(data)
    except SettingsError:
        return
    SyncObjConf(**s.syncobj_kwargs()).validate()
    for f in fields(RaftSettings):
        v = getattr(s, f.name)
        assert isinstance(v, bool) or (math.isfinite(v) and v >= 0), f.name


def test_link_timing_must_fit_below_the_election_timeout():
    RaftSettings(link_heartbeat_s=0.05, link_timeout_s=0.15)
    with pytest.raises(SettingsError, match="link_timeout_s must be >= 2 x link_heartbeat_s"):
        RaftSettings(link_heartbeat_s=0.1, link_timeout_s=0.15)
    with pytest.raises(SettingsError, match="link_timeout_s must be < election_timeout_min_s"):
        RaftSettings(link_timeout_s=0.3)
