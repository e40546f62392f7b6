"""``hacluster`` command line: a thin client of the local daemon's control API
(plus ``cluster init``, which writes configuration and needs no daemon).
Tables for people, ``--json`` for programs; errors are one line on stderr (with
``--json``: ``{"error": ..., "exit": N}`` on stdout) and the exit statuses of
``hacluster.node.exit_status`` (distinct for a daemon that does not answer and for
no quorum). The commands it sends, and its plain module verbs, come from the
daemon's table (``hacluster.node.commands``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from raft.listen import ListenError
from raft.membership import MembershipError, check_members
from raft.settings import RaftSettings

from .http import passwords, roles, tls
from .node import cluster_config, commands, exit_status, install as server_install, member_cache, paths
from .node.cluster_config import DEFAULT_RAFT_PORT, ConfigError
from .node.control import NO_QUORUM, UNREACHABLE, ControlError, request


class Refused(ValueError):
    """The CLI itself refuses (a destructive command not confirmed); exit FAILED."""


class StateFailed(ValueError):
    """'state -m M' or 'waitstate' failed for another reason than an unreachable daemon
    or no quorum: exit STATE_FAILED, not 1 (which is WAIT)."""



def _config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get(paths.CONFIG_ENV) or paths.DEFAULT_CONFIG_DIR)


def _load(args: argparse.Namespace) -> cluster_config.ClusterConfig:
    """The member's configuration, with its paths from the flags, the environment, the
    file (``hacluster.node.paths``); relative flags and variables from here."""
    def absolute(value: str | None) -> str | None:
        return os.path.abspath(value) if value else None
    flags = {key: absolute(getattr(args, key, None)) for key in paths.DEFAULTS}
    env = {var: os.path.abspath(os.environ[var])
           for var in (*paths.ENVIRONMENT.values(), paths.ROOT_PREFIX_ENV) if os.environ.get(var)}
    return cluster_config.load(_config_dir(args), env=env, flags=flags)


def _call(args: argparse.Namespace, cmd: str, **kw: Any) -> Any:
    return request(_load(args).socket_path, cmd, **kw)


def _hosts(args: argparse.Namespace) -> list[str] | None:
    spec = getattr(args, "hosts", None)
    if not spec:
        return None
    hosts = [h.strip() for h in spec.split(",") if h.strip()]
    if not hosts:
        raise ConfigError(f"-H {spec!r}: expected 'all' or node names separated by commas")
    return hosts


def _on_hosts(args: argparse.Namespace, cmd: str, human: Any, timeout: float = 30.0,
              **kw: Any) -> list[dict] | None:
    """With ``-H``: run ``cmd`` on every named node through the local daemon (which
    forwards it, authenticated, to its peers), print one block per node, and return
    the rows; without ``-H``: None (the caller runs the command locally)."""
    hosts = _hosts(args)
    if hosts is None:
        return None
    rows = _call(args, commands.FORWARD.name, hosts="all" if hosts == ["all"] else hosts,
                 request={"cmd": cmd, **kw}, timeout=timeout + 5)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for row in rows:
            text = human(row["result"]) if row["ok"] else f"error: {row['error']}"
            sep = "\n" if "\n" in text else " "
            print(f"{row['node']}:{sep}{text}")
    return rows


def _stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def confirm(args: argparse.Namespace, what: str, why: str) -> None:
    """A destructive command goes on with --force, or when the person at the terminal
    answers yes; without a terminal (a script, a pipe) it is refused in one line that
    names --force. The question goes to stderr (stdout may be --json)."""
    if getattr(args, "force", False):
        return
    if not _stdin_is_tty():
        raise Refused(f"{what}: {why}; not done: no terminal to confirm on, add --force to do it")
    sys.stderr.write(f"{what}: {why}.\nDo it? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise Refused(f"{what}: not confirmed; nothing done")
    args.force = True


def _several(hosts: list[str] | None) -> bool:
    return hosts is not None and (hosts == ["all"] or len(hosts) > 1)


def _rows_exit(rows: list[dict]) -> int:
    return 0 if all(r["ok"] for r in rows) else 1


def _run(args: argparse.Namespace, cmd: str, human: Any, **kw: Any) -> int:
    """Run ``cmd`` here, or with ``-H`` on the named nodes; print it for people or
    as JSON. Exit 0, or 1 if a node refused."""
    on_hosts = _on_hosts(args, cmd, human, **kw)
    if on_hosts is not None:
        return _rows_exit(on_hosts)
    res = _call(args, cmd, **kw)
    _print(args, res, human(res))
    return 0


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


# Where cluster init writes the cluster CA (certificate and key): upper case, so it can
# never be a member's directory (member names are lower case).
CA_DIR = "CA"


def cmd_cluster_init(args: argparse.Namespace) -> int:
    members: dict[str, dict[str, Any]] = {}
    for spec, role in [(s, "node") for s in args.node] + [(s, "witness") for s in args.witness]:
        name, m = _parse_member(spec, role, args.port)
        if name in members:
            raise ConfigError(f"member {name!r} given twice")
        members[name] = m
    links: dict[str, list[str]] = {}
    for spec in args.link:
        if "=" not in spec:
            raise ConfigError(f"--link {spec!r}: expected NAME=ADDRESS (the member's address on "
                              "its next heartbeat network)")
        name, host = spec.split("=", 1)
        if name not in members:
            raise ConfigError(f"--link {spec!r}: no member {name!r} (give it with --node or --witness)")
        links[name] = [*links.get(name, []), host]
    for name, hosts in links.items():
        members[name]["links"] = hosts
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
    if (out / CA_DIR / tls.CA_KEY).exists():
        raise ConfigError(f"{out / CA_DIR / tls.CA_KEY}: already exists; refusing to overwrite "
                          "(nothing written)")
    secret = cluster_config.new_secret()
    # Made before any directory is written: a failure here leaves nothing half-done.
    ca = tls.make_ca(args.name)
    certs = {name: tls.sign_member(ca, args.name, name, m["address"].rsplit(":", 1)[0])
             for name, m in members.items() if m["role"] == "node"}
    written = [cluster_config.write_member_dir(out, args.name, name, members, secret, RaftSettings())
               for name in sorted(members)]
    for name, pem in certs.items():
        tls.write_member(out / name, pem, ca.cert)
    tls.write_ca(out / CA_DIR, ca)
    rows = [{"name": n, **members[n], "config": str(out / n)} for n in sorted(members)]
    _print(args, {"cluster": args.name, "members": rows, "ca": str(out / CA_DIR)},
           f"cluster {args.name}: wrote {len(written)} member configurations (secret mode 0600)\n"
           + table(rows, [("name", "NAME"), ("role", "ROLE"), ("address", "ADDRESS"),
                          ("config", "CONFIG DIR")])
           + "\ncopy each directory's files to its server's /etc/hacluster (modes kept: "
             "scp -p), then systemctl enable --now hacluster-node (or hacluster-witness) there"
           + f"\nHTTPS: each data node has http.crt/http.key signed by the cluster CA "
             f"{out / CA_DIR / tls.CA_CERT}; give that file to browsers and API clients. Keep "
             f"{out / CA_DIR / tls.CA_KEY} offline (it signs certificates for new members)")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    st = _call(args, commands.STATUS.name)
    head = (f"cluster {st['cluster']}  (seen from {st['node']}, {st['role']})\n"
            f"leader {st['leader'] or '-'}  term {st['term']}  commit {st['commit_index']}  "
            f"applied {st['last_applied']}  quorum {'yes' if st['has_quorum'] else 'NO'}")
    columns = [("name", "NAME"), ("role", "ROLE"), ("address", "ADDRESS"), ("live", "LIVE"),
               ("connected", "CONNECTED"), ("leader", "LEADER")]
    rows = st["members"]
    if any(m.get("paths") for m in rows):
        # several heartbeat networks: each path from this node, network by network
        rows = [{**m, "networks": " ".join(
            f"{p['network']}:{p['address']}:{'up' if p['alive'] else 'DOWN'}"
            for p in m.get("paths") or []) or "-"} for m in rows]
        columns.append(("networks", "NETWORKS"))
    members = table(rows, columns)
    leases = [r for r in st["leases"] if not r["resource"].startswith("node/")]
    text = f"{head}\n{_versions_line(st)}\n\n{members}"
    if leases:
        text += "\n\n" + table(leases, [("resource", "LEASE"), ("holder", "HOLDER"),
                                         ("epoch", "EPOCH"), ("eligible", "ELIGIBLE")])
    _print(args, st, text)
    # Scripts and monitors test the status: without quorum this member acts on nothing.
    return exit_status.OK if st["has_quorum"] else exit_status.NO_QUORUM


def _versions_line(st: dict) -> str:
    """The versions line of ``cluster status``: this daemon's version and feature
    level, the cluster's committed level, and what is in maintenance."""
    m = st.get("maintenance") or {}
    line = (f"version {st.get('version', '?')}  feature level {st.get('feature_level', 0)} "
            f"(cluster {m.get('feature_level', 0)})")
    parts = []
    if m.get("cluster") is not None:
        parts.append(f"cluster (hold {m['cluster']:g} s)")
    parts += [f"{name} (hold {hold:g} s)" for name, hold in sorted((m.get("modules") or {}).items())]
    return line + "  maintenance " + (", ".join(parts) if parts else "off")


def cmd_maintenance(args: argparse.Namespace) -> int:
    on = args.state == "on"
    result = _call(args, commands.MAINTENANCE.name, module=args.module, on=on,
                   hold_s=args.hold if on else None)
    what = f"module {args.module}" if args.module else "the cluster"
    text = (f"maintenance on for {what}: no failover starts; the daemon may stop and start "
            f"again within {args.hold:g} s with the application running" if on
            else f"maintenance off for {what}")
    _print(args, result, text)
    return exit_status.OK


# Daemon errors after which a membership command may still commit: it reached (or may
# have reached) the Raft leader, and only the committed state tells.
_OUTCOME_UNKNOWN_MARKS = ("not committed within", "did not answer", "outcome unknown")


def _member_request(cfg: cluster_config.ClusterConfig, what: str, cmd: str, **kw: Any) -> Any:
    try:
        return request(cfg.socket_path, cmd, **kw)
    except ControlError as e:
        if any(mark in str(e) for mark in _OUTCOME_UNKNOWN_MARKS):
            raise ControlError(f"{what}: no confirmation ({e}); outcome unknown: a command that "
                               "reached the Raft leader may still commit; check with "
                               "'hacluster cluster status'", e.code) from None
        raise


def cmd_witness_credential(args: argparse.Namespace) -> int:
    """A witness configured before roles had their own credentials holds the cluster
    secret; this writes it a directory with only its Raft credential."""
    cfg = _load(args)
    # The members as this member last applied them (its state), else its configuration.
    cached = member_cache.read(cfg.paths.members_file)
    if cached is not None and not cached.removed:
        cfg.members = cached.members
    member = cfg.members.get(args.name)
    if member is None or member["role"] != "witness":
        raise ConfigError(f"{args.name!r} is not a witness of cluster {cfg.cluster} "
                          f"(witnesses: {', '.join(sorted(n for n, m in cfg.members.items() if m['role'] == 'witness')) or 'none'})")
    d = cluster_config.write_member_dir(Path(args.out), cfg.cluster, args.name, cfg.members,
                                        cfg.read_secret(), cfg.raft)
    _print(args, {"witness": args.name, "config": str(d)},
           f"wrote {d} with the Raft credential of {args.name} only: replace its /etc/hacluster "
           "with it (its old 'secret' file must go) and restart it")
    return 0


def _member_change(args: argparse.Namespace, role: str, adding: bool) -> int:
    cfg = _load(args)
    if adding:
        port = int(cfg.me["address"].split(":")[1]) if ":" in cfg.me["address"] else DEFAULT_RAFT_PORT
        address = cluster_config.with_port(args.address, port)
        out = Path(args.out) if args.out else None
        if out is not None and (out / args.name / cluster_config.CONFIG_FILE).exists():
            raise ConfigError(f"{out / args.name}: already holds a configuration; choose another --out")
        if out is not None and role == "node" and not cfg.holds_data_secret:
            raise ConfigError(f"add-node {args.name} --out: this member is a witness and holds "
                              "only the Raft credential, not the cluster secret a data node needs: "
                              "run it on a data node (nothing was changed)")
        ca = None
        if getattr(args, "ca", None):
            if out is None:
                raise ConfigError(f"add-node {args.name} --ca: give --out too (the certificate is "
                                  "written into the new node's configuration directory)")
            try:
                ca = tls.read_ca(Path(args.ca))     # before the change: nothing half-done
            except tls.TlsError as e:
                raise ConfigError(f"add-node {args.name}: {e}") from None
        res = _member_request(cfg, f"add-{role} {args.name}", commands.ADD_MEMBER.name, name=args.name,
                              address=address, role=role, **({"links": args.link} if args.link else {}))
        text = f"added {role} {args.name} ({address}) through Raft"
        if out is not None:
            # A new witness gets only the Raft credential: any voter can give it that.
            secret = cfg.read_secret() if role == "node" or cfg.holds_data_secret else None
            d = cluster_config.write_member_dir(out, cfg.cluster, args.name, res["members"],
                                                secret, cfg.raft, cfg.read_raft_secret())
            if ca is not None:
                tls.write_member(d, tls.sign_member(ca, cfg.cluster, args.name,
                                                    address.rsplit(":", 1)[0]), ca.cert)
                text += "; its HTTPS certificate is signed by the cluster CA"
            text += f"; its configuration is in {d} (start it with hacluster --config {d} {role} run)"
    else:
        if role == "node":
            _confirm_remove_node(args, cfg)
        res = _member_request(cfg, f"remove-{role} {args.name}", commands.REMOVE_MEMBER.name,
                              name=args.name, role=role)
        text = f"removed {role} {args.name} through Raft"
    text += "\nmembers: " + ", ".join(f"{n} ({m['role']})" for n, m in sorted(res["members"].items()))
    _print(args, res, text)
    return 0


def in_sync_secondary_of(status: dict, node: str) -> list[str]:
    """The mirror modules whose in-sync secondary ``node`` is (in the eligible set of
    the module's lease, not its holder), from a ``cluster status`` answer."""
    return sorted(r["resource"].split("/", 1)[1] for r in status.get("leases", [])
                  if r["resource"].startswith("mirror/") and node in (r.get("eligible") or [])
                  and r.get("holder") != node)


def _confirm_remove_node(args: argparse.Namespace, cfg: cluster_config.ClusterConfig) -> None:
    modules = in_sync_secondary_of(request(cfg.socket_path, commands.STATUS.name), args.name)
    if modules:
        confirm(args, f"remove-node {args.name}",
                f"{args.name} holds an in-sync copy of {', '.join(modules)} (the copy a failover "
                "would start from): removing it leaves the primary with no current secondary")


def cmd_lease_list(args: argparse.Namespace) -> int:
    rows = _call(args, commands.LEASES.name)
    _print(args, rows, table(rows, [("resource", "LEASE"), ("holder", "HOLDER"), ("epoch", "EPOCH"),
                                    ("lease_s", "LEASE S"), ("eligible", "ELIGIBLE")]))
    return 0


# ---- users of the HTTPS API --------------------------------------------------------
def _read_password(args: argparse.Namespace, name: str) -> str:
    """The new password: one line of standard input with --password-stdin, else typed
    twice at a terminal (never an argument: it would show in ps and the shell history).
    Hashed here (scrypt): only the hash goes to the daemon and into the cluster state."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        if not sys.stdin.isatty():
            raise Refused(f"user {name}: no terminal to type the password at: give it on "
                          "standard input with --password-stdin")
        import getpass
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise Refused(f"user {name}: the two passwords differ (nothing changed)")
    try:
        return passwords.hash_password(password)
    except passwords.PasswordError as e:
        raise ConfigError(f"user {name}: {e}") from None


def cmd_user_add(args: argparse.Namespace) -> int:
    error = roles.name_error(args.name) or roles.role_error(args.role)
    if error:
        raise ConfigError(error)
    if any(u["name"] == args.name for u in _call(args, commands.USER_LIST.name)):
        raise Refused(f"user {args.name} exists: change their password with 'user passwd', "
                      "their role with 'user role'")
    res = _call(args, commands.USER_SET.name, name=args.name, role=args.role,
                hash=_read_password(args, args.name))
    _print(args, res, f"user {args.name} added ({args.role}): committed, they can log in on "
                      "every data node")
    return 0


def _user(args: argparse.Namespace) -> dict:
    found = next((u for u in _call(args, commands.USER_LIST.name) if u["name"] == args.name), None)
    if found is None:
        raise Refused(f"no user {args.name!r} ('hacluster user list')")
    return found


def cmd_user_passwd(args: argparse.Namespace) -> int:
    user = _user(args)
    res = _call(args, commands.USER_SET.name, name=args.name, role=user["role"],
                hash=_read_password(args, args.name))
    _print(args, res, f"user {args.name}: password changed (their sessions end on every node)")
    return 0


def cmd_user_role(args: argparse.Namespace) -> int:
    if roles.role_error(args.role):
        raise ConfigError(str(roles.role_error(args.role)))
    _user(args)
    res = _call(args, commands.USER_SET.name, name=args.name, role=args.role, hash=None)
    _print(args, res, f"user {args.name}: role {args.role}")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    res = _call(args, commands.USER_REMOVE.name, name=args.name)
    _print(args, res, f"user {args.name} removed (their sessions end on every node)")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    rows = _call(args, commands.USER_LIST.name)
    _print(args, rows, table(rows, [("name", "USER"), ("role", "ROLE")]) if rows
           else "no users (add one: hacluster user add NAME --role admin)")
    return 0


# ---- modules ---------------------------------------------------------------------
def _report_text(report: Any) -> str:
    lines = [f"error: {e}" for e in report.errors] + [f"warning: {w}" for w in report.warnings]
    lines.append(f"{report.path}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def cmd_module_check(args: argparse.Namespace) -> int:
    from .modules.package import check_path
    report = check_path(args.path)
    _print(args, {"path": report.path, "ok": report.ok, "mode": report.mode,
                  "errors": list(report.errors), "warnings": list(report.warnings)},
           _report_text(report))
    return exit_status.OK if report.ok else exit_status.FAILED


def cmd_module_package(args: argparse.Namespace) -> int:
    from .modules.package import ModulePackageError, check_path, package
    report = check_path(args.dir)
    if not report.ok:
        # every error and warning, then the one-line failure (or the JSON error)
        print("\n".join([f"error: {e}" for e in report.errors] + [f"warning: {w}" for w in report.warnings]),
              file=sys.stderr)
        raise ConfigError(f"{args.dir}: {len(report.errors)} error(s); nothing written")
    try:
        digest = package(args.dir, args.out)
    except ModulePackageError as e:
        raise ConfigError(str(e)) from None
    text = f"wrote {args.out} (sha256 {digest})"
    for w in report.warnings:
        text += f"\nwarning: {w}"
    _print(args, {"package": args.out, "digest": digest, "warnings": list(report.warnings)}, text)
    return 0


def cmd_module_install(args: argparse.Namespace) -> int:
    res = _call(args, commands.MODULE_INSTALL.name, package=str(Path(args.package).resolve()), name=args.name,
                timeout=120)
    text = f"installed {res['mode']} module {res['module']} (sha256 {res['digest'][:12]}) on every node"
    if res.get("staged"):
        text = (f"staged {res['mode']} module {res['module']} (sha256 {res['digest'][:12]}): it runs, "
                "so each node changes to this version at its next stop of the module "
                "(stop, then start; swap to serve from the other node meanwhile)")
    if res.get("replication_ports"):
        text += f"; replication ports {','.join(map(str, res['replication_ports']))}"
    for w in res.get("warnings", []):
        text += f"\nwarning: {w}"
    _print(args, res, text)
    return 0


def cmd_module_uninstall(args: argparse.Namespace) -> int:
    res = _call(args, commands.MODULE_UNINSTALL.name, module=args.module)
    _print(args, res, f"uninstalled module {res['module']} from every node")
    return 0


def _module_table(rows: list[dict]) -> str:
    for r in rows:
        r["started_on"] = sorted(n for n, i in r["intent"].items() if i == "start")
    return table(rows, [("module", "MODULE"), ("mode", "MODE"), ("digest", "SHA256"),
                        ("staged", "STAGED"), ("runs_here", "RUNS HERE"),
                        ("installed_here", "HERE"), ("state", "STATE"),
                        ("failover", "FAILOVER"), ("started_on", "STARTED ON"),
                        ("replication_ports", "PORTS"), ("error", "ERROR")])


def cmd_module_list(args: argparse.Namespace) -> int:
    return _run(args, commands.MODULE_LIST.name, _module_table)


def _module(args: argparse.Namespace) -> str:
    if not args.module:
        raise ConfigError("this command needs a module: hacluster -m MODULE ...")
    return args.module


def cmd_module_command(args: argparse.Namespace) -> int:
    """A plain module verb (``commands.MODULE_COMMANDS``): ``fullsync`` and ``--force``
    name commands of their own (prim_fullsync, second_force, ...)."""
    module = _module(args)
    if args.mcmd == "primforce":
        _confirm_primforce(args, module)
    elif args.mcmd == "second":
        _confirm_second(args, module)
    name = args.mcmd
    if getattr(args, "fullsync", None):
        name += "_fullsync"
    if getattr(args, "force", False):
        name += "_force"
    kw = {"module": module, "cmd_name": name}

    def human(res: dict) -> str:
        return f"{res['module']} on {res['node']}: {res['message']}"
    return _run(args, commands.MODULE_CMD.name, human, **kw)


def _confirm_primforce(args: argparse.Namespace, module: str) -> None:
    """primforce makes one node's copy the truth: never on several nodes at once (only
    one can win, and which is chance); on one, --force or a yes at the terminal. (The
    daemon's own primforce without --force only tells what it would overwrite.)"""
    hosts = _hosts(args)
    if _several(hosts):
        raise Refused(f"primforce with -H {args.hosts}: primforce makes one node's copy the truth; "
                      "name that one node (-H NODE), never several")
    confirm(args, f"{module}: primforce",
            "primforce makes this node primary even if its copy is not current: whatever the "
            "current copy holds that this one lacks is overwritten (the answer says which "
            "copy and how many primary sessions newer)")


def _confirm_second(args: argparse.Namespace, module: str) -> None:
    """``second`` discards this node's copy; when it is the only current one (no other
    node in sync, this node not the primary) that is the module's data: confirm."""
    if getattr(args, "force", False):
        return
    hosts = _hosts(args)
    if hosts is None:
        states = [_call(args, commands.MODULE_STATE.name, module=module)]
    else:
        rows = _call(args, commands.FORWARD.name, hosts="all" if hosts == ["all"] else hosts,
                     request={"cmd": commands.MODULE_STATE.name, "module": module}, timeout=35)
        states = [r["result"] for r in rows if r["ok"]]
    last = [st["node"] for st in states if st.get("mode") != "farm" and st.get("primary") != st["node"]
            and list(st.get("in_sync") or []) == [st["node"]]]
    if last:
        confirm(args, f"{module}: second on {','.join(last)}",
                f"the copy on {','.join(last)} is the only current copy of {module}: 'second' "
                "discards it (it is overwritten from the other node)")


def cmd_failover(args: argparse.Namespace) -> int:
    failover = commands.FAILOVER_ON if args.onoff == "on" else commands.FAILOVER_OFF
    kw = {"module": _module(args), "cmd_name": failover.name}

    def human(res: dict) -> str:
        return f"{res['module']}: automatic failover {'on' if res['failover'] else 'off'}"
    return _run(args, commands.MODULE_CMD.name, human, **kw)


# ---- checkers -------------------------------------------------------------------
def _resources_text(res: dict) -> str:
    from .modules.rotating_log import utc_timestamp
    rows = [{**r, "since": utc_timestamp(r["since"]),
             "age": f"{r['age_s']:.1f}s"} for r in res["resources"]]
    head = (f"{res['module']} on {res['node']}: {res['state']}  errd {'on' if res['errd'] else 'off'}  "
            f"checker {'on' if res['checker'] else 'off'}  loop {res['loop_count']}/{res['maxloop']}")
    if res.get("waiting"):
        head += f"  waiting for {','.join(res['waiting'])}"
    if not rows:
        return head + "\nno resources (no <errd> or <check> in this module)"
    return head + "\n" + table(rows, [("resource", "RESOURCE"), ("value", "VALUE"), ("since", "SINCE"),
                                      ("age", "AGE")])


def cmd_resources(args: argparse.Namespace) -> int:
    kw = {"module": _module(args), "cmd_name": commands.RESOURCES.name}
    return _run(args, commands.MODULE_CMD.name, _resources_text, **kw)


def cmd_checks_command(args: argparse.Namespace) -> int:
    """errd on|off, checker on|off, resetloop."""
    name = f"{args.flag}_{args.onoff}" if getattr(args, "flag", None) else args.ccmd
    kw = {"module": _module(args), "cmd_name": name}

    def human(res: dict) -> str:
        return f"{res['module']} on {res['node']}: {res['message']}"
    return _run(args, commands.MODULE_CMD.name, human, **kw)


def cmd_set(args: argparse.Namespace) -> int:
    """``set -r custom.NAME -v up|down``: run by a module's custom checker program, on
    its own node (never with -H); the module comes from -m or $HACLUSTER_MODULE."""
    if getattr(args, "hosts", None):
        raise ConfigError("set is local: a checker program sets the resources of its own node (no -H)")
    module = args.module or os.environ.get("HACLUSTER_MODULE")
    if not module:
        raise ConfigError("set needs a module: hacluster -m MODULE set ... (or $HACLUSTER_MODULE)")
    res = _call(args, commands.MODULE_CMD.name, module=module, cmd_name=commands.SET_RESOURCE.name,
                resource=args.resource, value=args.value)
    _print(args, res, f"{res['module']} on {res['node']}: {res['message']}")
    return 0


def _state_line(st: dict) -> str:
    if st.get("mode") == "farm":
        members = ",".join(f"{n}:{p}" for n, p in sorted(st["members"].items())) or "-"
        line = (f"{st['module']} on {st['node']}: {st['state']} ({st['ready']})  table v{st['version']}"
                f"  buckets {st['buckets']}/256  members {members}")
        if st.get("transition"):
            line += f"  [{st['transition']}]"
        if st.get("error"):
            line += f"  error: {st['error']}"
        return line
    line = (f"{st['module']} on {st['node']}: {st['state']} ({st['ready']})  epoch {st['epoch']}  "
            f"primary {st['primary'] or '-'}  in sync {','.join(st['in_sync']) or '-'}")
    if st.get("transition"):
        line += f"  [{st['transition']}]"
    problem = (st.get("copy") or {}).get("problem")
    if problem and st["state"] in ("WAIT", "STOP"):
        line += f"  not promoted: {problem}"
    rp = st.get("reintegration")
    if rp:
        line += (f"  reintegration {rp.get('bytes_done', 0)}/{rp.get('bytes_total', 0)} bytes "
                 f"{rp.get('files_done', 0)}/{rp.get('files_total', 0)} files")
    return line


def _states_text(rows: list[dict]) -> str:
    return "\n".join(_state_line(r) for r in rows) or "no modules"


def _state_failure(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``fn(args)``, its plain failures turned into StateFailed: state and waitstate exit
    with a module's state, so a failure must not look like one of them (1 is WAIT).
    Errors with their own status (unreachable, no quorum) keep it."""
    try:
        return fn(args)
    except ControlError as e:
        if e.code is not None:
            raise
        raise StateFailed(str(e)) from None
    except ConfigError as e:
        raise StateFailed(str(e)) from None


def cmd_state(args: argparse.Namespace) -> int:
    if not args.module:
        return _run(args, commands.MODULE_STATE.name, _states_text)
    return _state_failure(_module_state, args)


def _module_state(args: argparse.Namespace) -> int:
    on_hosts = _on_hosts(args, commands.MODULE_STATE.name, _state_line, module=args.module)
    if on_hosts is not None:
        # One node: its SafeKit exit code; several: whether every node answered.
        if len(on_hosts) == 1 and on_hosts[0]["ok"]:
            return on_hosts[0]["result"]["exit_code"]
        if len(on_hosts) == 1:
            return exit_status.STATE_FAILED
        return _rows_exit(on_hosts)
    st = _call(args, commands.MODULE_STATE.name, module=args.module)
    _print(args, st, _state_line(st))
    return st["exit_code"]


def cmd_waitstate(args: argparse.Namespace) -> int:
    return _state_failure(_waitstate, args)


def _waitstate(args: argparse.Namespace) -> int:
    kw = {"module": _module(args), "state": args.state, "wait_s": args.timeout}

    def human(st: dict) -> str:
        return _state_line(st) + ("" if st["reached"] else f"  (not {args.state.upper()} "
                                                          f"within {args.timeout} s)")
    on_hosts = _on_hosts(args, commands.MODULE_WAITSTATE.name, human, timeout=args.timeout + 10, **kw)
    if on_hosts is not None:
        return 0 if all(r["ok"] and r["result"]["reached"] for r in on_hosts) else 1
    st = _call(args, commands.MODULE_WAITSTATE.name, timeout=args.timeout + 10, **kw)
    _print(args, st, human(st))
    return 0 if st["reached"] else 1


FOLLOW_POLL_S = 0.5


def cmd_log(args: argparse.Namespace) -> int:
    kw = {"module": _module(args), "kind": args.kind, "lines": args.lines}
    if not args.follow:
        return _run(args, commands.MODULE_LOG.name, lambda res: "\n".join(res["lines"]), **kw)
    if _hosts(args) is not None:
        raise ConfigError("log -f follows this node's log: run it on the node (no -H)")
    return follow_log(args, kw)


def follow_log(args: argparse.Namespace, kw: dict[str, Any], polls: int | None = None) -> int:
    """Print the tail, then every line written after it, until interrupted (or after
    ``polls`` polls, for tests). The daemon reads from the cursor of its last answer
    and follows the file across rotations; a line is printed once."""
    import time as _time

    def show(res: dict) -> None:
        if res.get("skipped"):
            print(f"hacluster: log {res['path']}: lines were rotated away before they could be "
                  "shown", file=sys.stderr)
        for line in res["lines"]:
            print(json.dumps({"line": line}) if getattr(args, "json", False) else line)
        sys.stdout.flush()
    res = _call(args, commands.MODULE_LOG.name, **kw)
    show(res)
    cursor = res.get("cursor") or {"dev": 0, "ino": 0, "offset": 0}
    n = 0
    while polls is None or n < polls:
        n += 1
        _time.sleep(FOLLOW_POLL_S)
        res = _call(args, commands.MODULE_LOG.name, cursor=cursor, **kw)
        show(res)
        cursor = res.get("cursor") or cursor
    return 0


# ---- support snapshot -----------------------------------------------------------
def cmd_snapshot(args: argparse.Namespace) -> int:
    """One .tar.gz for support: each node's part (through the local daemon and peer
    control with -H), a MANIFEST.json; a node that does not answer is listed, and the
    snapshot is still written (exit 0, a warning line per missing node)."""
    from .modules.support import module_sources
    from .node import support_archive, support_part, support_snapshot
    from .node.control import DaemonUnreachable

    cfg = _load(args)
    hosts = _hosts(args)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    try:
        gathered = support_archive.gather(request, cfg.socket_path, cfg.self_name, hosts,
                                          timeout=args.timeout)
    except DaemonUnreachable as e:
        # When the daemon is down a snapshot is wanted most: this node's files, read here.
        note = f"no daemon answered ({e}): no status, Raft or module state in this part"
        data = support_part.build_local(cfg, module_sources(cfg.paths, {}, {}), note)
        gathered = support_archive.Gathered(parts={cfg.self_name: data})
        if hosts is not None:
            others = _snapshot_nodes(cfg, hosts)
            gathered.missing = {n: "the local daemon does not answer: other nodes are reached "
                                   "through it" for n in others if n != cfg.self_name}
    written = support_archive.write_archive(
        Path(args.out) if args.out else None, gathered, cluster=cfg.cluster, made_on=cfg.self_name,
        version=version(), command=["hacluster", *(["-H", args.hosts] if hosts else []), "snapshot",
                                    *(["--anonymize"] if args.anonymize else [])],
        anonymize=args.anonymize)
    if written.tokens is not None:
        tokens_path = written.path.with_name(written.path.name + ".tokens.json")
        fd = os.open(tokens_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(written.tokens, f, indent=2, sort_keys=True)
    for node, reason in sorted(gathered.missing.items()):
        print(f"hacluster: warning: {node} unreachable, not in the snapshot: {reason}", file=sys.stderr)
    line = support_snapshot.summary_line(str(written.path), written.size, written.manifest)
    if written.tokens is not None:
        line += f" (tokens in {written.path.name}.tokens.json: keep it, do not send it)"
    _print(args, written.manifest, line)
    return exit_status.OK


def _snapshot_nodes(cfg: cluster_config.ClusterConfig, hosts: list[str]) -> list[str]:
    """The data nodes -H names, from the membership this member last applied (or its
    configuration) when its daemon cannot be asked."""
    cached = member_cache.read(cfg.paths.members_file)
    members = cached.members if cached is not None and not cached.removed else cfg.members
    if hosts == ["all"]:
        return sorted(n for n, m in members.items() if m["role"] == "node")
    return list(dict.fromkeys(hosts))


# ---- daemons -------------------------------------------------------------------
def cmd_node_run(args: argparse.Namespace) -> int:
    from .node_daemon import NodeDaemon
    return NodeDaemon(_load(args), contend=args.contend).run()


def cmd_witness_run(args: argparse.Namespace) -> int:
    from .node.daemon import WitnessDaemon
    return WitnessDaemon(_load(args)).run()


class _Manual(argparse.HelpFormatter):
    """Paragraphs wrapped to the terminal; a paragraph whose lines are indented (a list
    of commands, an example) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in textwrap.dedent(text).strip("\n").split("\n\n"):
            if para.startswith("  "):
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, break_on_hyphens=False,
                                         initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


class _CommandTable:
    """Adds the CLI's commands and keeps each one's one-line summary, in order, for
    the list that ``hacluster --help`` and ``hacluster help`` print."""

    def __init__(self) -> None:
        self.listed: list[tuple[str, str]] = []

    def add(self, sub: Any, words: str, summary: str, about: str, func: Any = None,
            **defaults: Any) -> argparse.ArgumentParser:
        """``words``: the command as typed ("cluster init"); its last word is added to
        ``sub``. ``about``: the manual, in full sentences."""
        sp = sub.add_parser(words.split()[-1], help=summary, description=about,
                            formatter_class=_Manual)
        _safekit_order(sp)
        self.listed.append((words, summary))
        if func is not None:
            sp.set_defaults(func=func, **defaults)
        return sp

    def group(self, sub: Any, name: str, summary: str) -> Any:
        """A command word with commands under it (``cluster``, ``module``, ...)."""
        gp = sub.add_parser(name, help=summary, formatter_class=_Manual,
                            description=f"{summary[0].upper()}{summary[1:]}: the commands "
                                        f"below. 'hacluster help {name} COMMAND' tells what "
                                        "one does.")
        return gp.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def text(self) -> str:
        width = max(len(w) for w, _ in self.listed) + 2
        return "\n".join(f"  {w.ljust(width)}{summary}" for w, summary in self.listed)


ABOUT = """\
hacluster keeps applications available on a group of Linux servers. A Raft cluster of
data nodes (and witnesses that only vote) decides who runs what; application modules
are either mirror modules (the application runs on a primary, its directories are
replicated synchronously to a secondary and fail over with its virtual IP) or farm
modules (the application runs on every node behind one shared virtual IP).

Every command except cluster init, module package, setup and help asks the daemon of
this member, through its control socket; the member's configuration directory is
--config, else $HACLUSTER_CONFIG, else /etc/hacluster, which the daemon only reads. Its
state (Raft journal, modules) is in /var/lib/hacluster, its control socket in
/run/hacluster, the modules' logs in /var/log/hacluster: --state-dir, --run-dir and
--log-dir, their variables or the keys of cluster.json move them (README, Where things
are). 'hacluster help COMMAND' (or
'hacluster COMMAND --help') tells what a command does."""

EXIT_STATUS = """\
Exit status ('state -m M' exits with the module's state: STOP 0, WAIT 1, ALONE or UP 2,
PRIM 3, SECOND 4; the daemons' own statuses are in 'hacluster help node run'):

""" + "\n".join(f"  {code:<4} {what}" for code, what in exit_status.CLI_TABLE) + """

With --json an error is one JSON object on standard output, {"error": "...", "exit": N},
and nothing on standard error. Destructive commands (primforce, second on the only
current copy, remove-node of an in-sync secondary) ask for confirmation at a terminal;
without one they need --force."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hacluster", description=ABOUT, formatter_class=_Manual,
                usage="hacluster [--config DIR] [--state-dir DIR] [--run-dir DIR] "
                      "[--log-dir DIR] [-m MODULE] [-H all|NODE,...] "
                      "COMMAND ...\n       hacluster help [COMMAND]")
    p.add_argument("--version", action="version", version=f"hacluster {version()}",
                   help="print the version of hacluster and exit")
    p.add_argument("--config", "-c", metavar="DIR", help="member configuration directory "
                   "(default $HACLUSTER_CONFIG or /etc/hacluster)")
    for key, default in paths.DEFAULTS.items():
        what = {"state_dir": "Raft journal, modules, committed membership",
                "run_dir": "control socket, pid file",
                "log_dir": "the modules' logs"}[key]
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar="DIR",
                       help=f"{what} (default ${paths.ENVIRONMENT[key]}, else "
                            f"{key} in cluster.json, else {default})")
    p.add_argument("--module", "-m", help="the module a state/start/stop/... command is for")
    p.add_argument("-H", "--hosts", metavar="all|NODE[,NODE...]",
                   help="run a module command on these nodes (through the local daemon)")
    # The commands are listed by the epilog (every command, one line each), not by
    # argparse's list of the first word only.
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND ...",
                           help=argparse.SUPPRESS, prog="hacluster")
    table_ = _CommandTable()
    add = table_.add

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    # ---- cluster ----
    cluster = table_.group(sub, "cluster", "cluster membership")
    sp = add(cluster, "cluster init", "write the configuration and secret of every member", """
        Write one configuration directory per member into OUT/NAME: cluster.json (the
        members, their addresses, the Raft timers) and the credential (mode 0600): the
        cluster secret for a data node, only the Raft credential derived from it for a
        witness. Nothing is written if any member's directory already holds a
        configuration. Copy each directory to its server as /etc/hacluster, then start
        the daemons (systemctl enable --now hacluster-node or hacluster-witness). No
        daemon is needed; the shape is checked first (two voters without a witness, a
        name or address given twice are refused).""", cmd_cluster_init)
    sp.add_argument("--name", default="hacluster", help="cluster name")
    sp.add_argument("--node", action="append", default=[], metavar="NAME=ADDR[:PORT]",
                    help="a data node (repeatable); ADDR is the address it listens on")
    sp.add_argument("--witness", action="append", default=[], metavar="NAME=ADDR[:PORT]",
                    help="a witness: a Raft voter with no modules (repeatable)")
    sp.add_argument("--link", action="append", default=[], metavar="NAME=ADDR",
                    help="NAME's address on its next heartbeat network (repeatable, in network "
                         "order; the Raft port is used there too): Raft and leases then reach "
                         "NAME over any of its networks")
    sp.add_argument("--port", type=int, default=DEFAULT_RAFT_PORT,
                    help=f"Raft port of the members given without one (default {DEFAULT_RAFT_PORT})")
    sp.add_argument("--out", required=True, help="directory to write one sub-directory per member into")
    json_flag(sp)
    sp = add(cluster, "cluster status", "members, roles, leader, term, commit index, liveness", """
        Show the cluster as this member sees it: the Raft leader, term, commit and
        applied index and whether a quorum is reached, then every member with its role,
        address, whether its liveness lease is held (LIVE) and whether this member's
        Raft connection to it is up, then the named leases that are not liveness
        leases.""", cmd_cluster_status)
    json_flag(sp)
    sp = add(cluster, "cluster witness-credential",
             "write a witness's directory holding only its Raft credential", """
        On a data node: write into OUT/NAME a configuration directory for witness NAME
        that holds only its Raft credential, for a witness set up before roles had
        credentials of their own (its directory holds the cluster secret). Replace the
        witness's /etc/hacluster with it and restart the witness.""", cmd_witness_credential)
    sp.add_argument("name")
    sp.add_argument("--out", required=True)
    json_flag(sp)
    for role in ("node", "witness"):
        what = "data node" if role == "node" else "witness"
        sp = add(cluster, f"cluster add-{role}", f"add a {what} through Raft", f"""
            Add a {what} NAME listening on ADDRESS to the cluster, through Raft (one
            membership change at a time); a name or an address already in the cluster is
            refused. With --out, the new member's configuration directory is written into
            OUT/NAME; copy it to the new server as /etc/hacluster and start its daemon
            there.""",
                 lambda a, role=role: _member_change(a, role, True))
        sp.add_argument("name")
        sp.add_argument("address", help="ADDR[:PORT] (default port: this member's)")
        sp.add_argument("--link", action="append", default=[], metavar="ADDR",
                        help="its address on the next heartbeat network (repeatable, in "
                             "network order); every member must be upgraded to this version")
        sp.add_argument("--out", help=f"write the new {what}'s configuration directory here")
        if role == "node":
            sp.add_argument("--ca", metavar="DIR", help="with --out: the directory of the cluster "
                            "CA (cluster init's OUT/CA) to sign the node's HTTPS certificate with "
                            "(without it the node serves no API until given a certificate)")
        json_flag(sp)
        sp = add(cluster, f"cluster remove-{role}", f"remove a {what} through Raft", f"""
            Remove the {what} NAME from the cluster: one committed change, refused when
            the remaining voters would have no live majority or when NAME still holds a
            lease (stop its modules first). The removed member's daemon exits by itself,
            with status 78, and systemd does not restart it.""" + ("""

            When NAME holds an in-sync copy of a mirror module (its secondary), you are
            asked to confirm at a terminal; without one, --force is needed.""" if role == "node" else ""),
                 lambda a, role=role: _member_change(a, role, False))
        sp.add_argument("name")
        if role == "node":
            sp.add_argument("--force", action="store_true",
                            help="also when NAME is a mirror module's in-sync secondary, without asking")
        json_flag(sp)

    lease = table_.group(sub, "lease", "named Raft leases")
    sp = add(lease, "lease list", "every lease: holder, epoch, eligible set", """
        List the named leases in the cluster state: who holds each, its epoch (raised by
        every grant), its duration and which members may acquire it automatically.""",
             cmd_lease_list)
    json_flag(sp)

    # ---- maintenance ----
    maint = table_.group(sub, "maintenance", "maintenance without downtime")
    sp = add(maint, "maintenance on", "no failover; the daemon may restart with applications running", """
        Put the cluster (or, with -m, one module) in maintenance: no failover starts, and
        every lease renewal is extended by HOLD seconds, so a daemon stopped meanwhile
        (an upgrade, a restart) leaves its applications, mounts and virtual IPs running
        and takes them back when it starts again within HOLD. After HOLD without its
        daemon a node stops acting by itself (its mounts refuse writes, its VIPs expire
        in the kernel). Needs every member at this version's feature level.""",
             cmd_maintenance, state="on")
    sp.add_argument("--hold", type=float, default=600.0,
                    help="seconds a node may act without its daemon (default 600)")
    json_flag(sp)
    sp = add(maint, "maintenance off", "back to normal: failovers allowed again", """
        End maintenance of the cluster (or, with -m, of one module). Each node brings what
        it holds back within a plain lease before the cluster counts one again, so a
        failover after this waits at most one lease, or the hold for a node whose daemon
        is still away.""",
             cmd_maintenance, state="off", hold=0.0)
    json_flag(sp)

    # ---- users of the HTTPS API ----
    user = table_.group(sub, "user", "users of the HTTPS API and their roles")
    role_help = "monitor (read), control (also module commands) or admin (also users)"
    sp = add(user, "user add", "add a user of the HTTPS API", """
        Add a user who can log in to the HTTPS API on every data node, with ROLE monitor
        (read), control (also module commands) or admin (also users and the audit
        trail). The password is typed twice at a terminal, or read from standard input
        with --password-stdin, and hashed here (scrypt): only the hash is committed to
        the cluster state.""", cmd_user_add)
    sp.add_argument("name")
    sp.add_argument("--role", required=True, help=role_help)
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    json_flag(sp)
    sp = add(user, "user passwd", "change a user's password", """
        Change the password of user NAME (typed twice, or --password-stdin). Their
        sessions end on every node.""", cmd_user_passwd)
    sp.add_argument("name")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    json_flag(sp)
    sp = add(user, "user role", "change a user's role", """
        Give user NAME the role ROLE (monitor, control or admin); it applies to their
        next request, on every node, without a new login.""", cmd_user_role)
    sp.add_argument("name")
    sp.add_argument("role", help=role_help)
    json_flag(sp)
    sp = add(user, "user remove", "remove a user", """
        Remove user NAME from the cluster state: they can no longer log in, and their
        sessions end on every node. Unlike the API, this may remove the last admin
        (root on a server can always add one back with user add).""", cmd_user_remove)
    sp.add_argument("name")
    json_flag(sp)
    sp = add(user, "user list", "the users and their roles", """
        List the users of the HTTPS API and their roles (never their password
        hashes).""", cmd_user_list)
    json_flag(sp)

    # ---- modules ----
    module = table_.group(sub, "module", "application modules (.safe packages)")
    sp = add(module, "module package", "check a module folder and package it into a .safe", """
        Check a module folder (conf/userconfig.xml and the bin/ scripts: XML, script
        names, no path escapes) and write it as a .safe package to OUT, printing the
        warnings of its userconfig.xml (file:line). With an error nothing is written:
        every error and warning is printed, as 'module check' does. Needs no
        daemon.""", cmd_module_package)
    sp.add_argument("dir")
    sp.add_argument("-o", "--out", required=True)
    json_flag(sp)
    sp = add(module, "module check", "every error and warning of a module folder, .safe or userconfig.xml", """
        Check a module folder, a .safe package or a userconfig.xml as 'module package'
        and 'module install' would, and print every error and every warning, each with
        its file (and line, in userconfig.xml): unknown elements and attributes (with
        the name meant, for a near miss such as intervall), sections not implemented,
        invalid values, scripts missing or not executable. Exit status 1 when there is
        an error, 0 otherwise (warnings only). Needs no daemon.""", cmd_module_check)
    sp.add_argument("path", metavar="DIR|FILE")
    json_flag(sp)
    sp = add(module, "module install", "install a .safe on every node through Raft", """
        Check a .safe package, commit its digest in Raft and install it on every data
        node: each node fetches the same bytes from this one and checks the digest. A
        mirror module is given one replication port per replicated directory, which no
        other module has (kept across upgrades with as many directories).
        Installing another version of a module is refused while it is started on any
        node. What userconfig.xml holds that hacluster does not implement is printed as
        a warning with file and line.""", cmd_module_install)
    sp.add_argument("package")
    sp.add_argument("--name", help="module name (default: the file name without .safe)")
    json_flag(sp)
    sp = add(module, "module uninstall", "remove a stopped module from every node", """
        Remove MODULE from the cluster state and from every node. Refused while it is
        started on any node or still has a primary.""", cmd_module_uninstall)
    sp.add_argument("module")
    json_flag(sp)
    sp = add(module, "module list", "installed modules: mode, digest, state, intent", """
        List the modules installed in the cluster: mode, package digest, whether this
        node has installed it, its state here, automatic failover, the nodes where it
        is started, a mirror module's replication ports (one per replicated directory,
        allocated at install) and an installation error if there is one. With -H, on
        each named node.""", cmd_module_list)
    json_flag(sp)

    for command in commands.MODULE_COMMANDS.values():
        if command.verb is None:
            continue
        sp = add(sub, command.name, command.verb, command.about
                 + " Needs -m MODULE; with -H, on each named node.", cmd_module_command,
                 mcmd=command.name)
        if command.fullsync:
            sp.add_argument("fullsync", nargs="?", choices=["fullsync"])
        if command.force:
            sp.add_argument("--force", action="store_true", help=command.force)
        json_flag(sp)
    sp = add(sub, "failover", "automatic failover of the module on or off", """
        Turn automatic failover of MODULE on or off in the cluster state, for every
        node. Off, a node whose primary is lost does not take over by itself; an
        administrator's command still does.""", cmd_failover)
    sp.add_argument("onoff", choices=["on", "off"])
    json_flag(sp)
    sp = add(sub, "state", "module state; exit code STOP 0 WAIT 1 ALONE/UP 2 PRIM 3 SECOND 4", """
        Print the state of MODULE on this node (or of every module without -m): state
        and readiness, epoch, primary and in-sync set for a mirror, bucket table and
        members for a farm, a transition under way, why a copy is not promoted, the
        progress of a reintegration. With one module the exit status is its state: STOP
        0, WAIT 1, ALONE or UP 2, PRIM 3, SECOND 4; 5 when it failed (an unknown
        module, ...), 69 when no daemon answers.""", cmd_state)
    json_flag(sp)
    sp = add(sub, "waitstate", "wait until the module is in STATE (Ready)", """
        Wait until MODULE is in STATE and ready on this node (on every named node with
        -H), at most --timeout seconds. Exit status 0 when it is, 1 when the time ran
        out, 5 when it failed (an unknown module, ...), 69 when no daemon answers.""", cmd_waitstate)
    sp.add_argument("state", type=str.upper, choices=["STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP"])
    sp.add_argument("--timeout", type=float, default=60.0)
    json_flag(sp)
    sp = add(sub, "log", "the module log (state changes) or its script log; -f follows", """
        Print the last --lines lines of MODULE's log on this node: its state changes
        and decisions (--kind module) or the output of its scripts (--kind script).
        With -f, then print every line written after them until interrupted (Ctrl-C),
        across rotations. The daemon reads the end of the file only, in a thread: a
        large log never stalls it. Every line starts with its time in UTC (ISO 8601).
        The logs rotate at a size cap (cluster.json: logs.max_bytes, logs.keep).""", cmd_log)
    sp.add_argument("--kind", choices=["module", "script"], default="module")
    sp.add_argument("--lines", type=int, default=100)
    sp.add_argument("-f", "--follow", action="store_true", help="then follow: print new lines as they come")
    json_flag(sp)

    # ---- checkers ----
    sp = add(sub, "resources", "the module's checker resources: value and when it last changed", """
        List the resources of MODULE's checkers on this node (class.ident = init, up or
        down), when each last changed, whether errd and the other checkers act, and the
        restarts counted against maxloop.""", cmd_resources)
    json_flag(sp)
    for flag, text, about in (
            ("errd", "process monitoring (errd) actions on or off, for maintenance", """
                Turn the actions of MODULE's process monitoring (errd) on or off on
                this node, for maintenance: off, a process that dies restarts nothing.
                The processes are still watched and reported."""),
            ("checker", "actions of every other checker on or off, for maintenance", """
                Turn the actions of MODULE's other checkers (tcp, ping, intf, ip,
                custom, module) on or off on this node, for maintenance. Their
                resources are still updated.""")):
        sp = add(sub, flag, text, about, cmd_checks_command, flag=flag)
        sp.add_argument("onoff", choices=["on", "off"])
        json_flag(sp)
    sp = add(sub, "resetloop", "forget the restarts counted against maxloop", """
        Forget the restarts of MODULE on this node counted against its maxloop, so that
        the next failure restarts it again instead of stopping it.""",
             cmd_checks_command, ccmd=commands.RESETLOOP.name, flag=None)
    json_flag(sp)
    sp = add(sub, "set", "set a custom checker's resource (run by the checker program)", """
        Set the value of a custom checker's resource on this node; run by the checker
        program itself (the module comes from -m or $HACLUSTER_MODULE). Never with
        -H.""", cmd_set)
    sp.add_argument("-r", "--resource", required=True, metavar="custom.NAME")
    sp.add_argument("-v", "--value", required=True, metavar="up|down")
    json_flag(sp)

    # ---- support ----
    sp = add(sub, "snapshot", "one .tar.gz for support: configs, states, Raft, logs, versions", """
        Write one .tar.gz for support (as SafeKit's 'safekit snapshot' or Pacemaker's
        crm_report): for this node, or with -H for each named node (-H all: every data
        node), its configuration (cluster.json, hooks.json; never the cluster secret,
        the Raft credential or a file named like a secret or a key), the cluster and
        Raft status and committed state, each module's state, configuration
        (userconfig.xml, the listing of its package with digests) and last events (the
        last 2 MiB of module.log and script.log), the daemon's recent log (journald,
        or its standard error when that is a file), versions, paths, disk usage and the
        metrics. MANIFEST.json at its top lists every file with its size and what it
        is, and what was left out and why. Each daemon builds its part in a thread,
        bounded in size and time, and sends it in chunks over peer control.

        A node that does not answer within --timeout is listed as unreachable in the
        manifest and in a warning line; the snapshot is still written (exit 0). When
        this node's daemon does not answer, this node's files are read by the command
        itself. --anonymize replaces IP addresses, host names, member names and the
        cluster name by tokens (IP-1, HOST-1, MEMBER-1, ...), the same value by the same
        token in every file; the tokens are written beside the archive
        (FILE.tokens.json), for you to keep. Prints one line (path, size, nodes in and
        unreachable); --json prints the manifest.""", cmd_snapshot)
    sp.add_argument("-o", "--out", metavar="FILE", help="the archive to write (default: "
                    "hacluster-snapshot-<cluster>-<node>-<UTC time>.tar.gz here)")
    sp.add_argument("--anonymize", action="store_true",
                    help="replace IP addresses, host names, member and cluster names by tokens")
    sp.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="how long a node may take to answer each request (default 10)")
    json_flag(sp)

    # ---- daemons and the server ----
    node = table_.group(sub, "node", "the node daemon")
    sp = add(node, "node run", "run the node daemon in the foreground (hacluster-node.service)", f"""
        Run this data node's daemon in the foreground: the Raft member, its liveness
        lease, the control socket, peer control (-H) and the installed modules. It
        listens on its own address only (the port table is in README). SIGTERM or
        SIGINT stop it cleanly: the modules stop (stop scripts, unmounts, virtual IPs
        dropped), the leases are handed back, then it exits.

        Under systemd (hacluster-node.service, Type=notify) it reports ready once this
        member's Raft is up: it knows a leader and has applied the committed membership.
        It feeds the watchdog from its lease loop and asks for more stop time when its
        modules' stop scripts may need it.

        Exit status: 0 stopped; 1 could not start (a configuration error, or an address
        it must listen on is not configured on this host or its port is in use: the one
        line names the address, the port and what it is for); {exit_status.REMOVED} this
        member was removed from the cluster (systemd does not restart it).""", cmd_node_run)
    sp.add_argument("--contend", action="append", default=[], metavar="LEASE",
                    help="hold this named lease whenever it is free (repeatable)")
    witness = table_.group(sub, "witness", "the witness daemon")
    add(witness, "witness run", "run the witness daemon in the foreground (hacluster-witness.service)", f"""
        Run this witness's daemon in the foreground: a Raft voter with no modules, which
        breaks ties between data nodes. It holds only the Raft credential and listens on
        the Raft port of its own address. Stop, readiness under systemd and exit status
        are those of 'node run' (0 stopped, 1 could not start, {exit_status.REMOVED} removed).""",
        cmd_witness_run)
    sp = add(sub, "setup", "install the systemd units, the CLI link and the directories (root)", f"""
        Put this installation of hacluster in place on a server, as root: link the
        hacluster command into --sbin-dir, write the systemd units hacluster-node.service
        and hacluster-witness.service (shipped in the package) into --unit-dir with that
        command in their ExecStart, create {paths.DEFAULT_CONFIG_DIR} (0700),
        {paths.DEFAULTS["state_dir"]} (0700), {paths.DEFAULTS["run_dir"]} (0755) and
        {paths.DEFAULTS["log_dir"]} (0755), and reload systemd. It
        enables nothing: copy the member's configuration first, then 'systemctl enable
        --now hacluster-node' (or hacluster-witness). 'make install' in a source tree
        makes a virtualenv in /opt/hacluster, installs the package there and runs this.
        Running it again updates the units and the link.""", cmd_setup)
    sp.add_argument("--sbin-dir", default=server_install.SBIN_DIR,
                    help=f"where the hacluster command is linked (default {server_install.SBIN_DIR})")
    sp.add_argument("--unit-dir", default=server_install.UNIT_DIR,
                    help=f"where the units are written (default {server_install.UNIT_DIR})")
    sp.add_argument("--root", default="/", help="install under this directory instead of / "
                    "(for packaging; systemd is not reloaded)")
    sp = add(sub, "help", "list the commands, or tell what one does", """
        Without a command: the list of commands, one line each. With one ('hacluster
        help cluster init'): what it does and its options.""", cmd_help)
    sp.add_argument("topic", nargs="*", metavar="COMMAND")

    p.epilog = "Commands:\n\n" + table_.text() + "\n\n" + EXIT_STATUS
    return p


def cmd_help(args: argparse.Namespace) -> int:
    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return 0
    try:
        parser.parse_args([*args.topic, "--help"])
    except SystemExit as e:      # argparse exits after printing help, or on an unknown command
        return int(e.code or 0)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    for line in server_install.setup(sbin_dir=Path(args.sbin_dir), unit_dir=Path(args.unit_dir),
                                     root=Path(args.root)):
        print(line)
    return 0


def version() -> str:
    """The version of the hacluster that is running: its installed distribution's (the
    one whose files hold this package), else the source tree's."""
    from importlib import metadata

    from . import __file__ as package_init, __version__
    here = Path(package_init).resolve()
    for dist in metadata.distributions(name="hacluster"):
        if Path(str(dist.locate_file("hacluster/__init__.py"))).resolve() == here:
            return dist.version
    tree = here.parents[1]
    return f"{__version__} (source tree {tree})" if (tree / "setup.cfg").exists() else __version__


class _Parser(argparse.ArgumentParser):
    """Usage errors as JSON too when --json is on the command line."""

    def error(self, message: str) -> Any:
        if _JSON_WANTED[0]:
            fail(True, message, exit_status.USAGE)
            sys.exit(exit_status.USAGE)
        super().error(message)


_JSON_WANTED = [False]      # set by main from the raw arguments, before parsing


# SafeKit's order, 'hacluster state -m M', as well as 'hacluster -m M state': the global
# options are accepted after the command too. SUPPRESS: absent there, they do not
# overwrite what was given before the command.
def _safekit_order(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", "-c", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp.add_argument("--module", "-m", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp.add_argument("-H", "--hosts", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def exit_code(error: BaseException) -> int:
    """The exit status of an error (hacluster.node.exit_status)."""
    if isinstance(error, ControlError) and error.code == UNREACHABLE:
        return exit_status.UNREACHABLE
    if isinstance(error, ControlError) and error.code == NO_QUORUM:
        return exit_status.NO_QUORUM
    if isinstance(error, StateFailed):
        return exit_status.STATE_FAILED
    return exit_status.FAILED


def fail(as_json: bool, message: str, code: int) -> None:
    """An error for people (one line on stderr) or for programs (one JSON object on
    stdout: a program reads one stream, and the exit status says it is an error)."""
    if as_json:
        print(json.dumps({"error": message, "exit": code}))
    else:
        print(f"hacluster: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    _JSON_WANTED[0] = "--json" in raw
    args = build_parser().parse_args(raw)
    try:
        return args.func(args)
    except (ConfigError, ControlError, ValueError, ListenError) as e:
        code = exit_code(e)
        fail(getattr(args, "json", False), str(e), code)
        return code
    except KeyboardInterrupt:
        return exit_status.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
