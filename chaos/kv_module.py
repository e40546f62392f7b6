"""The demo application packaged as a mirror module: ``chaos.kvapp`` with its
log under a replicated directory, a virtual IP, start/stop scripts."""
from __future__ import annotations

import sys
from pathlib import Path

DATADIR = "/srv/kvdemo"

USERCONFIG = """<!DOCTYPE safe>
<!-- the hacluster demo: an HTTP key/value service on a replicated directory -->
<safe>
  <service mode="mirror" failover="on" scripts_timeout="30s"{service_extra}>
    <heart>{heartbeat}</heart>
    <vip garp_refresh="{garp}">
      <interface_list>
        <interface check="on" arpreroute="on">
          <real_interface>
            <virtual_addr addr="{vip}" where="one_side_alias"/>
          </real_interface>
        </interface>
      </interface_list>
    </vip>
    <rfs async="none" ack_timeout="{ack_timeout}">
      <replicated dir="{datadir}" mode="read_only"/>
    </rfs>
    <user>
      <var name="DATADIR" value="{datadir}"/>
      <var name="PORT" value="{port}"/>
      <var name="PYTHON" value="{python}"/>
    </user>{extra_sections}
  </service>
</safe>
"""

START_PRIM = r"""#!/bin/sh
# start_prim <state> <next state> <action>: start the key/value service, wait until it listens
RUN="$HACLUSTER_ROOT_PREFIX/run/$HACLUSTER_MODULE"; mkdir -p "$RUN"
DATA="$HACLUSTER_ROOT_PREFIX$DATADIR"
rm -f "$RUN/kvapp.pid"
"$PYTHON" -m chaos.kvapp --data "$DATA" --listen "0.0.0.0:$PORT" --node "$HACLUSTER_NODE" \
    --epoch "$HACLUSTER_EPOCH" --pidfile "$RUN/kvapp.pid" >>"$RUN/kvapp.log" 2>&1 </dev/null &
i=0
while [ $i -lt 400 ]; do
    [ -s "$RUN/kvapp.pid" ] && exit 0
    kill -0 $! 2>/dev/null || { echo "kvapp exited at start"; exit 1; }
    i=$((i+1)); sleep 0.01
done
kill -KILL $! 2>/dev/null   # never leave a half-started app behind
echo "kvapp not listening after 4 s"; exit 1
"""

STOP_PRIM = r"""#!/bin/sh
# stop_prim <state> <next state> <action>: stop the service (at once with action force)
RUN="$HACLUSTER_ROOT_PREFIX/run/$HACLUSTER_MODULE"
[ -s "$RUN/kvapp.pid" ] || exit 0
pid=$(cat "$RUN/kvapp.pid")
if [ "$3" = force ]; then kill -KILL "$pid" 2>/dev/null; rm -f "$RUN/kvapp.pid"; exit 0; fi
kill -TERM "$pid" 2>/dev/null || { rm -f "$RUN/kvapp.pid"; exit 0; }
i=0
while kill -0 "$pid" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "kvapp $pid did not stop"; exit 1; }
    sleep 0.01
done
rm -f "$RUN/kvapp.pid"
"""

TRANSITION = r"""#!/bin/sh
echo "transition $1 -> $2 ($3) on $HACLUSTER_NODE epoch $HACLUSTER_EPOCH"
"""


def _heartbeat(name: str, addrs: tuple[str, ...], attrs: str) -> str:
    return (f'<heartbeat name="{name}"{attrs}>' + "".join(f'<server addr="{a}"/>' for a in addrs)
            + "</heartbeat>")


def write_kv_module(folder: Path, vip: str, port: int = 8080, ack_timeout_s: float = 1.0,
                    garp_refresh_s: float = 5.0, defaultprim: str | None = None,
                    datadir: str = DATADIR, servers: tuple[str, ...] = (),
                    extra_sections: str = "", flow_servers: tuple[str, ...] = ()) -> Path:
    """The module folder (conf/userconfig.xml, bin/...), ready for ``module package``.
    ``servers``: the two nodes' addresses when the cluster has more data nodes;
    ``flow_servers``: their replication addresses, in the order of ``servers`` (a
    heartbeat ident="flow" after the default one);
    ``extra_sections``: XML put inside <service> as it is (e.g. <errd>, <check>, <failover>)."""
    if flow_servers and servers and len(flow_servers) != len(servers):
        raise ValueError(f"flow_servers {flow_servers} must match servers {servers} one to one")
    heartbeat = ""
    if servers or flow_servers:
        heartbeat = _heartbeat("default", servers, "")
    if flow_servers:
        heartbeat += _heartbeat("flow", flow_servers, ' ident="flow"')
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "bin").mkdir(exist_ok=True)
    (folder / "conf" / "userconfig.xml").write_text(USERCONFIG.format(
        vip=vip, port=port, datadir=datadir, python=sys.executable, heartbeat=heartbeat,
        ack_timeout=f"{ack_timeout_s}s", garp=f"{garp_refresh_s}s",
        service_extra=f' defaultprim="{defaultprim}"' if defaultprim else "",
        extra_sections=f"\n{extra_sections}" if extra_sections else ""))
    for name, text in (("start_prim", START_PRIM), ("stop_prim", STOP_PRIM),
                       ("transition", TRANSITION)):
        path = folder / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    return folder
