"""The keepalived baseline runs for real in the lab and gives a plausible VRRP failover time."""
from __future__ import annotations


from bench.keepalived_baseline import measure_keepalived_failover
from chaos.kv_workload import parse_poll_output
from tests.conftest import needs_root


@needs_root  # keepalived itself comes with the Makefile's apt packages: missing is a failure
def test_one_trial_fails_over_in_vrrp_time(tmp_path):
    result = measure_keepalived_failover(1, tmp_path / "lab")
    assert result["trials"] == 1 and len(result["failover_s"]) == 1
    # advert_int 1: the backup waits 3 adverts + skew (~3.6 s) after the last one it heard
    assert 0.5 < result["failover_s"][0] < 30
    assert result["p50"] == result["p99"] == result["failover_s"][0]
    # the poller in kc really saw k1, then k2, then k1 again through the VIP
    answers = parse_poll_output((tmp_path / "lab" / "kc" / "poller.log").read_text())
    runs = [node for i, (_, node, _) in enumerate(answers) if i == 0 or answers[i - 1][1] != node]
    assert runs == ["k1", "k2", "k1"]
