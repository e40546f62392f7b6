"""``GET /metrics``: the node's snapshot in the Prometheus text format, pure.

Every family is declared in ``FAMILIES`` (name, type, help), so that the shipped alert
rules can be checked against what is exported (tests/unit/test_http_alerts.py). An
enumeration (a module's state, its role, Raft's role, a checker resource's value) is
exported one-hot, every possible value with 0 or 1, so that a rule or a graph never
has to guess a value that is absent.
"""
from __future__ import annotations

from .exposition import Exposition
from .readiness import ROLES, role_of, serves
from .snapshot import NodeSnapshot

# The states of each kind of module (hacluster.mirror.machine.State,
# hacluster.farm.machine.State; a unit test keeps them in step).
STATES = {"mirror": ("STOP", "WAIT", "ALONE", "PRIM", "SECOND"), "farm": ("STOP", "WAIT", "UP")}
RAFT_ROLES = ("leader", "follower", "candidate")
RESOURCE_VALUES = ("init", "up", "down")

FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("hacluster_build_info", "gauge", "Always 1: this daemon's version, cluster, member and kind."),
    ("hacluster_daemon_start_time_seconds", "gauge", "When this daemon started (Unix time)."),
    ("hacluster_daemon_uptime_seconds", "gauge", "Seconds since this daemon started."),
    ("hacluster_raft_term", "gauge", "Raft term as this member sees it."),
    ("hacluster_raft_commit_index", "gauge", "Raft commit index as this member sees it."),
    ("hacluster_raft_last_applied", "gauge", "Index of the last Raft entry applied here."),
    ("hacluster_raft_role", "gauge", "1 for this member's Raft role (local view)."),
    ("hacluster_raft_has_leader", "gauge", "1 when this member knows a Raft leader."),
    ("hacluster_raft_leader", "gauge", "1, labelled with the Raft leader this member knows."),
    ("hacluster_raft_has_quorum", "gauge",
     "1 when this member is connected to a majority (pysyncobj's view)."),
    ("hacluster_raft_live", "gauge", "1 while this member holds its liveness lease."),
    ("hacluster_raft_member_live", "gauge",
     "1 when the member holds its liveness lease in the committed state."),
    ("hacluster_raft_member_connected", "gauge",
     "1 when this member's Raft connection to the member is up."),
    ("hacluster_raft_lease_renewal_seconds", "histogram",
     "Time from proposing a batch of this node's lease renewals to its commit."),
    ("hacluster_raft_lease_renewals_unconfirmed_total", "counter",
     "Batches of lease renewals that got no committed answer within the renewal interval."),
    ("hacluster_module_state", "gauge", "1 for the module's state on this node."),
    ("hacluster_module_ready", "gauge", "1 when the module's state is Ready (no transition)."),
    ("hacluster_module_role", "gauge",
     "1 for this node's role in the module: primary, secondary, farm_member or none."),
    ("hacluster_module_serving", "gauge",
     "1 when this node serves the module (what GET /primary/<module> answers 200 for)."),
    ("hacluster_module_epoch", "gauge", "The module's committed primary epoch (mirror)."),
    ("hacluster_module_in_sync", "gauge",
     "1 when the node's copy is in the module's committed in-sync set (mirror)."),
    ("hacluster_module_failovers_total", "counter",
     ("Changes of the module's primary to another node (failovers, swaps) seen committed "
      "since this daemon started.")),
    ("hacluster_module_promotions_total", "counter",
     "Times this node became the module's primary since this daemon started."),
    ("hacluster_replication_connected", "gauge",
     "1 when the mount's sender is connected to the secondary's receiver (primary)."),
    ("hacluster_replication_in_flight_ops", "gauge",
     "Operations sent to the secondary and not yet acknowledged: the replication queue."),
    ("hacluster_replication_sent_ops_total", "counter",
     "Operations sent to the secondary by the current mount process."),
    ("hacluster_replication_sent_bytes_total", "counter",
     "Data bytes sent to the secondary by the current mount process."),
    ("hacluster_replication_report_age_seconds", "gauge",
     "Seconds since the mount process last reported its link (every second)."),
    ("hacluster_reintegration_active", "gauge",
     "1 while the primary resynchronises the secondary's copy."),
    ("hacluster_reintegration_bytes_done", "gauge", "Bytes reintegrated so far."),
    ("hacluster_reintegration_bytes_total", "gauge",
     "Bytes to reintegrate as known so far (grows as passes start)."),
    ("hacluster_reintegration_files_done", "gauge", "Files reintegrated so far."),
    ("hacluster_reintegration_files_total", "gauge", "Files to reintegrate as known so far."),
    ("hacluster_farm_buckets", "gauge", "Traffic buckets (of 256) this node owns (farm)."),
    ("hacluster_farm_table_version", "gauge", "Version of the committed bucket table (farm)."),
    ("hacluster_checker_resource", "gauge",
     "1 for the value (init, up, down) of each checker resource of the module."),
)
NAMES = frozenset(name for name, _, _ in FAMILIES)


def render(snap: NodeSnapshot) -> str:
    out = Exposition()
    for name, kind, help_text in FAMILIES:
        out.family(name, kind, help_text)
    s = out.sample
    s("hacluster_build_info", 1, {"version": snap.version, "cluster": snap.cluster,
                                  "member": snap.node, "kind": snap.kind})
    s("hacluster_daemon_start_time_seconds", snap.started_at)
    s("hacluster_daemon_uptime_seconds", snap.uptime_s)
    raft = snap.raft
    if raft is not None:
        s("hacluster_raft_term", raft.term)
        s("hacluster_raft_commit_index", raft.commit_index)
        s("hacluster_raft_last_applied", raft.last_applied)
        for role in RAFT_ROLES:
            s("hacluster_raft_role", int(raft.role == role), {"role": role})
        s("hacluster_raft_has_leader", int(raft.leader is not None))
        if raft.leader is not None:
            s("hacluster_raft_leader", 1, {"leader": raft.leader})
        s("hacluster_raft_has_quorum", int(raft.has_quorum))
        s("hacluster_raft_live", int(raft.live))
        for member in raft.members:
            s("hacluster_raft_member_live", int(member.live),
              {"member": member.name, "role": member.role})
            s("hacluster_raft_member_connected", int(member.connected), {"member": member.name})
        h = raft.renewals
        out.histogram("hacluster_raft_lease_renewal_seconds", h.bounds, h.cumulative, h.count,
                      h.total)
        s("hacluster_raft_lease_renewals_unconfirmed_total", raft.renewals_unconfirmed)
    for mod in snap.modules:
        m = {"module": mod.name}
        for state in STATES.get(mod.mode, (mod.state,)):
            s("hacluster_module_state", int(mod.state == state), {**m, "state": state})
        s("hacluster_module_ready", int(mod.ready), m)
        role = role_of(mod)
        for r in ROLES:
            s("hacluster_module_role", int(role == r), {**m, "role": r})
        s("hacluster_module_serving", int(serves(mod)[0]), m)
        for resource, value in sorted(mod.resources.items()):
            for v in RESOURCE_VALUES:
                s("hacluster_checker_resource", int(value == v), {**m, "resource": resource,
                                                                  "value": v})
        if mod.mode == "farm":
            s("hacluster_farm_buckets", mod.buckets, m)
            s("hacluster_farm_table_version", mod.table_version, m)
            continue
        s("hacluster_module_epoch", mod.epoch, m)
        for node in mod.nodes:
            s("hacluster_module_in_sync", int(node in mod.in_sync), {**m, "node": node})
        s("hacluster_module_failovers_total", mod.failovers, m)
        s("hacluster_module_promotions_total", mod.promotions, m)
        for link in mod.links:
            lk = {**m, "peer": link.peer}
            s("hacluster_replication_connected", int(link.sender_state == "connected"), lk)
            s("hacluster_replication_in_flight_ops", link.in_flight, lk)
            s("hacluster_replication_sent_ops_total", link.ops_sent, lk)
            s("hacluster_replication_sent_bytes_total", link.bytes_sent, lk)
            s("hacluster_replication_report_age_seconds", round(link.age_s, 3), lk)
        if role == "primary":
            ri = mod.reintegration
            s("hacluster_reintegration_active", int(ri is not None), m)
            if ri is not None:
                s("hacluster_reintegration_bytes_done", ri.bytes_done, m)
                s("hacluster_reintegration_bytes_total", ri.bytes_total, m)
                s("hacluster_reintegration_files_done", ri.files_done, m)
                s("hacluster_reintegration_files_total", ri.files_total, m)
    return out.render()
