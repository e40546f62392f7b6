"""The daemons' exit statuses, which the systemd units name (RestartPreventExitStatus=)."""

STOPPED = 0             # SIGTERM or SIGINT: the stop sequence ran
START_FAILED = 1        # configuration, or an address it must listen on (the line says which)
# This member was removed from the cluster: its configuration names a cluster that no
# longer counts it, and a restart cannot change that (sysexits' EX_CONFIG, which
# systemd prints as "status=78/CONFIG"). The units do not restart it.
REMOVED = 78
