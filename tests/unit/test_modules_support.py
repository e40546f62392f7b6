"""hacluster/modules/support.py: a module's files in a snapshot part, from a real
installed package and real rotated logs: its state, its configuration with the
password-like variables masked, its package listing with digests, bounded log tails."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

from chaos.kv_module import write_kv_module
from hacluster.modules import package
from hacluster.modules.rotating_log import RotatingLog
from hacluster.modules.support import log_tail, module_sources
from hacluster.node import support_snapshot as plan
from hacluster.node.paths import NodePaths
from hacluster.node.support_part import build_part


def installed_paths(tmp_path):
    paths = NodePaths(config_dir=tmp_path / "cfg", state_dir=tmp_path / "state",
                      run_dir=tmp_path / "run", log_dir=tmp_path / "log")
    folder = write_kv_module(tmp_path / "src", "10.0.0.200")
    conf = folder / "conf" / "userconfig.xml"
    conf.write_text(conf.read_text().replace(
        "</user>", '  <var name="DB_PASSWORD" value="hunter2-hunter2"/>\n    </user>'))
    safe = tmp_path / "kv.safe"
    package.package(folder, safe)
    package.install(safe.read_bytes(), paths.modules_dir, "kv")
    return paths


def part_of(paths, states, errors=None) -> tuple[dict, dict[str, bytes]]:
    data = build_part("n1", module_sources(paths, states, errors or {}), lambda: [],
                      deadline=float("inf"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}
    return json.loads(files.pop(plan.PART_MANIFEST)), files


def test_an_installed_module_gives_its_state_configuration_listing_and_logs(tmp_path):
    paths = installed_paths(tmp_path)
    log = RotatingLog(paths.module_log_dir("kv") / "module.log", max_bytes=4096, keep=2)
    for i in range(200):                 # rotated several times
        log.write_text(f"state PRIM (Ready) line {i}")
    (paths.module_log_dir("kv") / "mount0.log").write_text("mounted\n")
    manifest, files = part_of(paths, {"kv": {"module": "kv", "state": "PRIM"}})
    assert json.loads(files["modules/kv/state.json"])["state"] == "PRIM"
    conf = files["modules/kv/userconfig.xml"].decode()
    assert "hunter2" not in conf and f'name="DB_PASSWORD" value="{plan.MASKED}"' in conf
    listing = files["modules/kv/package_files.txt"].decode()
    safe_digest = hashlib.sha256((paths.modules_dir / "kv.safe").read_bytes()).hexdigest()
    assert f"package kv.safe sha256 {safe_digest}" in listing
    start = (paths.modules_dir / "kv" / "bin" / "start_prim").read_bytes()
    assert f"{hashlib.sha256(start).hexdigest()} bin/start_prim" in listing
    assert b"#!" not in files["modules/kv/package_files.txt"]      # scripts named, not copied
    assert files["modules/kv/logs/module.log"].decode().rstrip().endswith("line 199")
    assert files["modules/kv/logs/mount0.log"] == b"mounted\n"
    assert "module.log.1" in files["modules/kv/logs/listing.txt"].decode()
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "no such log" in skipped["modules/kv/logs/script.log"]


def test_a_module_not_running_here_says_why_and_one_not_installed_too(tmp_path):
    paths = installed_paths(tmp_path)
    manifest, files = part_of(paths, {}, {"kv": "runs on n2, n3, not on this node", "web": "gone"})
    assert json.loads(files["modules/kv/state.json"]) == {
        "module": "kv", "running_here": False, "reason": "runs on n2, n3, not on this node"}
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert skipped["modules/web/package_files.txt"] == "not installed on this node"
    assert "No such file" in skipped["modules/web/userconfig.xml"]


def test_a_log_tail_is_bounded_whole_lines(tmp_path):
    path = tmp_path / "script.log"
    path.write_bytes(b"".join(b"2026-12-06T21:00:00.000Z output %07d\n" % i for i in range(100_000)))
    tail = log_tail(path, 64 << 10)
    assert len(tail) <= 64 << 10
    lines = tail.decode().splitlines()
    assert lines[-1].endswith("0099999") and all(line.startswith("2026-") for line in lines)
