"""The keepalived baseline's configuration and its refusals. The real run in the lab:
tests/lab/test_keepalived_baseline.py."""
from __future__ import annotations

import pytest

from bench.keepalived_baseline import keepalived_conf, measure_keepalived_failover


def test_config_keeps_default_timers():
    conf = keepalived_conf("k2", "eth0", "10.213.5.200")
    assert "state BACKUP" in conf and "priority 100" in conf and "advert_int 1" in conf
    assert "10.213.5.200/24 dev eth0" in conf
    assert "preempt" not in conf  # default preemption, no preempt_delay tuning


def test_trials_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="trials must be >= 1"):
        measure_keepalived_failover(0, tmp_path)
