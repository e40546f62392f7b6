"""python -m bench pgbench: a reduced run on real lab hosts (PostgreSQL 15 through a real
mirror module, on a plain directory and behind the C pass-through FUSE floor, a real
crash and recovery on each). No timing
asserted: only that every figure is there and positive. The pure parts:
tests/unit/test_bench_pgbench.py."""
from __future__ import annotations

import json

import pytest

from bench import pgbench_bench as pb
from tests.conftest import needs_root


@needs_root
@pytest.mark.lab
def test_reduced_run_writes_every_side_and_the_ratios(tmp_path):
    pb.run(scale=1, clients=2, duration=2, rounds=1, recovery_trials=1, burst=20, out_dir=tmp_path)
    r = json.loads((tmp_path / "pgbench.json").read_text())
    for side in ("mirror", "plain", "fuse_floor"):
        for name, *_ in pb.FIGURES:
            assert r[side][name] > 0, (side, name)
            for ratios in ("ratios", "floor_ratios", "mirror_vs_floor"):
                assert r[ratios][name] > 0, (ratios, name)
        assert r[side]["pgbench_transactions"] > 0
    # both sides' files on the same kind of file system; the mirror's served by FUSE
    storage = r["mirror"]["storage"]
    assert storage["backing"]["fstype"] == r["plain"]["storage"]["fstype"] == \
        storage["secondary_copy"]["fstype"]
    assert storage["served_as"]["fstype"].startswith("fuse")
    floor = r["fuse_floor"]["storage"]
    assert floor["served_as"]["fstype"].startswith("fuse")
    assert floor["backing"]["fstype"] == storage["backing"]["fstype"]
    assert r["params"]["scale"] == 1 and r["params"]["duration_s"] == 2
