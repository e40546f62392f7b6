"""Exit statuses: the daemons' (which the systemd units name, RestartPreventExitStatus=)
and the command line's (README's table and 'hacluster help' print the same)."""

STOPPED = 0             # SIGTERM or SIGINT: the stop sequence ran
START_FAILED = 1        # configuration, or an address it must listen on (the line says which)
# This member was removed from the cluster: its configuration names a cluster that no
# longer counts it, and a restart cannot change that (sysexits' EX_CONFIG, which
# systemd prints as "status=78/CONFIG"). The units do not restart it.
REMOVED = 78

# ---- the command line (hacluster ...) ---------------------------------------------------
OK = 0
FAILED = 1              # refused or failed: the one line (or {"error"} with --json) says why
USAGE = 2               # a usage error (argparse's)
# 'state -m M' and 'waitstate': 0-4 are the module's state (STOP 0, WAIT 1, ALONE/UP 2,
# PRIM 3, SECOND 4; waitstate: 0 reached, 1 not in time), so their own failures (an
# unknown module, a refusal) take the next number instead of 1.
STATE_FAILED = 5
# No daemon answers on the control socket (not running, not this member's directory),
# or it did not answer in time (sysexits' EX_UNAVAILABLE).
UNREACHABLE = 69
# No quorum: 'cluster status' when this member sees none, or a command that could not
# be committed because Raft has no leader or majority (sysexits' EX_TEMPFAIL: try later).
NO_QUORUM = 75
INTERRUPTED = 130       # Ctrl-C (e.g. ending 'log -f')

CLI_TABLE = (
    (OK, "done ('state': STOP)"),
    (FAILED, "refused or failed, one line says why ('state': WAIT; 'waitstate': not reached in time)"),
    (USAGE, "usage error ('state': ALONE or UP)"),
    (3, "'state': PRIM"),
    (4, "'state': SECOND"),
    (STATE_FAILED, "'state' or 'waitstate' refused or failed (unknown module, ...)"),
    (UNREACHABLE, "daemon unreachable: none answers on the control socket, or not in time"),
    (NO_QUORUM, "no quorum: 'cluster status' sees none, or a command could not be committed"),
    (INTERRUPTED, "interrupted (Ctrl-C, e.g. to end 'log -f')"),
)
