"""hacluster/node/support_archive.py and ``hacluster snapshot``: parts gathered chunk by
chunk (a missing node listed, the rest kept), the archive written with its manifest,
anonymized consistently across nodes, and the command without a daemon."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hacluster import cli
from hacluster.node import support_archive, support_snapshot as plan
from hacluster.node.control import ControlError, DaemonUnreachable
from hacluster.node.support_archive import Gathered, PartError, gather, read_part, write_archive
from hacluster.node.support_part import PartStore, Source, build_part, data_source


def part(node: str, address: str, other: str, other_address: str, big: int = 0) -> bytes:
    status = {"node": node, "cluster": "prod",
              "members": [{"name": node, "address": f"{address}:7400"},
                          {"name": other, "address": f"{other_address}:7400"},
                          {"name": "w", "address": "witness.example.com:7400"}]}
    sources = [data_source("status/cluster_status.json", "status", status),
               Source("daemon.log", "log", lambda: f"node={node} peer={other_address}\n".encode()),
               Source("blob.bin", "random", lambda: os.urandom(big))]
    return build_part(node, sources, lambda: [], deadline=float("inf"))


class Daemons:
    """The control protocol of ``snapshot_part`` and ``forward`` over real part stores:
    what each node's daemon answers (the lab test runs the real ones)."""

    def __init__(self, parts: dict[str, bytes], unreachable: dict[str, str]) -> None:
        self.stores = {n: PartStore() for n in parts}
        self.parts = parts
        self.unreachable = unreachable
        self.polls = 0
        self.calls: list[tuple[str, dict]] = []

    def answer(self, node: str, request: dict) -> dict:
        store = self.stores[node]
        if request.get("id") is None:
            return {"id": store.begin(), "ready": False}
        if self.polls < 2:              # still building, twice
            self.polls += 1
            return store.chunk(request["id"], request["offset"])
        store.finish(request["id"], self.parts[node])
        return store.chunk(request["id"], request["offset"])

    def __call__(self, socket, cmd, timeout=30.0, **kw):
        self.calls.append((cmd, kw))
        if cmd == "snapshot_part":
            return self.answer("n1", kw)
        assert cmd == "forward" and kw["timeout_s"] == 3.0
        names = sorted([*self.parts, *self.unreachable]) if kw["hosts"] == "all" else kw["hosts"]
        rows = []
        for n in names:
            if n in self.unreachable:
                rows.append({"node": n, "ok": False, "error": self.unreachable[n]})
            else:
                rows.append({"node": n, "ok": True, "result": self.answer(n, kw["request"])})
        return rows


def test_gather_fetches_every_part_in_chunks_and_lists_a_node_that_does_not_answer():
    parts = {"n1": part("n1", "10.1.0.1", "n2", "10.1.0.2", big=plan.CHUNK_BYTES * 2),
             "n2": part("n2", "10.1.0.2", "n1", "10.1.0.1")}
    daemons = Daemons(parts, {"n3": "node at 10.1.0.3:7403: no answer within 3 s"})
    got = gather(daemons, Path("/nowhere"), "n1", ["all"], timeout=3.0, sleep=lambda s: None)
    assert got.parts == parts
    assert got.missing == {"n3": "node at 10.1.0.3:7403: no answer within 3 s"}
    offsets = [kw["request"]["offset"] for cmd, kw in daemons.calls
               if kw.get("hosts") == ["n1"] and "offset" in kw["request"]]
    assert offsets[-3:] == [0, plan.CHUNK_BYTES, 2 * plan.CHUNK_BYTES]      # three chunks


def test_without_hosts_only_this_node_is_asked_and_an_unreachable_daemon_raises():
    parts = {"n1": part("n1", "10.1.0.1", "n2", "10.1.0.2")}
    got = gather(Daemons(parts, {}), Path("/nowhere"), "n1", None, timeout=3.0, sleep=lambda s: None)
    assert got.parts == parts and got.missing == {}

    def down(*a, **kw):
        raise DaemonUnreachable("no hacluster daemon listening on /nowhere")
    with pytest.raises(ControlError):
        gather(down, Path("/nowhere"), "n1", None)


def test_a_part_damaged_in_transit_is_a_missing_node_not_a_crash():
    parts = {"n1": part("n1", "10.1.0.1", "n2", "10.1.0.2")}
    daemons = Daemons(parts, {})
    real = daemons.answer

    def corrupt(node, request):
        reply = real(node, request)
        if reply.get("ready"):
            reply = {**reply, "sha256": "0" * 64}
        return reply
    daemons.answer = corrupt
    got = gather(daemons, Path("/nowhere"), "n1", ["n1"], timeout=3.0, sleep=lambda s: None)
    assert got.parts == {} and "damaged in transit" in got.missing["n1"]


def test_a_part_with_a_path_escape_or_without_its_list_is_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(PartError, match="unexpected entry '../evil'"):
        read_part(buf.getvalue())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz"):
        pass
    with pytest.raises(PartError, match="without PART.json"):
        read_part(buf.getvalue())
    with pytest.raises(PartError, match="unreadable part"):
        read_part(b"not a tar")


def unpack(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_the_archive_holds_the_manifest_first_and_every_node_s_files(tmp_path):
    gathered = Gathered(parts={"n1": part("n1", "10.1.0.1", "n2", "10.1.0.2"),
                               "n2": part("n2", "10.1.0.2", "n1", "10.1.0.1")},
                        missing={"n3": "no answer"})
    written = write_archive(None, gathered, cluster="prod", made_on="n1", version="1.0",
                            command=["hacluster", "-H", "all", "snapshot"], anonymize=False,
                            now=0.0, directory=tmp_path)
    assert written.path == tmp_path / "hacluster-snapshot-prod-n1-19700101T000000Z.tar.gz"
    assert written.tokens is None and (written.path.stat().st_mode & 0o777) == 0o600
    with tarfile.open(written.path) as tar:
        assert tar.getnames()[0] == plan.MANIFEST
    files = unpack(written.path)
    manifest = json.loads(files.pop(plan.MANIFEST))
    assert manifest == written.manifest
    assert {f["path"]: f["size"] for f in manifest["files"]} == {p: len(d) for p, d in files.items()}
    assert manifest["unreachable"] == ["n3"] and manifest["nodes"]["n3"]["reason"] == "no answer"
    assert files["nodes/n2/daemon.log"] == b"node=n2 peer=10.1.0.1\n"
    assert not list(tmp_path.glob(".*"))        # nothing left aside


def test_anonymized_the_same_address_and_name_have_one_token_in_every_node_s_files(tmp_path):
    gathered = Gathered(parts={"n1": part("n1", "10.1.0.1", "n2", "10.1.0.2"),
                               "n2": part("n2", "10.1.0.2", "n1", "10.1.0.1", big=100)},
                        missing={"n3": "node at 10.1.0.3:7403: no answer"})
    written = write_archive(tmp_path / "a.tar.gz", gathered, cluster="prod", made_on="n1", version="1.0",
                            command=["hacluster", "snapshot", "--anonymize"], anonymize=True)
    files = unpack(written.path)
    text = b"\n".join(files.values()).decode(errors="replace")
    for value in ("10.1.0.1", "10.1.0.2", "10.1.0.3", "witness.example.com", '"n1"', '"n2"', "prod"):
        assert value not in text, value
    tokens = {v: t for t, v in written.tokens.items()}
    n1, n2, ip1 = tokens["n1"], tokens["n2"], tokens["10.1.0.1"]
    assert files[f"nodes/{n2}/daemon.log"] == f"node={n2} peer={ip1}\n".encode()
    status = json.loads(files[f"nodes/{n1}/status/cluster_status.json"])
    assert status["members"][0] == {"name": n1, "address": f"{ip1}:7400"}
    assert status["members"][2]["address"] == f"{tokens['witness.example.com']}:7400"
    manifest = json.loads(files[plan.MANIFEST])
    assert manifest["unreachable"] == [tokens["n3"]] and "10.1.0.3" not in json.dumps(manifest)
    assert manifest["anonymized"]["replaced"] == {"IP": 3, "HOST": 1, "MEMBER": 4, "CLUSTER": 1}
    # random bytes cannot be anonymized: left out, and said
    assert f"nodes/{n2}/blob.bin" not in files
    assert any(s["path"] == f"nodes/{n2}/blob.bin" and "not UTF-8" in s["reason"] for s in manifest["skipped"])


# ---- the command -----------------------------------------------------------------------
@pytest.fixture
def member(tmp_path):
    assert cli.main(["cluster", "init", "--name", "demo", "--node", "n1=127.0.0.1", "--node", "n2=127.0.0.2",
                     "--witness", "w=127.0.0.3", "--out", str(tmp_path / "cfg")]) == 0
    return ["-c", str(tmp_path / "cfg" / "n1"), "--state-dir", str(tmp_path / "state"),
            "--run-dir", str(tmp_path / "run"), "--log-dir", str(tmp_path / "log")]


def test_without_a_daemon_the_command_writes_this_node_s_files_and_lists_the_others(member, tmp_path, capsys):
    out = tmp_path / "s.tar.gz"
    assert cli.main([*member, "-H", "all", "snapshot", "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert manifest["nodes"]["n1"]["built_by"] == "cli" and "no daemon answered" in manifest["nodes"]["n1"]["note"]
    assert manifest["unreachable"] == ["n2"]
    assert "warning: n2 unreachable, not in the snapshot: the local daemon does not answer" in captured.err
    files = unpack(out)
    assert "nodes/n1/config/cluster.json" in files and "nodes/n1/versions.json" in files
    secret = (tmp_path / "cfg" / "n1" / "secret").read_text().strip()
    assert not any(secret.encode() in data for data in files.values())


def test_the_summary_line_and_the_tokens_beside_an_anonymized_archive(member, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*member, "snapshot", "--anonymize"]) == 0
    line = capsys.readouterr().out.strip()
    archive = next(tmp_path.glob("hacluster-snapshot-CLUSTER-1-MEMBER-1-*Z.tar.gz"))
    assert line.startswith(f"wrote {archive.name} (") and "nodes MEMBER-1; anonymized" in line
    tokens = Path(str(archive) + ".tokens.json")
    assert json.loads(tokens.read_text())["MEMBER-1"] == "n1" and (tokens.stat().st_mode & 0o777) == 0o600


def test_an_archive_that_cannot_be_written_is_one_line_and_a_member_named_like_a_key_is_fine(tmp_path):
    gathered = Gathered(parts={"files": part("files", "10.1.0.1", "nodes", "10.1.0.2")})
    written = write_archive(tmp_path / "a.tar.gz", gathered, cluster="c", made_on="files", version="1",
                            command=["hacluster", "snapshot"], anonymize=True)
    files = unpack(written.path)
    manifest = json.loads(files.pop(plan.MANIFEST))
    assert list(manifest["nodes"]) == ["MEMBER-1"] and manifest["unreachable"] == []
    assert {f["path"] for f in manifest["files"]} == set(files)
    assert all(p.startswith("nodes/MEMBER-1/") for p in files)
    with pytest.raises(support_archive.ArchiveError, match="cannot write the snapshot: No such file or directory"):
        write_archive(tmp_path / "no" / "a.tar.gz", gathered, cluster="c", made_on="files", version="1",
                      command=["hacluster", "snapshot"], anonymize=False)


def test_a_bad_timeout_is_refused_in_one_line(member, capsys):
    assert cli.main([*member, "snapshot", "--timeout", "0"]) == 1
    assert capsys.readouterr().err.strip() == "hacluster: --timeout 0: must be more than 0 seconds"
