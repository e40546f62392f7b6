"""The farm demo application packaged as a farm module: ``chaos.name_server`` on
every node behind one virtual IP, shared by bucket."""
from __future__ import annotations

import sys
from pathlib import Path

USERCONFIG = """<!DOCTYPE safe>
<!-- the hacluster farm demo: every node answers with its name, one VIP for all -->
<safe>
  <service mode="farm" scripts_timeout="30s">
    <farm>
      <lan name="default">
{nodes}
      </lan>
    </farm>
    <vip>
      <interface_list>
        <interface check="on" arpreroute="on">
          <real_interface>
            <virtual_addr addr="{vip}" where="alias"/>
          </real_interface>
        </interface>
      </interface_list>
      <loadbalancing_list>
        <group name="names">
{rules}
        </group>
      </loadbalancing_list>
    </vip>
    <user>
      <var name="PORTS" value="{ports}"/>
      <var name="PYTHON" value="{python}"/>
    </user>{extra_sections}
  </service>
</safe>
"""

START_BOTH = r"""#!/bin/sh
# start_both <state> <next state> <action>: start the name server, wait until it listens
RUN="$HACLUSTER_ROOT_PREFIX/run/$HACLUSTER_MODULE"; mkdir -p "$RUN"
rm -f "$RUN/names.pid"
args=""
for p in $PORTS; do args="$args --port $p"; done
"$PYTHON" -m chaos.name_server --name "$HACLUSTER_NODE" $args --pidfile "$RUN/names.pid" \
    >>"$RUN/names.log" 2>&1 </dev/null &
i=0
while [ $i -lt 400 ]; do
    [ -s "$RUN/names.pid" ] && exit 0
    kill -0 $! 2>/dev/null || { echo "name server exited at start"; exit 1; }
    i=$((i+1)); sleep 0.01
done
kill -KILL $! 2>/dev/null   # never leave a half-started server behind
echo "name server not listening after 4 s"; exit 1
"""

STOP_BOTH = r"""#!/bin/sh
# stop_both <state> <next state> <action>: stop the name server (at once with force)
RUN="$HACLUSTER_ROOT_PREFIX/run/$HACLUSTER_MODULE"
[ -s "$RUN/names.pid" ] || exit 0
pid=$(cat "$RUN/names.pid")
if [ "$3" = force ]; then kill -KILL "$pid" 2>/dev/null; rm -f "$RUN/names.pid"; exit 0; fi
kill -TERM "$pid" 2>/dev/null || { rm -f "$RUN/names.pid"; exit 0; }
i=0
while kill -0 "$pid" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "name server $pid did not stop"; exit 1; }
    sleep 0.01
done
rm -f "$RUN/names.pid"
"""


def write_name_module(folder: Path, vip: str, nodes: dict[str, tuple[str, int]],
                      rules: list[tuple[int, str, str]], extra_sections: str = "") -> Path:
    """The module folder. ``nodes``: name -> (address, power); ``rules``:
    (port, proto, filter) load-balancing rules, each port served by the app;
    ``extra_sections``: XML put inside <service> as it is (<check>, <errd>, ...)."""
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "bin").mkdir(exist_ok=True)
    node_lines = "\n".join(f'        <node name="{n}" addr="{a}" power="{p}"/>'
                           for n, (a, p) in nodes.items())
    rule_lines = "\n".join(f'          <rule port="{port}" proto="{proto}" filter="{filt}"/>'
                           for port, proto, filt in rules)
    (folder / "conf" / "userconfig.xml").write_text(USERCONFIG.format(
        nodes=node_lines, vip=vip, rules=rule_lines, python=sys.executable,
        ports=" ".join(str(port) for port, _, _ in rules), extra_sections=extra_sections))
    for name, text in (("start_both", START_BOTH), ("stop_both", STOP_BOTH)):
        path = folder / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    return folder
