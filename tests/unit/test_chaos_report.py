"""The chaos checks and reports on synthetic histories: a lost write, two primaries
interleaved, no recovery must each be reported; the summary and the timeline show
what the history holds."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from chaos.chaos_report import (STATE_COLOURS, Canvas, FAIL_TICK, LEFT, OK_TICK, ROW_GAP,
                                ROW_H, TOP, client_outages, decode_png, encode_png,
                                load_history, percentile, render_summary, render_timeline,
                                summarize, write_report)
from chaos.chaos_run import EpisodeObservation, check_episode, healthy_pair, longest_gap
from chaos.kv_workload import Ack


def _acks(node="n1", epoch=1, n=10, t=0.0, prefix="e000"):
    return [Ack(f"{prefix}-{i:06d}", f"v{i}", node, epoch, t + i * 0.1, t + i * 0.1 + 0.01)
            for i in range(1, n + 1)]


def _obs(acks, **kw):
    base = dict(acks=acks, answers=[(a.t_acked, a.node, a.epoch) for a in acks],
                read_back={a.key: a.value for a in acks}, vip_keys={a.key for a in acks},
                recovery_s=2.0, recovery_bound_s=60.0, answered_after_recovery=True,
                copies_identical=True)
    base.update(kw)
    return EpisodeObservation(**base)


# ---- the invariant checks --------------------------------------------------------------

def test_a_clean_episode_has_no_violation():
    acks = _acks() + _acks("n2", 2, 5, t=5.0, prefix="e001")
    assert check_episode(_obs(acks)) == []


def test_a_lost_acknowledged_write_is_a_violation():
    acks = _acks()
    read_back = {a.key: a.value for a in acks[:-1]}      # the last acked record is gone
    v = check_episode(_obs(acks, read_back=read_back))
    assert len(v) == 1 and "1 acknowledged writes lost" in v[0] and "e000-000010" in v[0]


def test_a_stale_value_is_a_lost_write():
    acks = _acks()
    read_back = {a.key: a.value for a in acks} | {acks[3].key: "old"}
    assert any("lost" in v and "stale value 'old'" in v
               for v in check_episode(_obs(acks, read_back=read_back)))


def test_a_key_missing_through_the_vip_is_a_violation():
    acks = _acks()
    v = check_episode(_obs(acks, vip_keys={a.key for a in acks[1:]}))
    assert v == ["1 acknowledged keys not listed through the VIP, e.g. 'e000-000001'"]


def test_two_primaries_interleaved_are_a_violation():
    """Old primary n1 (epoch 1) still answering after n2 (epoch 2) was seen."""
    acks = [Ack("k1", "a", "n1", 1, 0.0, 0.1), Ack("k2", "b", "n2", 2, 0.2, 0.3),
            Ack("k3", "c", "n1", 1, 0.4, 0.5), Ack("k4", "d", "n2", 2, 0.6, 0.7)]
    v = check_episode(_obs(acks))
    assert any("epoch went back" in x and "'n1'" in x for x in v), v


def test_two_nodes_in_one_epoch_are_a_violation():
    acks = [Ack("k1", "a", "n1", 3, 0.0, 0.1), Ack("k2", "b", "n2", 3, 0.2, 0.3)]
    assert any("two primaries in epoch 3" in x for x in check_episode(_obs(acks)))


def test_no_recovery_is_a_violation_and_nothing_to_read_back_too():
    v = check_episode(_obs(_acks(), recovery_s=None, read_back=None, vip_keys=None,
                           copies_identical=None, answered_after_recovery=False))
    assert any(x.startswith("no recovery") for x in v)
    assert any("no primary copy" in x for x in v)
    assert any("not readable through the VIP" in x for x in v)


def test_recovery_beyond_the_bound_is_a_violation():
    v = check_episode(_obs(_acks(), recovery_s=61.0, recovery_bound_s=60.0))
    assert v == ["recovery took 61.0 s > 60 s"]


def test_silence_after_recovery_and_differing_copies_are_violations():
    v = check_episode(_obs(_acks(), answered_after_recovery=False, copies_identical=False))
    assert v == ["the client got no acknowledgement after recovery",
                 "the two real copies differ after recovery"]


def _st(state, ready="Ready", in_sync=("n1", "n2"), epoch=4):
    return {"state": state, "ready": ready, "in_sync": list(in_sync), "epoch": epoch}


def test_healthy_pair_needs_prim_and_second_ready_and_both_in_sync():
    assert healthy_pair({"n1": _st("PRIM"), "n2": _st("SECOND")}) == ("n1", "n2", 4)
    assert healthy_pair({"n1": _st("SECOND"), "n2": _st("PRIM")}) == ("n2", "n1", 4)
    assert healthy_pair({"n1": _st("PRIM"), "n2": _st("SECOND", "Transient")}) is None
    assert healthy_pair({"n1": _st("ALONE"), "n2": _st("SECOND")}) is None
    assert healthy_pair({"n1": _st("PRIM", in_sync=["n1"]), "n2": _st("SECOND")}) is None
    assert healthy_pair({"n1": _st("PRIM"), "n2": None}) is None
    assert healthy_pair({"n1": _st("PRIM"), "n2": _st("PRIM")}) is None


def test_longest_gap_counts_the_edges():
    assert longest_gap([1.0, 1.5, 4.0], 0.0, 5.0) == pytest.approx(2.5)
    assert longest_gap([], 2.0, 3.0) == pytest.approx(1.0)
    assert longest_gap([0.5, 9.0], 1.0, 2.0) == pytest.approx(1.0)   # outside the window


# ---- a synthetic history: summary and timeline -------------------------------------------

def _episode(index, nemesis, t_fault, failover, recovery, violations=(), gap=1.0):
    return {"index": index, "nemesis": nemesis, "seed": f"5/{index}/{nemesis}", "hold_s": 1.0,
            "primary_before": "n1", "epoch_before": 1, "targets": {"host": "n1"},
            "t_start": t_fault - 1, "t_fault": t_fault, "t_heal": t_fault + 1,
            "t_recovered": None if recovery is None else t_fault + 1 + recovery,
            "recovery_s": recovery, "failover_s": failover, "max_gap_s": gap,
            "primary_after": "n2", "epoch_after": 2, "acked": 100,
            "violations": list(violations), "faults": []}


def _history():
    t0 = 1000.0
    client = [[f"e000-{i:06d}", "v", "n1", 1, t0 + 1 + i * 0.05, t0 + 1 + i * 0.05 + 0.01]
              for i in range(60)]                              # 1..4 s writing
    client += [[f"e000-{i:06d}", "v", "n2", 2, t0 + 8 + (i - 60) * 0.05, t0 + 8 + (i - 60) * 0.05 + 0.01]
               for i in range(60, 100)]                        # outage 4..8 s, then 8..10 s
    return {
        "seed": 5, "nemeses": ["kill-host", "isolate-witness"], "episodes_per_nemesis": 2,
        "hold_range_s": [1.0, 2.0], "recovery_bound_s": 60.0, "started": "now",
        "t0": t0, "t_end": t0 + 30.0, "hosts": ["n1", "n2", "w", "c"], "sampled": ["n1", "n2", "w"],
        "episodes": [_episode(0, "kill-host", t0 + 4, 4.0, 3.0),
                     _episode(1, "isolate-witness", t0 + 12, None, 0.5),
                     _episode(2, "kill-host", t0 + 18, 2.0, 1.0, ["acknowledged key 'x' missing"]),
                     _episode(3, "isolate-witness", t0 + 24, None, None, ["no recovery: ..."])],
        "faults": [],
        "client": client,
        "states": [{"t": t0 + 0.5, "node": "n1", "state": "PRIM", "ready": "Ready", "epoch": 1},
                   {"t": t0 + 4.0, "node": "n1", "state": "DOWN", "ready": "", "epoch": None},
                   {"t": t0 + 0.5, "node": "n2", "state": "SECOND", "ready": "Ready", "epoch": 1},
                   {"t": t0 + 6.0, "node": "n2", "state": "ALONE", "ready": "Transient", "epoch": 2},
                   {"t": t0 + 0.5, "node": "w", "state": "UP", "ready": "", "epoch": None}],
    }


def test_summary_rows_count_violations_and_percentiles_per_nemesis():
    rows = {r["nemesis"]: r for r in summarize(_history())}
    kh, iw = rows["kill-host"], rows["isolate-witness"]
    assert (kh["episodes"], kh["violations"], kh["failovers"]) == (2, 1, 2)
    assert (kh["failover_p50_s"], kh["failover_p99_s"]) == (2.0, 4.0)
    assert (kh["recovery_p50_s"], kh["recovery_p99_s"]) == (1.0, 3.0)
    assert (iw["violations"], iw["failovers"], iw["failover_p50_s"]) == (1, 0, None)
    assert iw["recovery_p50_s"] == 0.5      # the episode without recovery has no figure


def test_summary_markdown_lists_the_table_and_every_violation_with_its_seed():
    md = render_summary(_history(), "test run")
    assert "**2 violation(s)** in 4 episodes" in md
    assert "| kill-host | 2 | 1 | 2 | 2.00 | 4.00 | 1.00 | 3.00 |" in md
    assert "| isolate-witness | 2 | 1 | 0 | - | - | 0.50 | 0.50 |" in md
    assert "episode 2 `kill-host` (seed `5/2/kill-host`" in md
    assert "  - acknowledged key 'x' missing" in md and "  - no recovery: ..." in md


def test_repairs_are_listed():
    h = _history()
    assert "## Repairs" not in render_summary(h)
    h["episodes"][3]["repaired"] = "daemons restarted"
    assert "- episode 3 `isolate-witness`: daemons restarted" in render_summary(h)


def test_rebuilt_labs_and_lab_shapes_are_listed():
    h = _history()
    assert "## Labs rebuilt" not in render_summary(h)
    assert {r["lab_shape"] for r in summarize(h)} == {"standard"}    # older histories
    h["episodes"][3]["lab_shape"] = h["episodes"][1]["lab_shape"] = "five_voters"
    h["episodes"][3]["lab_broken"] = "restore of w2 failed: ..."
    md = render_summary(h)
    assert "- episode 3 `isolate-witness`: restore of w2 failed: ..." in md
    assert {r["nemesis"]: r["lab_shape"] for r in summarize(h)}["isolate-witness"] == "five_voters"
    assert md.count("| five_voters |") == 1   # the summary row of isolate-witness


def test_a_clean_history_says_none_under_violations():
    h = _history()
    for e in h["episodes"]:
        e["violations"] = []
    assert "## Violations\n\nNone." in render_summary(h)


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0


def test_client_outages_are_gaps_inside_an_episode():
    spans = client_outages(_history())
    assert len(spans) == 1
    a, b = spans[0]
    assert a == pytest.approx(1003.96) and b == pytest.approx(1008.01)


def test_timeline_colours_states_client_and_faults():
    h = _history()
    cv = render_timeline(h)
    scale = (cv.width - LEFT - 10) / 30.0

    def at(t, row, dy=ROW_H // 2):
        return cv.pixel(LEFT + int(t * scale) + 1, TOP + row * (ROW_H + ROW_GAP) + dy)

    assert at(2.0, 0) == STATE_COLOURS["PRIM"]          # n1 primary before the fault
    assert at(10.0, 0) == STATE_COLOURS["DOWN"]
    assert at(2.0, 1) == STATE_COLOURS["SECOND"]
    lighter = tuple(round(v * 0.5 + 127.5) for v in STATE_COLOURS["ALONE"])
    assert at(10.0, 1) == lighter                        # Transient is drawn lighter
    assert at(2.0, 2) == STATE_COLOURS["UP"]
    assert at(2.0, 3) == OK_TICK or at(2.02, 3) == OK_TICK   # client acks
    assert at(6.5, 3, 2) == FAIL_TICK                    # the outage (inside no fault span)
    # a fault span shades whatever is under it: n1 DOWN at 4.5 s is lighter than DOWN
    assert at(4.5, 0) != STATE_COLOURS["DOWN"] and at(4.5, 0)[0] > STATE_COLOURS["DOWN"][0]


def test_png_written_is_a_valid_png_of_the_canvas():
    cv = render_timeline(_history())
    w, h, rgb = decode_png(cv.png())
    assert (w, h) == (cv.width, cv.height) and rgb == bytes(cv.px)


@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_png_round_trip(width, height, data):
    rgb = data.draw(st.binary(min_size=width * height * 3, max_size=width * height * 3))
    assert decode_png(encode_png(width, height, rgb)) == (width, height, rgb)


def test_png_refuses_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="pixel buffer is 5 bytes, expected 2x1x3"):
        encode_png(2, 1, b"12345")


def test_canvas_text_draws_ink_and_clips_at_the_edges():
    cv = Canvas(40, 12)
    end = cv.text(1, 1, "N1", scale=2)
    assert end == 17 and cv.pixel(1, 1) == (0, 0, 0)      # N's top-left stroke
    cv.text(35, 8, "W")                                     # partly outside: no error
    cv.rect(-5, -5, 100, 100, (1, 2, 3), alpha=1.0)
    assert cv.pixel(39, 11) == (1, 2, 3)


def test_write_report_writes_three_files_and_the_history_reads_back(tmp_path):
    paths = write_report(_history(), tmp_path / "run")
    assert load_history(paths["history"]) == json.loads(json.dumps(_history()))
    assert paths["summary"].read_text().startswith("# chaos run")
    assert paths["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(paths["summary_json"].read_text())
    assert table["violations"] == 2 and table["episodes"] == 4
    assert [r["nemesis"] for r in table["nemeses"]] == ["kill-host", "isolate-witness"]


def test_load_history_names_the_file_it_cannot_read(tmp_path):
    bad = tmp_path / "history.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"history.json: not a chaos history"):
        load_history(bad)


def test_a_write_lost_earlier_is_charged_once_not_to_every_later_episode():
    from chaos.chaos_run import damaged_keys
    acks = _acks()
    read_back = {a.key: a.value for a in acks[1:]}
    first = _obs(acks, read_back=read_back)
    assert damaged_keys(first) == {"e000-000001"}
    later = _obs(acks + _acks(prefix="e001", t=5.0), read_back=read_back | {
        a.key: a.value for a in _acks(prefix="e001", t=5.0)},
        vip_keys={a.key for a in acks[1:]} | {a.key for a in _acks(prefix="e001", t=5.0)},
        reported_keys=frozenset(damaged_keys(first)))
    assert check_episode(later) == []
    assert check_episode(_obs(later.acks, read_back={}, reported_keys=later.reported_keys))


def test_an_epoch_violation_is_charged_to_the_episode_that_saw_it():
    answers = [(0.1, "n1", 1), (0.3, "n2", 2), (0.5, "n1", 1)]          # episode 0
    v0 = check_episode(_obs([], answers=answers))
    assert len(v0) == 1
    later = answers + [(1.0, "n2", 2), (1.1, "n2", 2)]                     # episode 1: clean
    assert check_episode(_obs([], answers=later, earlier_epoch_violations=1)) == []
    worse = later + [(1.2, "n1", 1)]
    assert len(check_episode(_obs([], answers=worse, earlier_epoch_violations=1))) == 1


def test_an_episode_with_violations_keeps_the_tail_of_every_log(tmp_path):
    from chaos.chaos_report import keep_logs
    lab = tmp_path / "lab"
    (lab / "n1" / "state").mkdir(parents=True)
    (lab / "n1" / "hacluster.log").write_bytes(b"a" * 10 + b"the end\n")
    (lab / "n1" / "state" / "mount0.log").write_text("lost\n")
    (lab / "n1" / "state" / "data.bin").write_bytes(b"not a log")
    kept = keep_logs(lab, tmp_path / "out" / "episode-007", tail_bytes=8)
    assert kept == 2
    assert (tmp_path / "out" / "episode-007" / "n1" / "hacluster.log").read_bytes() == b"the end\n"
    assert (tmp_path / "out" / "episode-007" / "n1" / "state" / "mount0.log").read_text() \
        == "lost\n"
    assert not (tmp_path / "out" / "episode-007" / "n1" / "state" / "data.bin").exists()
