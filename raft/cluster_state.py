"""The replicated cluster state as a deterministic state machine.

Every method here is applied, in log order, on every member; it must give the
same result everywhere, so it reads no clock and no local fact. Decisions that
need a clock (has a lease run out?) are taken by the leader *outside* and come
in as commands with a compare-and-set guard (``expire`` checks epoch and seq).

State is plain data so that it can be dumped and checked:
  members: name -> {"address": "host:port", "role": "node"|"witness"[, "links": [host, ...]]}
  leases:  resource -> {"holder": name|None, "epoch": int, "seq": int,
                        "lease_s": float, "eligible": [names] | None}
  modules: name -> {"digest": sha256 hex, "mode": "mirror"|"farm", "size": int,
                    "source": member that has the package, "failover": bool,
                    "intent": {member: "start"|"stop"}}
  a module being upgraded has "staged": {"digest", "size", "source"} (a new version
                    each node changes to at its next stop, ``stage_module``) and
                    "running": {node: digest} (the nodes that changed already)
  mirror modules also have "replication_ports": [one port per replicated directory]
                    (raft.replication_ports; absent for one installed before)
  farm modules also have "farm": {"members": {node: power}, "table": [256 owners
                    or None], "version": int} (a snapshot without it: empty farm)
  feature_level: int (absent: 0), the newest command set every member applies
                    (raft.commands.FEATURE_LEVEL; raised by ``raise_feature_level`` once
                    every member runs a version that has it)
  maintenance: {"cluster": hold_s, "modules": {name: hold_s}} (absent: none), see
                    ``set_maintenance``; a held lease may carry "hold_s" (its holder was
                    granted that much beyond the lease, see ``renew_many``)
  users:   name -> {"role": "monitor"|"control"|"admin", "hash": "scrypt$..."}
                    (the HTTP API's users, raft.user_table; absent from a dump when empty,
                    so a state without users dumps as it did before they existed)
A mirror module's primary is the holder of the lease ``mirror/<module>``; its
``eligible`` list is the module's in-sync set (DESIGN rule 3). Which *copies*
those nodes hold (DESIGN rule 6) is in the module's "identity":
  {"generation": int, "history": [older generations], "copies": {node:
   {"copy": id, "generation": int}}}
``generation`` is the epoch of the current primary session (0: none yet);
``copies`` keeps, for every node, the last copy committed for it (an in-sync
node's entry is at the current generation; a node that left keeps its last one,
which tells a returning copy from a replaced one).
A farm's table is recomputed inside every op that changes its members, with the
deterministic ``bucket_allocator.allocate``; ``version`` rises whenever the
table changes. A node leaves every farm in the same op that ends its liveness
lease (expiry or release) or removes it; uninstalling a farm drops its members.
``epoch`` rises with every grant; ``seq`` rises with every change (grant,
renewal, release, expiry) so the leader's expiry decision can be fenced.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Mapping

from . import replication_ports as rp
from .bucket_allocator import BUCKETS, allocate_with_homes
from .membership import MembershipError, check_add, check_members, check_name, check_remove
from .user_table import MAX_USERS, hash_error, name_error, role_error

Result = dict[str, Any]

LIVENESS_PREFIX = "node/"
MIRROR_PREFIX = "mirror/"
_MODULE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
FARM_POWER_MAX = 1000
_HISTORY_MAX = 16
_COPY_ID = re.compile(r"^[0-9a-f]{32}$")
# The command set of this version (raft.commands.FEATURE_LEVEL mirrors it): 1 adds
# maintenance (set_maintenance, renew_many's extensions).
FEATURE_LEVEL = 1
MAINTENANCE_LEVEL = 1
# How long a maintenance hold may be: how long applications may run without their
# daemon before the cluster may act for them again.
MAINTENANCE_HOLD_MAX_S = 7 * 24 * 3600.0


def liveness_resource(name: str) -> str:
    return LIVENESS_PREFIX + name


def mirror_resource(module: str) -> str:
    return MIRROR_PREFIX + module


def maintenance_hold_of(maintenance: Mapping[str, Any], resource: str) -> float | None:
    """The hold a renewal of ``resource`` gets under ``maintenance`` (the state's
    section, or a snapshot's): the module's for its mirror lease, the cluster's for
    every lease, the larger of both; None when neither is on."""
    holds = [] if maintenance.get("cluster") is None else [maintenance["cluster"]]
    if resource.startswith(MIRROR_PREFIX):
        hold = (maintenance.get("modules") or {}).get(resource[len(MIRROR_PREFIX):])
        if hold is not None:
            holds.append(hold)
    return max(holds) if holds else None


def empty_farm() -> dict[str, Any]:
    return {"members": {}, "table": [None] * BUCKETS, "version": 0}


def farm_of(module: dict[str, Any]) -> dict[str, Any]:
    """A farm module's farm section (also from a snapshot dict); older snapshots
    have none, which means an empty farm."""
    return module.get("farm") or empty_farm()


def _valid_copy_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_COPY_ID.fullmatch(value))


def _valid_duration(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _ok(**kw: Any) -> Result:
    return {"ok": True, **kw}


def _farms_left(farms: list[str]) -> dict[str, list[str]]:
    """Results name the farms a node left only when there are some (older
    results stay as they were)."""
    return {"farms_left": farms} if farms else {}


def _refused(error: str, **kw: Any) -> Result:
    return {"ok": False, "error": error, **kw}


def _member_entry(address: str, role: str, links: list[str] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": address, "role": role}
    if links:
        entry["links"] = list(links)
    return entry


class ClusterState:
    def __init__(self) -> None:
        self.members: dict[str, dict[str, str]] = {}
        self.leases: dict[str, dict[str, Any]] = {}
        self.modules: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, str]] = {}
        self.feature_level = 0
        self.maintenance: dict[str, Any] = {}

    # ---- reads -------------------------------------------------------------
    def live_members(self) -> set[str]:
        return {n for n in self.members if self.holder(liveness_resource(n)) == n}

    def holder(self, resource: str) -> str | None:
        lease = self.leases.get(resource)
        return lease["holder"] if lease else None

    def maintenance_hold(self, resource: str) -> float | None:
        """How long a renewal of ``resource`` may be extended now (``renew_many``)."""
        return maintenance_hold_of(self.maintenance, resource)

    def in_maintenance(self, module: str | None = None) -> bool:
        """The cluster, or ``module``, is in maintenance (cluster-wide counts for every module)."""
        return "cluster" in self.maintenance or (
            module is not None and module in self.maintenance.get("modules", {}))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"members": copy.deepcopy(self.members), "leases": copy.deepcopy(self.leases),
             "modules": copy.deepcopy(self.modules)}
        if self.users:
            d["users"] = copy.deepcopy(self.users)
        # Absent at their defaults, so a state without them dumps as it did before they existed.
        if self.feature_level:
            d["feature_level"] = self.feature_level
        if self.maintenance:
            d["maintenance"] = copy.deepcopy(self.maintenance)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterState":
        state = cls()
        state.members = copy.deepcopy(data.get("members", {}))
        state.leases = copy.deepcopy(data.get("leases", {}))
        state.modules = copy.deepcopy(data.get("modules", {}))
        state.users = copy.deepcopy(data.get("users", {}))
        state.feature_level = int(data.get("feature_level", 0))
        state.maintenance = copy.deepcopy(data.get("maintenance", {}))
        for module in state.modules.values():
            if module.get("mode") == "farm":
                module["farm"] = farm_of(module)
        return state

    def farm_table(self, name: str) -> tuple[int, list[str | None], dict[str, int]]:
        """(version, bucket owners, members with power) of farm module ``name``."""
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None or module["mode"] != "farm":
            raise KeyError(f"no farm module {name!r}")
        farm = farm_of(module)
        return farm["version"], list(farm["table"]), dict(farm["members"])

    # ---- membership ----------------------------------------------------------
    def bootstrap(self, members: dict[str, dict[str, Any]]) -> Result:
        """First leader writes the initial members from `cluster init`; later calls are no-ops."""
        if self.members:
            return _refused("already bootstrapped")
        try:
            check_members(members)
        except (MembershipError, TypeError, AttributeError) as e:
            return _refused(f"invalid initial members: {e}")
        self.members = {n: _member_entry(m["address"], m["role"], m.get("links"))
                        for n, m in members.items()}
        return _ok(members=sorted(self.members))

    def add_member(self, name: str, address: str, role: str,
                   links: list[str] | None = None) -> Result:
        """``links``: the member's addresses on further heartbeat networks (raft.links);
        sent only when there are some, so a member without them is added by an entry
        older versions apply too."""
        try:
            check_add(self.members, name, address, role, links)
        except MembershipError as e:
            return _refused(str(e))
        ports = rp.member_ports(address)
        clash = sorted(m for m, ports_of_m in self._mirror_ports().items()
                       if set(ports_of_m) & set(ports))
        if clash:
            return _refused(f"{name}'s ports {ports.start}-{ports.stop - 1} (Raft port to Raft "
                            f"port + 3) are replication ports of module(s) {', '.join(clash)}: "
                            "give it another Raft port")
        self.members[name] = _member_entry(address, role, links)
        return _ok(name=name, address=address)

    def remove_member(self, name: str, role: str) -> Result:
        try:
            check_remove(self.members, self.live_members(), name, role)
        except MembershipError as e:
            return _refused(str(e))
        held = sorted(r for r, lease in self.leases.items()
                      if lease["holder"] == name and r != liveness_resource(name))
        if held:
            return _refused(f"refusing to remove {name!r}: it holds lease(s) {', '.join(held)}; "
                            "stop its modules first")
        address = self.members.pop(name)["address"]
        self.leases.pop(liveness_resource(name), None)
        farms = self._leave_every_farm(name)
        for module in self.modules.values():      # a removed member never comes home
            home = module.get("farm", {}).get("home")
            if home:
                module["farm"]["home"] = [None if h == name else h for h in home]
        for module in self.modules.values():
            module["intent"].pop(name, None)
            if "identity" in module:
                module["identity"]["copies"].pop(name, None)
        for lease in self.leases.values():
            if lease["eligible"] is not None and name in lease["eligible"]:
                lease["eligible"] = [n for n in lease["eligible"] if n != name]
        return _ok(name=name, address=address, **_farms_left(farms))

    # ---- leases ---------------------------------------------------------------
    def _lease(self, resource: str, lease_s: float) -> dict[str, Any]:
        lease = self.leases.get(resource)
        if lease is None:
            # A member's liveness lease is its own: nobody else may take it.
            eligible = ([resource[len(LIVENESS_PREFIX):]]
                        if resource.startswith(LIVENESS_PREFIX) else None)
            lease = {"holder": None, "epoch": 0, "seq": 0, "lease_s": float(lease_s),
                     "eligible": eligible}
            self.leases[resource] = lease
        return lease

    def acquire(self, resource: str, node: str, lease_s: float, force: bool = False) -> Result:
        if not isinstance(node, str) or node not in self.members:
            return _refused(f"unknown member {node!r}")
        if not isinstance(resource, str) or not resource:
            return _refused(f"invalid resource {resource!r}")
        if not _valid_duration(lease_s):
            return _refused(f"invalid lease duration {lease_s!r}")
        if resource.startswith(LIVENESS_PREFIX) and resource != liveness_resource(node):
            return _refused(f"{resource} is the liveness lease of another member")
        lease = self._lease(resource, lease_s)
        if lease["holder"] == node:
            # Renewals use ``renew``; an acquire by the holder is a new session of
            # it (a restarted daemon, a holder that gave its lease up locally): a
            # new epoch, so that two sessions never share one (rule 6).
            lease["epoch"] += 1
            lease["seq"] += 1
            return _ok(epoch=lease["epoch"], reacquired=True)
        if lease["holder"] is not None:
            return _refused(f"{resource} is held by {lease['holder']} (epoch {lease['epoch']})",
                            holder=lease["holder"], epoch=lease["epoch"])
        if lease["eligible"] is not None and node not in lease["eligible"] and not force:
            return _refused(f"{node} is not eligible for {resource} "
                            f"(eligible: {', '.join(lease['eligible']) or 'none'})")
        lease["holder"] = node
        lease["epoch"] += 1
        lease["seq"] += 1
        return _ok(epoch=lease["epoch"], forced=bool(force and lease["eligible"] is not None
                                                       and node not in lease["eligible"]))

    def renew(self, resource: str, node: str, epoch: int) -> Result:
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] != node or lease["epoch"] != epoch:
            holder = lease["holder"] if lease else None
            cur = lease["epoch"] if lease else 0
            return _refused(f"{node} no longer holds {resource} epoch {epoch} "
                            f"(holder {holder}, epoch {cur})", holder=holder, epoch=cur)
        lease["seq"] += 1
        # A plain renewal asks for no extension: its holder keeps none (renew_many).
        lease.pop("hold_s", None)
        return _ok(epoch=epoch)

    def _renew_extended(self, resource: str, node: str, epoch: int) -> Result:
        """A renewal whose holder asks to be held beyond the lease while maintenance
        covers it: the answer's ``hold_s`` is what it is granted now (0 outside
        maintenance). The lease keeps the largest hold granted since its holder last
        renewed without asking (the leader counts it: raft.lease.check_expiry)."""
        lease = self.leases.get(resource)
        kept = lease.get("hold_s") if lease else None
        result = self.renew(resource, node, epoch)
        if not result["ok"]:
            return result
        assert lease is not None
        granted = self.maintenance_hold(resource) or 0.0
        hold = max(granted, kept or 0.0)
        if hold:
            lease["hold_s"] = hold
        return _ok(epoch=epoch, hold_s=granted)

    def renew_many(self, node: str, leases: list, extend: list | None = None) -> Result:
        """Renew several leases of one holder in one entry: ``leases`` is a list of
        [resource, epoch]; ``results`` maps each resource to what ``renew`` would
        have answered (each one renewed or refused on its own).

        ``extend`` (feature level 1, maintenance): the resources whose holder asks to
        be held beyond the lease (answered with the ``hold_s`` granted). A resource
        renewed without asking tells that its holder, before this renewal started,
        brought everything it holds back within a plain lease: its hold ends
        (DESIGN.md, maintenance)."""
        if extend is not None:
            if self.feature_level < MAINTENANCE_LEVEL:
                return _refused(f"renew_many: extensions need feature level {MAINTENANCE_LEVEL} "
                                f"(the cluster is at {self.feature_level})")
            if not isinstance(extend, (list, tuple)) or not all(isinstance(r, str) for r in extend):
                return _refused(f"renew_many: extend must be a list of resources, got {extend!r}")
        wanted = set(extend or ())
        if not isinstance(leases, (list, tuple)) or not leases:
            return _refused(f"renew_many: leases must be a non-empty list of [resource, epoch], "
                            f"got {leases!r}")
        pairs = []
        for item in leases:
            if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
                    or isinstance(item[1], bool) or not isinstance(item[1], int)):
                return _refused(f"renew_many: each lease must be [resource, epoch], got {item!r}")
            pairs.append((item[0], item[1]))
        if len({r for r, _ in pairs}) != len(pairs):
            return _refused("renew_many: a resource is listed twice")
        if wanted - {r for r, _ in pairs}:
            return _refused("renew_many: extend names a resource that is not renewed")
        return _ok(results={r: self._renew_extended(r, node, e) if r in wanted
                            else self.renew(r, node, e) for r, e in pairs})

    def release(self, resource: str, node: str, epoch: int) -> Result:
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] != node or lease["epoch"] != epoch:
            return _refused(f"{node} does not hold {resource} epoch {epoch}")
        lease["holder"] = None
        lease["seq"] += 1
        lease.pop("hold_s", None)       # a release comes after its holder stopped acting
        return _ok(epoch=epoch, **_farms_left(self._not_live(resource, node)))

    def expire(self, resource: str, epoch: int, seq: int) -> Result:
        """The leader saw no renewal for a full lease. Fenced by (epoch, seq):
        if anything happened to the lease since the leader looked, it is void."""
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] is None:
            return _refused(f"{resource} has no holder")
        if lease["epoch"] != epoch or lease["seq"] != seq:
            return _refused(f"stale expiry of {resource} (epoch {epoch} seq {seq}, "
                            f"now epoch {lease['epoch']} seq {lease['seq']})")
        holder = lease["holder"]
        lease["holder"] = None
        lease["seq"] += 1
        lease.pop("hold_s", None)       # the leader counted it before proposing this
        return _ok(epoch=epoch, holder=holder, **_farms_left(self._not_live(resource, holder)))

    def set_eligible(self, resource: str, nodes: list[str] | None, lease_s: float) -> Result:
        if not isinstance(resource, str) or not resource:
            return _refused(f"invalid resource {resource!r}")
        if not _valid_duration(lease_s):
            return _refused(f"invalid lease duration {lease_s!r}")
        if nodes is not None:
            if not isinstance(nodes, (list, tuple)):
                return _refused(f"eligible nodes must be a list of member names or None, got {nodes!r}")
            try:
                for n in nodes:
                    check_name(n)
            except MembershipError as e:
                return _refused(str(e))
            unknown = sorted(set(nodes) - set(self.members))
            if unknown:
                return _refused(f"unknown member(s) {', '.join(unknown)}")
            nodes = sorted(set(nodes))
        lease = self._lease(resource, lease_s)
        lease["eligible"] = nodes
        return _ok(eligible=nodes)

    # ---- modules -----------------------------------------------------------------
    def install_module(self, name: str, digest: str, mode: str, size: int, source: str,
                       lease_s: float, ports: int | None = None) -> Result:
        """Record a package every node must install. A new mirror module starts
        with an empty in-sync set: nobody is primary until an administrator names
        the good copy (``name_good_copy``). ``ports``: how many replication ports a
        mirror module needs (one per replicated directory), allocated here
        (``replication_ports``); None in entries of versions that did not allocate."""
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            return _refused(f"invalid module name {name!r}")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            return _refused(f"invalid package digest {digest!r}")
        if mode not in ("mirror", "farm"):
            return _refused(f"invalid module mode {mode!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return _refused(f"invalid package size {size!r}")
        if source not in self.members:
            return _refused(f"unknown member {source!r}")
        if self.members[source]["role"] != "node":
            return _refused(f"module packages are installed from data nodes only; {source} is a "
                            f"{self.members[source]['role']}")
        if not _valid_duration(lease_s):
            return _refused(f"invalid lease duration {lease_s!r}")
        if ports is not None:
            # one per replicated directory; a farm replicates nothing
            fewest, most = (1, rp.MAX_PER_MODULE) if mode == "mirror" else (0, 0)
            if not isinstance(ports, int) or isinstance(ports, bool) or not fewest <= ports <= most:
                return _refused(f"invalid number of replication ports {ports!r} for a {mode} module")
        old = self.modules.get(name)
        if old is not None:
            if old["mode"] != mode:
                return _refused(f"module {name} is a {old['mode']} module; uninstall it first")
            running = sorted(n for n, i in old["intent"].items() if i == "start")
            if running and old["digest"] != digest:
                return _refused(f"module {name} is started on {', '.join(running)}; "
                                "stop it everywhere before installing another version")
        allocated = None
        # The same package again over a module installed before ports were allocated
        # (it may be running): it keeps its hashed slot. Another version is stopped
        # everywhere (above), so its ports may move.
        legacy_kept = (old is not None and "replication_ports" not in old
                       and old["digest"] == digest)
        if mode == "mirror" and ports is not None and not legacy_kept:
            allocated = self._replication_ports_for(name, ports, old)
            if allocated is None:
                return _refused(f"no {ports} consecutive free replication ports left in "
                                f"{rp.REPLICATION_PORTS.start}-{rp.REPLICATION_PORTS.stop - 1} "
                                f"for module {name}: uninstall a mirror module first")
        self.modules[name] = {"digest": digest, "mode": mode, "size": size, "source": source,
                              "failover": old["failover"] if old else True,
                              "intent": dict(old["intent"]) if old else {}}
        if allocated is not None:
            self.modules[name]["replication_ports"] = allocated
        elif old is not None and "replication_ports" in old:
            self.modules[name]["replication_ports"] = list(old["replication_ports"])
        if mode == "farm":
            self.modules[name]["farm"] = farm_of(old) if old else empty_farm()
        if mode == "mirror" and old is None:
            lease = self._lease(mirror_resource(name), lease_s)
            if lease["holder"] is None:
                lease["eligible"] = []
        return _ok(name=name, digest=digest, upgraded=old is not None,
                   **({"replication_ports": allocated} if allocated is not None else {}))

    def _mirror_ports(self) -> dict[str, list[int]]:
        """Every mirror module's replication ports (raft.replication_ports.ports_of)."""
        return {name: rp.ports_of(name, module) for name, module in self.modules.items()
                if module["mode"] == "mirror"}

    def _replication_ports_for(self, name: str, count: int,
                               old: dict[str, Any] | None) -> list[int] | None:
        """Module ``name``'s ports (raft.replication_ports): the ones it has when it
        needs as many, else the lowest free block; None when there is none."""
        if old is not None and len(old.get("replication_ports", ())) == count:
            return list(old["replication_ports"])
        taken = {p for other, ports in self._mirror_ports().items() if other != name for p in ports}
        for member in self.members.values():
            taken.update(rp.member_ports(member["address"]))
        return rp.allocate(count, taken)

    def uninstall_module(self, name: str) -> Result:
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return _refused(f"unknown module {name!r}")
        running = sorted(n for n, i in module["intent"].items() if i == "start")
        if running:
            return _refused(f"module {name} is started on {', '.join(running)}; stop it first")
        holder = self.holder(mirror_resource(name))
        if holder is not None:
            return _refused(f"module {name} is still primary on {holder}; stop it first")
        del self.modules[name]
        self.leases.pop(mirror_resource(name), None)
        modules = self.maintenance.get("modules", {})
        if modules.pop(name, None) is not None and not modules:
            self.maintenance.pop("modules", None)
        left = sorted(farm_of(module)["members"]) if module["mode"] == "farm" else []
        return _ok(name=name, **({"farm_members_left": left} if left else {}))

    def set_intent(self, name: str, node: str, intent: str) -> Result:
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return _refused(f"unknown module {name!r}")
        if node not in self.members or self.members[node]["role"] != "node":
            return _refused(f"{node!r} is not a data node of this cluster")
        if intent not in ("start", "stop"):
            return _refused(f"invalid intent {intent!r}")
        module["intent"][node] = intent
        return _ok(name=name, node=node, intent=intent)

    def set_failover(self, name: str, on: bool) -> Result:
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return _refused(f"unknown module {name!r}")
        if not isinstance(on, bool):
            return _refused(f"failover must be true or false, got {on!r}")
        module["failover"] = on
        return _ok(name=name, failover=on)

    # ---- in-sync sets (DESIGN rule 3) and copy identities (rule 6) ---------------------
    def _identity(self, resource: str) -> dict[str, Any] | None:
        """The identity section of the mirror module behind ``resource``."""
        module = self.modules.get(resource[len(MIRROR_PREFIX):]) \
            if resource.startswith(MIRROR_PREFIX) else None
        if module is None or module.get("mode") != "mirror":
            return None
        return module.setdefault("identity", {"generation": 0, "history": [], "copies": {}})

    def _primary_lease(self, resource: Any, node: str,
                       epoch: int) -> tuple[dict[str, Any], Result | None]:
        """The lease of ``resource`` if ``node`` holds it at ``epoch``, else a refusal."""
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] != node or lease["epoch"] != epoch:
            holder = lease["holder"] if lease else None
            cur = lease["epoch"] if lease else 0
            return {}, _refused(f"{node} is not the primary of {resource} at epoch {epoch} "
                                f"(holder {holder}, epoch {cur})")
        return lease, None

    def generation(self, resource: str) -> int:
        ident = self._identity(resource) if isinstance(resource, str) else None
        return ident["generation"] if ident else 0

    def begin_generation(self, resource: str, node: str, epoch: int, copy_id: str) -> Result:
        """A new primary session: "in sync = me" and a new generation (= its epoch),
        held by copy ``copy_id`` — which the node stamped on its directories just
        before. Fenced by (holder, epoch); a retry of the same session is a no-op."""
        lease, refusal = self._primary_lease(resource, node, epoch)
        if refusal is not None:
            return refusal
        if not _valid_copy_id(copy_id):
            return _refused(f"invalid copy id {copy_id!r}")
        ident = self._identity(resource)
        if ident is None:
            return _refused(f"{resource} is not a mirror module")
        if epoch < ident["generation"]:
            return _refused(f"generation {epoch} is older than {resource}'s {ident['generation']}")
        if epoch > ident["generation"]:
            if ident["generation"]:
                ident["history"] = (ident["history"] + [ident["generation"]])[-_HISTORY_MAX:]
            ident["generation"] = epoch
        ident["copies"][node] = {"copy": copy_id, "generation": epoch}
        lease["eligible"] = [node]
        return _ok(eligible=[node], epoch=epoch, generation=epoch)

    def set_in_sync(self, resource: str, node: str, epoch: int, nodes: list[str],
                    copies: dict[str, str] | None = None) -> Result:
        """The primary changes its module's in-sync set. Fenced by (holder, epoch):
        a deposed primary can never shrink the set behind its successor's back.
        ``copies``: the copy id of each node added (stamped with the current
        generation before this commit)."""
        lease, refusal = self._primary_lease(resource, node, epoch)
        if refusal is not None:
            return refusal
        if not isinstance(nodes, (list, tuple)) or node not in nodes:
            return _refused(f"the in-sync set of {resource} must contain its primary {node}")
        unknown = sorted(set(nodes) - set(self.members))
        if unknown:
            return _refused(f"unknown member(s) {', '.join(map(str, unknown))}")
        copies = copies or {}
        if (not isinstance(copies, dict) or set(copies) - set(nodes)
                or not all(_valid_copy_id(c) for c in copies.values())):
            return _refused(f"copies must map nodes of the new in-sync set to copy ids, got {copies!r}")
        ident = self._identity(resource)
        if ident is not None and ident["generation"]:
            for n, c in copies.items():
                ident["copies"][n] = {"copy": c, "generation": ident["generation"]}
        lease["eligible"] = sorted(set(nodes))
        return _ok(eligible=lease["eligible"], epoch=epoch)

    def name_good_copy(self, resource: str, node: str, force: bool = False) -> Result:
        """``prim`` / ``primforce``: the administrator names the node whose copy is
        the truth. Only while nobody is primary; without ``force`` only a node
        that is in sync — or any node before the very first generation (the first
        start): after it, an empty in-sync set never means "anyone" (rule 6)."""
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None:
            return _refused(f"unknown resource {resource!r}")
        if node not in self.members:
            return _refused(f"unknown member {node!r}")
        if lease["holder"] is not None and lease["holder"] != node:
            return _refused(f"{resource} is primary on {lease['holder']} (epoch {lease['epoch']}); "
                            "stop it there or use swap")
        eligible = lease["eligible"] or []
        generation = self.generation(resource)
        if node not in eligible and (eligible or generation) and not force:
            current = ", ".join(eligible) or "none"
            return _refused(f"the copy on {node} is not current (in sync: {current}, generation "
                            f"{generation}); use primforce to make it the primary anyway")
        lease["eligible"] = [node] if node not in eligible else sorted(eligible)
        forced = bool(eligible or generation) and node not in eligible
        return _ok(eligible=lease["eligible"], forced=forced)

    def leave_in_sync(self, resource: str, node: str, force: bool = False) -> Result:
        """``second``: this node's copy will be overwritten, so it is not current.
        Refused for the last in-sync copy unless forced: the module would have no
        current copy left."""
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None:
            return _refused(f"unknown resource {resource!r}")
        if lease["holder"] == node:
            return _refused(f"{node} is the primary of {resource}; stop it first")
        eligible = lease["eligible"] or []
        if eligible == [node] and not force:
            return _refused(f"the copy on {node} is the only current copy of {resource} "
                            f"(generation {self.generation(resource)}); 'second' would discard it: "
                            f"start it with 'prim', or use 'second --force' to overwrite it")
        lease["eligible"] = [n for n in eligible if n != node]
        return _ok(eligible=lease["eligible"])


    # ---- farms -------------------------------------------------------------------------
    def _farm_module(self, name: Any) -> dict[str, Any] | str:
        """The farm section of module ``name``, or why there is none."""
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return f"unknown module {name!r}"
        if module["mode"] != "farm":
            return f"module {name} is a {module['mode']} module, not a farm"
        module["farm"] = farm_of(module)
        return module["farm"]

    @staticmethod
    def _set_farm_members(farm: dict[str, Any], members: dict[str, int]) -> bool:
        """Recompute the table for ``members``; True when the table changed.
        ``home``: the owner a bucket had before its owner left (bucket_allocator)."""
        table, home = allocate_with_homes(farm["table"], members, farm.get("home"))
        farm["members"] = members
        if any(home):
            farm["home"] = home
        else:
            farm.pop("home", None)
        if table == farm["table"]:
            return False
        farm["table"] = table
        farm["version"] += 1
        return True

    def farm_join(self, name: str, node: str, power: int) -> Result:
        """``node`` serves farm ``name`` with weight ``power``; it must hold its
        liveness lease, so that an expiry can take it out again."""
        farm = self._farm_module(name)
        if isinstance(farm, str):
            return _refused(farm)
        if not isinstance(node, str) or node not in self.members:
            return _refused(f"unknown member {node!r}")
        if self.members[node]["role"] != "node":
            return _refused(f"{node} is a {self.members[node]['role']}; only data nodes join farm {name}")
        if (not isinstance(power, int) or isinstance(power, bool)
                or not 1 <= power <= FARM_POWER_MAX):
            return _refused(f"invalid farm power {power!r} for {node} in farm {name} "
                            f"(an integer 1..{FARM_POWER_MAX})")
        if self.holder(liveness_resource(node)) != node:
            return _refused(f"{node} is not live (it does not hold {liveness_resource(node)}); "
                            f"it cannot join farm {name}")
        if farm["members"].get(node) == power:
            return _ok(name=name, node=node, version=farm["version"], changed=False)
        if "cluster" in self.maintenance:
            # A join moves buckets from other nodes, whose daemons may be away (their
            # kernels accept those buckets until their hold ends): nobody joins meanwhile.
            return _refused(f"the cluster is in maintenance: {node} joins farm {name} when it ends")
        changed = self._set_farm_members(farm, {**farm["members"], node: power})
        return _ok(name=name, node=node, version=farm["version"], changed=changed)

    def farm_leave(self, name: str, node: str) -> Result:
        farm = self._farm_module(name)
        if isinstance(farm, str):
            return _refused(farm)
        if not isinstance(node, str) or node not in farm["members"]:
            return _ok(name=name, node=node, version=farm["version"], changed=False)
        changed = self._set_farm_members(
            farm, {n: p for n, p in farm["members"].items() if n != node})
        return _ok(name=name, node=node, version=farm["version"], changed=changed)

    def _leave_every_farm(self, node: str) -> list[str]:
        left = []
        for name in sorted(self.modules):
            module = self.modules[name]
            if module["mode"] == "farm" and node in farm_of(module)["members"]:
                self.farm_leave(name, node)
                left.append(name)
        return left

    def _not_live(self, resource: str, node: str) -> list[str]:
        """A liveness lease just ended: its node leaves every farm."""
        if resource == liveness_resource(node):
            return self._leave_every_farm(node)
        return []

    # ---- rolling module upgrades (feature level 1) ---------------------------------------
    def stage_module(self, name: str, digest: str, mode: str, size: int, source: str) -> Result:
        """A new version of a module that runs: every node fetches it and changes to it
        at its own next stop of the module (``apply_staged``), one node at a time, the
        application served by the others meanwhile. Staging the running version again
        withdraws a staged one."""
        if self.feature_level < MAINTENANCE_LEVEL:
            return _refused(f"staging a module version needs every member at feature level "
                            f"{MAINTENANCE_LEVEL} (the cluster is at {self.feature_level})")
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return _refused(f"unknown module {name!r}")
        if mode != module["mode"]:
            return _refused(f"module {name} is a {module['mode']} module; the new version is a "
                            f"{mode!r} module: uninstall it first")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            return _refused(f"invalid package digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return _refused(f"invalid package size {size!r}")
        if source not in self.members or self.members[source]["role"] != "node":
            return _refused(f"module packages are staged from data nodes only, not {source!r}")
        if digest == module["digest"]:
            module.pop("staged", None)
            return _ok(name=name, staged=None)
        module["staged"] = {"digest": digest, "size": size, "source": source}
        return _ok(name=name, staged=digest)

    def apply_staged(self, name: str, node: str, digest: str) -> Result:
        """``node`` stopped the module and runs the staged version from now on. Once
        every node that has an intent for the module runs it, it is the module's version
        (``digest``) and nothing is staged any more."""
        if self.feature_level < MAINTENANCE_LEVEL:
            return _refused(f"apply_staged needs feature level {MAINTENANCE_LEVEL}")
        module = self.modules.get(name) if isinstance(name, str) else None
        if module is None:
            return _refused(f"unknown module {name!r}")
        staged = module.get("staged")
        if staged is None or staged["digest"] != digest:
            return _refused(f"{digest!r} is not the staged version of module {name}")
        if node not in self.members or self.members[node]["role"] != "node":
            return _refused(f"{node!r} is not a data node of this cluster")
        running = module.setdefault("running", {})
        running[node] = digest
        nodes = set(module["intent"]) | {node}
        if all(running.get(n) == digest for n in nodes):
            module.update(digest=digest, size=staged["size"], source=staged["source"])
            del module["staged"], module["running"]
            return _ok(name=name, node=node, digest=digest, promoted=True)
        return _ok(name=name, node=node, digest=digest, promoted=False)

    # ---- versions and maintenance ------------------------------------------------------
    def raise_feature_level(self, level: int) -> Result:
        """Every member runs a version that applies commands of ``level``: from now on
        they may be used. Proposed by the leader's daemon once it saw that (a member of an
        older version refuses this entry as unknown, like the commands it would enable)."""
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            return _refused(f"invalid feature level {level!r}")
        if level > FEATURE_LEVEL:
            return _refused(f"feature level {level} is newer than this version's {FEATURE_LEVEL}")
        if level <= self.feature_level:
            return _ok(level=self.feature_level, raised=False)
        self.feature_level = level
        return _ok(level=level, raised=True)

    def set_maintenance(self, module: str | None, hold_s: float | None) -> Result:
        """Maintenance on (``hold_s``: how long a holder may act without renewing, e.g.
        while its daemon restarts) or off (None), for ``module`` or the whole cluster
        (None). In maintenance no failover starts and each renewal that asks is extended
        by ``hold_s`` (``renew_many``): the Raft leader never takes a lease while its
        holder may still act, however long the daemon is away within the hold."""
        if self.feature_level < MAINTENANCE_LEVEL:
            return _refused(f"maintenance needs every member at feature level {MAINTENANCE_LEVEL} "
                            f"(the cluster is at {self.feature_level}): upgrade every member first")
        if module is not None:
            entry = self.modules.get(module) if isinstance(module, str) else None
            if entry is None:
                return _refused(f"unknown module {module!r}")
        if hold_s is not None and (not _valid_duration(hold_s) or hold_s > MAINTENANCE_HOLD_MAX_S):
            return _refused(f"invalid maintenance hold {hold_s!r} (seconds, > 0 and at most "
                            f"{MAINTENANCE_HOLD_MAX_S:.0f})")
        modules = self.maintenance.setdefault("modules", {})
        if module is None:
            if hold_s is None:
                self.maintenance.pop("cluster", None)
            else:
                self.maintenance["cluster"] = float(hold_s)
        elif hold_s is None:
            modules.pop(module, None)
        else:
            modules[module] = float(hold_s)
        if not modules:
            self.maintenance.pop("modules", None)
        return _ok(module=module, hold_s=hold_s)

    # ---- the HTTP API's users (raft.user_table) ---------------------------------------
    def set_user(self, name: str, role: str, password_hash: str | None) -> Result:
        """Add a user or change one's role and/or password hash (None: keep the hash,
        which a new user must have)."""
        error = name_error(name) or role_error(role)
        if error is None and password_hash is not None:
            error = hash_error(password_hash)
        if error is None and password_hash is None and name not in self.users:
            error = f"user {name!r} does not exist: a new user needs a password"
        if error is None and name not in self.users and len(self.users) >= MAX_USERS:
            error = f"at most {MAX_USERS} users"
        if error is not None:
            return _refused(error)
        created = name not in self.users
        old = self.users.get(name) or {}
        self.users[name] = {"role": role, "hash": password_hash or old["hash"]}
        return _ok(name=name, role=role, created=created)

    def remove_user(self, name: str) -> Result:
        if not isinstance(name, str) or name not in self.users:
            return _refused(f"no user {name!r}")
        del self.users[name]
        return _ok(name=name)
