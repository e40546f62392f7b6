# Shared by start_prim and stop_prim (sourced, not run). The <user> variables are
# in the environment; HACLUSTER_ROOT_PREFIX is empty outside the test lab.
: "${PG_BIN:=/usr/lib/postgresql/15/bin}" "${PG_OS_USER:=postgres}" "${PG_PORT:=5432}"
: "${PG_LISTEN:=*}" "${PG_INIT:=on}" "${PG_CLIENTS:=}" "${PG_CLIENT_AUTH:=scram-sha-256}"
: "${PG_OPTIONS:=}" "${PG_START_TIMEOUT:=240}" "${PG_STOP_TIMEOUT:=60}"
[ -n "${PG_DIR:-}" ] || { echo "PG_DIR (the replicated directory) is not set"; exit 1; }
DATA="${HACLUSTER_ROOT_PREFIX:-}$PG_DIR/data"             # PostgreSQL's data directory
RUN="${HACLUSTER_ROOT_PREFIX:-}/run/hacluster-$HACLUSTER_MODULE"   # socket, server log
PIDFILE="$DATA/postmaster.pid"

as_pg() { runuser -u "$PG_OS_USER" -- "$@"; }

# The PID in postmaster.pid, if it is a running postgres whose working directory is
# this data directory (a postmaster chdirs there); else nothing. A dead primary's
# PID can be gone, a zombie, or reused by something else: none of those is ours.
running_postmaster() {
    [ -f "$PIDFILE" ] || return 1
    pid=$(head -n 1 "$PIDFILE" 2>/dev/null)
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
    if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" != "$(readlink -f "$DATA")" ]; then
        # Its directory may be on a mount stopped under it (a lost lease stops the mount
        # first, then stop_prim): the path then reads relative to that detached mount
        # ("/data"). It is still ours if its command line names this data directory.
        [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -xF -- -D | sed -n 2p)" \
            = "$DATA" ] || return 1
    fi
    echo "$pid"
}
