"""``hacluster`` command line: a thin client of the local daemon's control API
(plus ``cluster init``, which writes configuration and needs no daemon).
Tables for people, ``--json`` for programs; errors are one line on stderr
and exit code 1 (2 for usage errors)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from raft.membership import MembershipError, check_members
from raft.settings import RaftSettings

from . import cluster_config
from .cluster_config import ConfigError, DEFAULT_RAFT_PORT
from .control import ControlError, request


def _config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("HACLUSTER_CONFIG") or cluster_config.DEFAULT_CONFIG_DIR)


def _load(args: argparse.Namespace) -> cluster_config.ClusterConfig:
    return cluster_config.load(_config_dir(args))


def _call(args: argparse.Namespace, cmd: str, **kw: Any) -> Any:
    return request(_load(args).socket_path, cmd, **kw)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain aligned columns: [(key, HEADER), ...]."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v)) or "-"
        return str(v)
    cells = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(columns))).rstrip()
                     for c in cells)


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else human)


# ---- cluster ------------------------------------------------------------------
def _parse_member(spec: str, role: str, port: int) -> tuple[str, dict[str, str]]:
    if "=" not in spec:
        raise ConfigError(f"--{role} {spec!r}: expected NAME=ADDRESS[:PORT]")
    name, address = spec.split("=", 1)
    return name, {"address": cluster_config.with_port(address, port), "role": role}


def cmd_cluster_init(args: argparse.Namespace) -> int:
    members: dict[str, dict[str, str]] = {}
    for spec, role in [(s, "node") for s in args.node] + [(s, "witness") for s in args.witness]:
        name, m = _parse_member(spec, role, args.port)
        if name in members:
            raise ConfigError(f"member {name!r} given twice")
        members[name] = m
    try:
        check_members(members)
    except MembershipError as e:
        raise ConfigError(f"cluster init refused: {e}") from None
    out = Path(args.out)
    # Check every member before writing any: a half-written init would leave members
    # with different secrets.
    for name in sorted(members):
        if (out / name / cluster_config.CONFIG_FILE).exists():
            raise ConfigError(f"{out / name / cluster_config.CONFIG_FILE}: already exists; "
                              "refusing to overwrite (nothing written)")
    secret = cluster_config.new_secret()
    written = [cluster_config.write_member_dir(out, args.name, name, members, secret, RaftSettings())
               for name in sorted(members)]
    rows = [{"name": n, **members[n], "config": str(out / n)} for n in sorted(members)]
    _print(args, {"cluster": args.name, "members": rows},
           f"cluster {args.name}: wrote {len(written)} member configurations (secret mode 0600)\n"
           + table(rows, [("name", "NAME"), ("role", "ROLE"), ("address", "ADDRESS"),
                          ("config", "CONFIG DIR")])
           + "\ncopy each directory to its server as /etc/hacluster, then run "
             "'hacluster node run' (or 'witness run') there")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    st = _call(args, "status")
    head = (f"cluster {st['cluster']}  (seen from {st['node']}, {st['role']})\n"
            f"leader {st['leader'] or '-'}  term {st['term']}  commit {st['commit_index']}  "
            f"applied {st['last_applied']}  quorum {'yes' if st['has_quorum'] else 'NO'}")
    members = table(st["members"], [("name", "NAME"), ("role", "ROLE"), ("address", "ADDRESS"),
                                    ("live", "LIVE"), ("connected", "CONNECTED"),
                                    ("leader", "LEADER")])
    leases = [r for r in st["leases"] if not r["resource"].startswith("node/")]
    text = f"{head}\n\n{members}"
    if leases:
        text += "\n\n" + table(leases, [("resource", "LEASE"), ("holder", "HOLDER"),
                                         ("epoch", "EPOCH"), ("eligible", "ELIGIBLE")])
    _print(args, st, text)
    return 0


def _member_change(args: argparse.Namespace, role: str, adding: bool) -> int:
    cfg = _load(args)
    if adding:
        port = int(cfg.me["address"].split(":")[1]) if ":" in cfg.me["address"] else DEFAULT_RAFT_PORT
        address = cluster_config.with_port(args.address, port)
        out = Path(args.out) if args.out else None
        if out is not None and (out / args.name / cluster_config.CONFIG_FILE).exists():
            raise ConfigError(f"{out / args.name}: already holds a configuration; choose another --out")
        res = request(cfg.socket_path, "add_member", name=args.name, address=address, role=role)
        text = f"added {role} {args.name} ({address}) through Raft"
        if out is not None:
            d = cluster_config.write_member_dir(out, cfg.cluster, args.name, res["members"],
                                                cfg.read_secret(), cfg.raft)
            text += f"; its configuration is in {d} (start it with hacluster --config {d} {role} run)"
    else:
        res = request(cfg.socket_path, "remove_member", name=args.name, role=role)
        text = f"removed {role} {args.name} through Raft"
    text += "\nmembers: " + ", ".join(f"{n} ({m['role']})" for n, m in sorted(res["members"].items()))
    _print(args, res, text)
    return 0


def cmd_lease_list(args: argparse.Namespace) -> int:
    rows = _call(args, "leases")
    _print(args, rows, table(rows, [("resource", "LEASE"), ("holder", "HOLDER"), ("epoch", "EPOCH"),
                                    ("lease_s", "LEASE S"), ("eligible", "ELIGIBLE")]))
    return 0


# ---- daemons -------------------------------------------------------------------
def cmd_node_run(args: argparse.Namespace) -> int:
    from .daemon import NodeDaemon
    return NodeDaemon(_load(args), contend=args.contend).run()


def cmd_witness_run(args: argparse.Namespace) -> int:
    from .daemon import WitnessDaemon
    return WitnessDaemon(_load(args)).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hacluster", description="software-only HA cluster on Raft")
    p.add_argument("--config", "-c", help="member configuration directory "
                   "(default $HACLUSTER_CONFIG or /etc/hacluster)")
    sub = p.add_subparsers(dest="group", required=True)

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    cluster = sub.add_parser("cluster", help="cluster membership").add_subparsers(dest="cmd", required=True)
    sp = cluster.add_parser("init", help="write configuration and secret for every member")
    sp.add_argument("--name", default="hacluster", help="cluster name")
    sp.add_argument("--node", action="append", default=[], metavar="NAME=ADDR[:PORT]")
    sp.add_argument("--witness", action="append", default=[], metavar="NAME=ADDR[:PORT]")
    sp.add_argument("--port", type=int, default=DEFAULT_RAFT_PORT, help="default Raft port")
    sp.add_argument("--out", required=True, help="directory to write one sub-directory per member into")
    json_flag(sp)
    sp.set_defaults(func=cmd_cluster_init)
    sp = cluster.add_parser("status", help="members, roles, leader, term, commit index, liveness")
    json_flag(sp)
    sp.set_defaults(func=cmd_cluster_status)
    for role in ("node", "witness"):
        sp = cluster.add_parser(f"add-{role}", help=f"add a {role} (one change at a time, through Raft)")
        sp.add_argument("name")
        sp.add_argument("address", help="ADDR[:PORT]")
        sp.add_argument("--out", help=f"write the new {role}'s configuration directory here")
        json_flag(sp)
        sp.set_defaults(func=lambda a, role=role: _member_change(a, role, True))
        sp = cluster.add_parser(f"remove-{role}", help=f"remove a {role} (through Raft)")
        sp.add_argument("name")
        json_flag(sp)
        sp.set_defaults(func=lambda a, role=role: _member_change(a, role, False))

    lease = sub.add_parser("lease", help="named Raft leases").add_subparsers(dest="cmd", required=True)
    sp = lease.add_parser("list", help="every lease: holder, epoch, eligible set")
    json_flag(sp)
    sp.set_defaults(func=cmd_lease_list)

    node = sub.add_parser("node", help="the node daemon").add_subparsers(dest="cmd", required=True)
    sp = node.add_parser("run", help="run the node daemon in the foreground")
    sp.add_argument("--contend", action="append", default=[], metavar="LEASE",
                    help="hold this named lease whenever it is free (repeatable)")
    sp.set_defaults(func=cmd_node_run)
    witness = sub.add_parser("witness", help="the witness daemon").add_subparsers(dest="cmd", required=True)
    sp = witness.add_parser("run", help="run the witness daemon in the foreground")
    sp.set_defaults(func=cmd_witness_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ControlError, ValueError) as e:
        print(f"hacluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
