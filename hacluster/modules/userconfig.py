"""Parse a SafeKit-style ``userconfig.xml`` into a frozen :class:`ModuleConfig`.

A SafeKit user's existing file is accepted as it is (``<!DOCTYPE safe>``, comments,
unitless numbers in SafeKit's historical units). What we do not implement yet is
reported as a warning naming file and line; invalid values are errors naming file,
line and attribute: ``"<file>:<line>: <section>@<attr>: <problem>"``.

Checkers accepted in ``<check>`` (resource ``kind.ident``; ``when`` pre|prim|second|both,
default prim for mirror, both for farm; ``action`` restart|stopstart|stop|wait|swap|none
makes an implicit rule ``kind_ident: if (kind.ident == down) then action();``):
``<tcp ident when action><to addr port interval timeout/></tcp>`` (default restart),
``<ping ident when action><to addr interval timeout/>...</ping>`` (wait),
``<intf ident when action><to name interval/></intf>`` (wait),
``<ip ident when=prim|both action><to addr interval timeout/></ip>`` (stopstart),
``<custom ident when exec arg action/>`` (restart), ``<module name action><to addr port/></module>``
(wait; no <to> = a local module), ``<splitbrain ident exec="ping" arg="ADDR ..."/>`` (none:
reported only). Intervals default to 10 s, timeouts to 5 s (unitless = seconds).
``<failover>`` holds rules in checkers.failover_rules' grammar; a rule naming an implicit
rule's label replaces it. In ``<heart><heartbeat name ident><server addr/>...</heartbeat>``,
the servers of the first heartbeat name a mirror's nodes; the one heartbeat marked
``ident="flow"`` carries the replication, its servers being the nodes' replication
addresses in the same order (how they map to nodes: hacluster.modules.nodes).
``<farm><lan><node name addr power/></lan></farm>`` and
``<vip><loadbalancing_list><group><rule port proto filter/></group></loadbalancing_list>``
are for farm modules only.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

# defusedxml, not the standard library parser: a .safe comes from the network (peers,
# the console), and stdlib expat happily expands "billion laughs" entities. defusedxml
# refuses entity declarations and external entities outright, which a userconfig.xml
# never needs; a bare <!DOCTYPE safe> (no internal subset) stays accepted.
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from checkers.failover_rules import WILDCARD, Compare, FailoverRulesError, Rule, parse_rules, resources_of
from checkers.resource import valid_ident

MAX_USERCONFIG_BYTES = 1 << 20  # a real one is a few KiB; refuse before parsing
# ~31 years: longer is a typo (or inf), and every wait primitive takes it (threading's
# waits refuse timeouts past ~9.2e9 s with an OverflowError).
MAX_TIME_S = 1e9
MAX_BANDWIDTH_BPS = 1 << 50
_MAX_SHOWN = 200  # characters of a problem in a message (values are quoted in it)

_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
# (multiply, divide) so that "700" ms gives exactly 0.7, not 0.7000000000000001
_TIME_UNIT = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_BANDWIDTH = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMG]?)(i?)B?\s*", re.IGNORECASE)
_BANDWIDTH_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")

MODES = ("mirror", "farm")
ASYNC_MODES = ("none", "second", "async")
DURABILITIES = ("barrier", "write")
ERRD_ACTIONS = ("restart", "stopstart", "stop", "none")
ERRD_CLASSES = ("prim", "second", "both")
VIP_WHERE = {"mirror": "one_side_alias", "farm": "alias"}
NOT_IMPLEMENTED_SECTIONS = ("lan",)
CHECK_ACTIONS = ("restart", "stopstart", "stop", "wait", "swap", "none")
CHECK_KINDS = ("tcp", "ping", "intf", "ip", "custom", "module", "splitbrain")
# the action of a checker without action= (SafeKit's static failover rules where known:
# ip -> stopstart, ping -> wait); splitbrain only reports (Raft quorum decides)
CHECK_DEFAULT_ACTION = {"tcp": "restart", "ping": "wait", "intf": "wait", "ip": "stopstart",
                        "custom": "restart", "module": "wait", "splitbrain": "none"}
LB_PROTOS = ("tcp", "udp")
LB_FILTERS = ("on_addr", "on_port")
SECTIONS = ("heart", "vip", "rfs", "user", "errd", "check", "failover", "farm")


class UserConfigError(ValueError):
    """An unusable userconfig.xml; the message is ``file:line: section@attr: problem``
    (the first error). ``errors``: every error found, in line order (one per section,
    checker or service attribute at most: reading a section stops at its first);
    ``warnings``: the warnings found meanwhile."""

    def __init__(self, message: str, errors: tuple[str, ...] | None = None,
                 warnings: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else (message,)
        self.warnings = warnings


_FAILED = object()      # what _Reader.attempt returns for a part that had an error


def _hint(name: str, known: tuple[str, ...] | list[str]) -> str:
    """' (did you mean X?)' for a near miss (intervall, checks), else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line_in(message: str) -> int:
    match = re.search(r":(\d+): ", message)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class HeartbeatNet:
    name: str
    servers: tuple[str, ...]
    flow: bool = False      # ident="flow": this network carries the replication flow


@dataclass(frozen=True)
class Heart:
    pulse_s: float = 0.7
    timeout_s: float = 30.0  # SafeKit's failure timeout; informational (Raft decides)
    nets: tuple[HeartbeatNet, ...] = ()

    @property
    def flow(self) -> HeartbeatNet | None:
        """The heartbeat marked ``ident="flow"`` (at most one), if any."""
        return next((n for n in self.nets if n.flow), None)

    @property
    def node_servers(self) -> tuple[str, ...]:
        """The servers of the first heartbeat: they name the module's nodes, and every
        other heartbeat lists its addresses in the same order."""
        return self.nets[0].servers if self.nets else ()


@dataclass(frozen=True)
class Vip:
    addr: str
    prefixlen: int | None
    interface: str | None
    arpreroute: bool
    garp_refresh_s: float
    where: str


@dataclass(frozen=True)
class Rfs:
    async_mode: str
    ack_timeout_s: float
    reintegration_bandwidth_Bps: int | None
    dirs: tuple[str, ...]
    # <replicated mountpoint="yes">: the directory must be a mounted file system's
    # root; the bare mount point underneath is never used (DESIGN rule 6).
    mountpoints: tuple[bool, ...] = ()
    # <rfs durability>: "barrier" (changes stream; fsync & co. wait until both copies
    # have everything before them) or "write" (every change waits; async applies).
    durability: str = "barrier"


@dataclass(frozen=True)
class ErrdProc:
    name: str
    name_is_regex: bool
    regex_args: str | None
    atleast: int
    atmax: int | None
    action: str
    klass: str
    resource: str = ""  # errd.<name>, made a valid resource name


@dataclass(frozen=True)
class CheckConfig:
    """One checker of ``<check>``; ``kind`` is the resource class."""
    kind: str
    ident: str
    when: str
    action: str                     # of its implicit rule; "none" = no rule
    interval_s: float = 10.0
    timeout_s: float = 5.0
    addrs: tuple[str, ...] = ()     # tcp/ip: one; ping/splitbrain: one or more; module: peer or ()
    port: int | None = None         # tcp; module on a peer
    interface: str | None = None    # intf
    exec: str | None = None         # custom
    arg: str | None = None          # custom
    send: str | None = None         # tcp: sent after connecting ...
    expect: str | None = None       # ... and the answer must start with this

    @property
    def resource(self) -> str:
        return f"{self.kind}.{self.ident}"


@dataclass(frozen=True)
class FarmNode:
    name: str
    addr: str
    power: int = 1


@dataclass(frozen=True)
class LbRule:
    port: int | None  # None: every port
    proto: str
    filter: str


@dataclass(frozen=True)
class ModuleConfig:
    name: str
    mode: str
    failover: bool = True
    defaultprim: str | None = None
    maxloop: int = 3
    loop_interval_s: float = 24 * 3600.0
    scripts_timeout_s: float = 120.0
    heart: Heart = field(default_factory=Heart)
    vips: tuple[Vip, ...] = ()
    rfs: Rfs | None = None
    user_vars: dict[str, str] = field(default_factory=dict)
    errd: tuple[ErrdProc, ...] = ()
    errd_poll_s: float = 10.0
    checks: tuple[CheckConfig, ...] = ()
    # every rule the module evaluates: one per errd proc / checker with an action, then
    # the <failover> rules (a <failover> rule with the same label replaces the implicit one)
    failover_rules: tuple[Rule, ...] = ()
    farm_nodes: tuple[FarmNode, ...] = ()
    lb_rules: tuple[LbRule, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[HeartbeatNet, ...]:
        return self.heart.nets


class _LineTreeBuilder(TreeBuilder):
    """A TreeBuilder that remembers the source line of every element's start tag."""

    def __init__(self) -> None:
        super().__init__()
        self.line_of: dict[int, int] = {}
        self.current_line: Callable[[], int] = lambda: 0

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        element = super().start(tag, attrs)
        self.line_of[id(element)] = self.current_line()
        return element


class _Reader:
    """Walks the parsed tree; holds the source name, line table and warnings."""

    def __init__(self, source: str, line_of: dict[int, int]) -> None:
        self.source = source
        self.line_of = line_of
        self.warnings: list[tuple[int, str]] = []
        self.errors: list[str] = []

    def attempt(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)``, or _FAILED with its error kept: one error in a part does
        not hide the errors of the others (``hacluster module check`` lists them all)."""
        try:
            return read(*args)
        except UserConfigError as e:
            self.errors.extend(e.errors)
            return _FAILED

    def sorted_warnings(self) -> tuple[str, ...]:
        return tuple(w for _, w in sorted(self.warnings, key=lambda lw: lw[0]))

    def where(self, element: Element) -> str:
        return f"{self.source}:{self.line_of.get(id(element), 0)}"

    def error(self, element: Element, what: str, problem: str) -> UserConfigError:
        return UserConfigError(f"{self.where(element)}: {what}: {_short(problem)}")

    def warn(self, element: Element, what: str, problem: str) -> None:
        self.warnings.append((self.line_of.get(id(element), 0), f"{self.where(element)}: {what}: {problem}"))

    def attrs(self, element: Element, section: str, known: tuple[str, ...],
              ignored: tuple[str, ...] = ()) -> dict[str, str]:
        """The element's attributes; unknown ones become warnings, ``ignored`` ones too."""
        for attr in element.attrib:
            if attr in ignored:
                self.warn(element, f"{section}@{attr}", "not implemented yet, ignored")
            elif attr not in known:
                self.warn(element, f"{section}@{attr}", "unknown attribute, ignored" + _hint(attr, known))
        return {k: v for k, v in element.attrib.items() if k in known}

    def children(self, element: Element, section: str, known: tuple[str, ...]) -> list[Element]:
        result = []
        for child in element:
            if child.tag in known:
                result.append(child)
            else:
                self.warn(child, f"{section}/{child.tag}", "unknown element, ignored" + _hint(child.tag, known))
        return result

    # --- value parsers: each names element, attribute and the bad value ---

    def time_s(self, element: Element, what: str, value: str, unitless: str) -> float:
        match = _TIME.fullmatch(value)
        if not match:
            raise self.error(element, what, f"{value!r} is not a time (e.g. 700ms, 3s, 5m, 24h)")
        multiply, divide = _TIME_UNIT[match.group(2) or unitless]
        seconds = float(match.group(1)) * multiply / divide
        if seconds > MAX_TIME_S:
            raise self.error(element, what, f"{value!r} is over the maximum of {MAX_TIME_S:.0f} s")
        return seconds

    def integer(self, element: Element, what: str, value: str, minimum: int) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise self.error(element, what, f"{value!r} is not an integer") from None
        if number < minimum:
            raise self.error(element, what, f"{number} is below the minimum {minimum}")
        return number

    def on_off(self, element: Element, what: str, value: str) -> bool:
        if value not in ("on", "off"):
            raise self.error(element, what, f"{value!r} must be 'on' or 'off'")
        return value == "on"

    def choice(self, element: Element, what: str, value: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.error(element, what, f"{value!r} must be one of {', '.join(allowed)}")
        return value

    def regex(self, element: Element, what: str, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise self.error(element, what, f"{value!r} is not a valid regular expression ({exc})") from None
        return value


def parse_userconfig(data: bytes, source: str, name: str) -> ModuleConfig:
    """Parse ``data`` (the bytes of a userconfig.xml) for module ``name``.

    ``source`` names the file in messages. Raises UserConfigError.
    """
    if len(data) > MAX_USERCONFIG_BYTES:
        raise UserConfigError(f"{source}:0: file: {len(data)} bytes is over the {MAX_USERCONFIG_BYTES} byte limit")
    builder = _LineTreeBuilder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    builder.current_line = lambda: parser.parser.CurrentLineNumber
    try:
        parser.feed(data)
        root = parser.close()
    except ParseError as exc:
        line = exc.position[0] if exc.position else 0
        raise UserConfigError(f"{source}:{line}: xml: {_parse_problem(exc)}") from None
    except DefusedXmlException as exc:
        line = parser.parser.CurrentLineNumber
        raise UserConfigError(f"{source}:{line}: xml: refused ({type(exc).__name__}: "
                              f"entity declarations and external entities are not allowed)") from None
    except (LookupError, ValueError) as exc:
        # expat asks Python's codecs for an encoding it lacks (LookupError), and refuses
        # multi-byte ones such as UTF-32 (ValueError).
        raise UserConfigError(f"{source}:1: xml: {_short(str(exc))} (use UTF-8)") from None
    reader = _Reader(source, builder.line_of)
    try:
        return _read_module(reader, root, name)
    except UserConfigError as e:
        e.warnings = e.warnings or reader.sorted_warnings()
        raise


def load_userconfig(path: str | Path, name: str | None = None) -> ModuleConfig:
    """Read and parse a userconfig.xml file; ``name`` defaults to the module folder's name."""
    path = Path(path)
    if name is None:
        name = path.resolve().parent.parent.name
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_USERCONFIG_BYTES + 1)
    except OSError as exc:
        raise UserConfigError(f"{path}:0: file: cannot read ({exc.strerror})") from None
    return parse_userconfig(data, str(path), name)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _parse_problem(exc: ParseError) -> str:
    # ParseError text ends with ": line N, column M"; the line is already in front.
    return re.sub(r":? ?line \d+, column \d+$", "", str(exc)) or "not well-formed"


def _read_module(r: _Reader, root: Element, name: str) -> ModuleConfig:
    if root.tag == "safe":
        services = [c for c in root if c.tag == "service"]
        for child in root:
            if child.tag != "service":
                r.warn(child, f"safe/{child.tag}", "unknown element, ignored" + _hint(child.tag, ("service",)))
        if len(services) != 1:
            raise r.error(root, "safe", f"expected exactly one <service>, found {len(services)}")
        service = services[0]
    elif root.tag == "service":
        service = root
    else:
        raise r.error(root, root.tag, "root element must be <safe> or <service>")

    a = r.attrs(service, "service",
                ("mode", "failover", "defaultprim", "maxloop", "loop_interval", "scripts_timeout"))
    if "mode" not in a:
        raise r.error(service, "service@mode", "required (mirror or farm)")
    mode = r.choice(service, "service@mode", a["mode"], MODES)
    kw: dict[str, Any] = {"name": name, "mode": mode}     # ModuleConfig's fields, as read

    def keep(key: str, value: Any) -> None:
        if value is not _FAILED:
            kw[key] = value
    if "failover" in a:
        keep("failover", r.attempt(r.on_off, service, "service@failover", a["failover"]))
    if "defaultprim" in a:
        keep("defaultprim", r.attempt(_defaultprim, r, service, a["defaultprim"], mode))
    if "maxloop" in a:
        keep("maxloop", r.attempt(r.integer, service, "service@maxloop", a["maxloop"], 0))
    if "loop_interval" in a:
        keep("loop_interval_s", r.attempt(r.time_s, service, "service@loop_interval", a["loop_interval"], "h"))
    if "scripts_timeout" in a:
        keep("scripts_timeout_s", r.attempt(
            lambda: _positive(r, service, "service@scripts_timeout",
                              r.time_s(service, "service@scripts_timeout", a["scripts_timeout"], "s"))))

    sections: dict[str, Element] = {}
    for child in service:
        if child.tag in sections:
            r.errors.append(str(r.error(child, child.tag, "duplicate section (first at line "
                                                          f"{r.line_of.get(id(sections[child.tag]))})")))
            continue
        sections[child.tag] = child
        if child.tag in NOT_IMPLEMENTED_SECTIONS:
            r.warn(child, child.tag, "section not implemented yet, ignored")
        elif child.tag not in SECTIONS:
            r.warn(child, child.tag, "unknown section, ignored" + _hint(child.tag, SECTIONS))

    def fail(element: Element, what: str, problem: str) -> None:
        r.errors.append(str(r.error(element, what, problem)))
    if "heart" in sections:
        keep("heart", r.attempt(_read_heart, r, sections["heart"], mode))
    if "vip" in sections:
        keep("vips", r.attempt(_read_vip, r, sections["vip"], mode))
    if "rfs" in sections:
        if mode == "farm":
            fail(sections["rfs"], "rfs", "a farm module has no replicated directories; remove <rfs>")
        else:
            keep("rfs", r.attempt(_read_rfs, r, sections["rfs"]))
    elif mode == "mirror":
        fail(service, "service/rfs", "a mirror module needs <rfs> with at least one <replicated dir=...>")
    if "user" in sections:
        keep("user_vars", r.attempt(_read_user, r, sections["user"]))
    errors_before = len(r.errors)
    if "errd" in sections:
        errd = r.attempt(_read_errd, r, sections["errd"])
        if errd is not _FAILED:
            kw["errd"], kw["errd_poll_s"] = errd
    if "check" in sections:
        keep("checks", r.attempt(_read_check, r, sections["check"], mode))
    checkers_failed = len(r.errors) > errors_before
    if "farm" in sections:
        if mode != "farm":
            fail(sections["farm"], "farm", "only a farm module has <farm>; remove it or use mode=\"farm\"")
        else:
            keep("farm_nodes", r.attempt(_read_farm, r, sections["farm"]))
    if "vip" in sections:
        keep("lb_rules", r.attempt(_read_lb_rules, r, sections["vip"], mode))
    # The rules name the resources of <errd> and <check>: read them only when those
    # were read whole (else every rule naming a resource of theirs would be an error).
    if not checkers_failed:
        keep("failover_rules", r.attempt(_read_rules, r, sections.get("failover"), kw.get("errd", ()),
                                         kw.get("checks", ())))
    if r.errors:
        errors = tuple(sorted(r.errors, key=_line_in))
        raise UserConfigError(errors[0], errors, r.sorted_warnings())
    return ModuleConfig(**kw, warnings=r.sorted_warnings())


def _positive(r: _Reader, element: Element, what: str, value: float) -> float:
    if value <= 0:
        raise r.error(element, what, "must be greater than zero")
    return value


def _defaultprim(r: _Reader, service: Element, value: str, mode: str) -> str:
    if mode == "farm":
        r.warn(service, "service@defaultprim", "has no meaning for a farm module, ignored")
    if value in ("alone", "lastprim") or _NODE_NAME.fullmatch(value):
        return value
    raise r.error(service, "service@defaultprim", f"{value!r} must be alone, lastprim or a node name")


def _read_heart(r: _Reader, heart: Element, mode: str) -> Heart:
    a = r.attrs(heart, "heart", ("pulse", "timeout"))
    pulse = Heart.pulse_s
    timeout = Heart.timeout_s
    if "pulse" in a:
        pulse = _positive(r, heart, "heart@pulse", r.time_s(heart, "heart@pulse", a["pulse"], "ms"))
    if "timeout" in a:
        timeout = _positive(r, heart, "heart@timeout", r.time_s(heart, "heart@timeout", a["timeout"], "ms"))
    for attr in ("pulse", "timeout"):
        if attr in a:
            r.warn(heart, f"heart@{attr}", "not used: failure detection is the cluster's Raft "
                   "timers for every module (append_entries_period_s, election_timeout_*, "
                   "lease_s in cluster.json's raft), and its heartbeat networks are the "
                   "members' links (README \"Several heartbeat networks\")")
    nets: list[tuple[HeartbeatNet, Element]] = []
    for hb in r.children(heart, "heart", ("heartbeat",)):
        ha = r.attrs(hb, "heartbeat", ("name", "ident"))
        net_name = ha.get("name", "default")
        if any(n.name == net_name for n, _ in nets):
            raise r.error(hb, "heartbeat@name", f"duplicate heartbeat network {net_name!r}")
        flow = _flow_ident(r, hb, ha.get("ident"), [(n, el) for n, el in nets if n.flow])
        servers: list[str] = []
        for server in r.children(hb, "heartbeat", ("server",)):
            sa = r.attrs(server, "server", ("addr",))
            addr = sa.get("addr", "")
            if not _is_ip(addr) and not _HOST_NAME.fullmatch(addr):
                raise r.error(server, "server@addr", f"{addr!r} is not an IP address or host name")
            if flow and addr in servers:
                raise r.error(server, "server@addr", f"{addr} is listed twice in the flow heartbeat "
                                                     f"{net_name!r}: one replication address per node")
            servers.append(addr)
        nets.append((HeartbeatNet(net_name, tuple(servers), flow), hb))
    _check_flow(r, nets, mode)
    return Heart(pulse_s=pulse, timeout_s=timeout, nets=tuple(n for n, _ in nets))


def _flow_ident(r: _Reader, hb: Element, ident: str | None,
                earlier_flows: list[tuple[HeartbeatNet, Element]]) -> bool:
    if ident is None:
        return False
    if ident != "flow":
        raise r.error(hb, "heartbeat@ident", f"{ident!r}: the only ident is \"flow\" "
                                             "(this heartbeat's network carries the replication)")
    if earlier_flows:
        first, el = earlier_flows[0]
        raise r.error(hb, "heartbeat@ident", f"a second flow heartbeat: {first.name!r} (line "
                                             f"{r.line_of.get(id(el))}) already carries the replication")
    return True


def _check_flow(r: _Reader, nets: list[tuple[HeartbeatNet, Element]], mode: str) -> None:
    """A flow heartbeat after the first lists one replication address per node, in the
    order of the first heartbeat's servers (or, when that lists none, of the module's
    two nodes by name): see hacluster.modules.nodes.replication_hosts."""
    flow = next(((n, el) for n, el in nets if n.flow), None)
    if flow is None:
        return
    net, el = flow
    if mode == "farm":
        r.warn(el, "heartbeat@ident", "a farm module replicates nothing: the flow mark is ignored")
        return
    if net is nets[0][0]:
        return      # the first heartbeat names the nodes and so gives their addresses too
    first, first_el = nets[0]
    want = len(first.servers) or 2
    if len(net.servers) != want:
        against = (f"the first heartbeat {first.name!r} (line {r.line_of.get(id(first_el))}) lists "
                   f"{want}" if first.servers else "a mirror module has 2 nodes")
        raise r.error(el, "heartbeat/server",
                      f"the flow heartbeat {net.name!r} lists {_count(len(net.servers), 'server')} "
                      f"but {against}: give one replication address per node, in the same order")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _read_vip(r: _Reader, vip: Element, mode: str) -> tuple[Vip, ...]:
    a = r.attrs(vip, "vip", ("garp_refresh",))
    garp_refresh = 10.0
    if "garp_refresh" in a:
        garp_refresh = r.time_s(vip, "vip@garp_refresh", a["garp_refresh"], "s")
    vips: list[Vip] = []
    for ilist in r.children(vip, "vip", ("interface_list", "loadbalancing_list")):
        if ilist.tag != "interface_list":
            continue  # read by _read_lb_rules
        r.attrs(ilist, "interface_list", ())
        for iface in r.children(ilist, "interface_list", ("interface",)):
            ia = r.attrs(iface, "interface", ("name", "arpreroute"), ignored=("check",))
            arpreroute = r.on_off(iface, "interface@arpreroute", ia["arpreroute"]) if "arpreroute" in ia else False
            for holder in r.children(iface, "interface", ("real_interface", "virtual_interface")):
                r.attrs(holder, holder.tag, (), ignored=("type",))
                for va in r.children(holder, holder.tag, ("virtual_addr",)):
                    vips.append(_read_virtual_addr(r, va, mode, ia.get("name"), arpreroute, garp_refresh))
    seen: set[str] = set()
    for v in vips:
        if v.addr in seen:
            raise r.error(vip, "vip", f"address {v.addr} is listed twice")
        seen.add(v.addr)
    return tuple(vips)


def _read_virtual_addr(r: _Reader, va: Element, mode: str, interface: str | None,
                       arpreroute: bool, garp_refresh: float) -> Vip:
    a = r.attrs(va, "virtual_addr", ("addr", "where"))
    text = a.get("addr", "")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise r.error(va, "virtual_addr@addr", f"{text!r} is not an IP address (optionally /prefix)") from None
    prefixlen = iface.network.prefixlen if "/" in text else None
    where = a.get("where", VIP_WHERE[mode])
    allowed = tuple(VIP_WHERE.values())
    r.choice(va, "virtual_addr@where", where, allowed)
    if where != VIP_WHERE[mode]:
        raise r.error(va, "virtual_addr@where", f"{where!r} is not for a {mode} module: use {VIP_WHERE[mode]!r}")
    return Vip(addr=str(iface.ip), prefixlen=prefixlen, interface=interface,
               arpreroute=arpreroute, garp_refresh_s=garp_refresh, where=where)


def _read_rfs(r: _Reader, rfs: Element) -> Rfs:
    a = r.attrs(rfs, "rfs", ("async", "ack_timeout", "reintegration_bandwidth", "durability"),
                ignored=("acl", "nbrei", "locktimeout", "sendtimeout", "reitimeout", "ruzone_blocksize",
                         "namespacepolicy", "checktime", "nfsbox_options", "allocthreshold"))
    async_mode = r.choice(rfs, "rfs@async", a.get("async", "none"), ASYNC_MODES)
    durability = r.choice(rfs, "rfs@durability", a.get("durability", "barrier"), DURABILITIES)
    if durability == "barrier" and async_mode != "none":
        r.warn(rfs, "rfs@async", 'applies to durability="write" only; with durability="barrier" '
                                 "changes stream and fsync waits for the secondary")
    ack_timeout = 5.0
    if "ack_timeout" in a:
        ack_timeout = _positive(r, rfs, "rfs@ack_timeout", r.time_s(rfs, "rfs@ack_timeout", a["ack_timeout"], "s"))
    bandwidth = None
    if "reintegration_bandwidth" in a:
        bandwidth = _bandwidth(r, rfs, a["reintegration_bandwidth"])
    dirs: list[tuple[str, Element]] = []
    mountpoints: list[bool] = []
    for rep in r.children(rfs, "rfs", ("replicated",)):
        ra = r.attrs(rep, "replicated", ("dir", "mode", "mountpoint"))
        mountpoints.append(r.choice(rep, "replicated@mountpoint", ra.get("mountpoint", "no"),
                                    ("yes", "no")) == "yes")
        if ra.get("mode", "read_only") != "read_only":
            r.warn(rep, "replicated@mode", f"{ra['mode']!r} not implemented yet; the secondary copy is read-only")
        for child in rep:
            r.warn(child, f"replicated/{child.tag}", "not implemented yet, ignored")
        dirs.append((_replicated_dir(r, rep, ra.get("dir", "")), rep))
    if not dirs:
        raise r.error(rfs, "rfs/replicated", "a mirror module needs at least one <replicated dir=...>")
    for i, (d, el) in enumerate(dirs):
        for other, other_el in dirs[:i]:
            if d == other or d.startswith(other + "/") or other.startswith(d + "/"):
                raise r.error(el, "replicated@dir",
                              f"{d} overlaps {other} (line {r.line_of.get(id(other_el))}); directories must not nest")
    return Rfs(async_mode=async_mode, ack_timeout_s=ack_timeout,
               reintegration_bandwidth_Bps=bandwidth, dirs=tuple(d for d, _ in dirs),
               mountpoints=tuple(mountpoints) if any(mountpoints) else (),
               durability=durability)


def _replicated_dir(r: _Reader, rep: Element, text: str) -> str:
    if not text.startswith("/"):
        raise r.error(rep, "replicated@dir", f"{text!r} must be an absolute path")
    if "\0" in text or any(part in ("..", ".") for part in text.split("/")):
        raise r.error(rep, "replicated@dir", f"{text!r} must not contain '.', '..' or NUL")
    path = posixpath.normpath(text)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise r.error(rep, "replicated@dir", "the root directory cannot be replicated")
    return path


def _bandwidth(r: _Reader, rfs: Element, text: str) -> int:
    match = _BANDWIDTH.fullmatch(text)
    if not match:
        raise r.error(rfs, "rfs@reintegration_bandwidth", f"{text!r} is not a rate (e.g. 50MB, 800K, 1G; per second)")
    value = float(match.group(1)) * _BANDWIDTH_UNIT[match.group(2).upper()]
    if not value <= MAX_BANDWIDTH_BPS:
        raise r.error(rfs, "rfs@reintegration_bandwidth", f"{text!r} is over the maximum of "
                                                          f"{MAX_BANDWIDTH_BPS} bytes per second")
    value = int(value)
    if value <= 0:
        raise r.error(rfs, "rfs@reintegration_bandwidth", "must be greater than zero")
    return value


def _read_user(r: _Reader, user: Element) -> dict[str, str]:
    r.attrs(user, "user", (), ignored=("nicestoptimeout", "forcestoptimeout", "logging", "userlogsize"))
    result: dict[str, str] = {}
    for var in r.children(user, "user", ("var",)):
        a = r.attrs(var, "var", ("name", "value"))
        var_name = a.get("name", "")
        if not _ENV_NAME.fullmatch(var_name):
            raise r.error(var, "var@name", f"{var_name!r} is not a valid environment variable name")
        if var_name in result:
            raise r.error(var, "var@name", f"{var_name!r} is defined twice")
        if "value" not in a:
            raise r.error(var, "var@value", "required")
        result[var_name] = a["value"]
    return result


def _read_errd(r: _Reader, errd: Element) -> tuple[tuple[ErrdProc, ...], float]:
    a = r.attrs(errd, "errd", ("polltimer",))
    poll = 10.0
    if "polltimer" in a:
        poll = _positive(r, errd, "errd@polltimer", r.time_s(errd, "errd@polltimer", a["polltimer"], "s"))
    procs: list[ErrdProc] = []
    for proc in r.children(errd, "errd", ("proc",)):
        pa = r.attrs(proc, "proc", ("name", "nameregex", "argregex", "atleast", "atmax", "action", "class"),
                     ignored=("start_after", "stop_after", "nicestoptimeout"))
        if ("name" in pa) == ("nameregex" in pa):
            raise r.error(proc, "proc@name", "give exactly one of name= or nameregex=")
        is_regex = "nameregex" in pa
        proc_name = pa["nameregex"] if is_regex else pa["name"]
        if is_regex:
            r.regex(proc, "proc@nameregex", proc_name)
        elif not proc_name:
            raise r.error(proc, "proc@name", "must not be empty")
        args = r.regex(proc, "proc@argregex", pa["argregex"]) if "argregex" in pa else None
        atleast = r.integer(proc, "proc@atleast", pa.get("atleast", "1"), 0)
        atmax_raw = r.integer(proc, "proc@atmax", pa.get("atmax", "-1"), -1)
        atmax = None if atmax_raw == -1 else atmax_raw
        if atmax is not None and atmax < atleast:
            raise r.error(proc, "proc@atmax", f"{atmax} is below atleast={atleast}")
        if "action" not in pa:
            raise r.error(proc, "proc@action", f"required ({', '.join(ERRD_ACTIONS)})")
        action = r.choice(proc, "proc@action", pa["action"], ERRD_ACTIONS)
        klass = r.choice(proc, "proc@class", pa.get("class", "prim"), ERRD_CLASSES)
        resource = "errd." + (re.sub(r"[^A-Za-z0-9_.-]", "_", proc_name).lstrip(".-") or "proc")[:100]
        if any(p.resource == resource for p in procs):
            resource = f"{resource}.{len(procs) + 1}"
        procs.append(ErrdProc(name=proc_name, name_is_regex=is_regex, regex_args=args,
                              atleast=atleast, atmax=atmax, action=action, klass=klass, resource=resource))
    return tuple(procs), poll


def _ident(r: _Reader, element: Element, what: str, value: str | None) -> str:
    if value is None:
        raise r.error(element, what, "required")
    if not valid_ident(value):
        raise r.error(element, what, f"{value!r} must be letters, digits, '_', '.', '-' (at most 128)")
    return value


def _address(r: _Reader, element: Element, what: str, value: str | None, ip_only: bool = False) -> str:
    if value is None:
        raise r.error(element, what, "required")
    if _is_ip(value) or (not ip_only and _HOST_NAME.fullmatch(value)):
        return value
    raise r.error(element, what, f"{value!r} is not an IP address" + ("" if ip_only else " or host name"))


def _port(r: _Reader, element: Element, what: str, value: str) -> int:
    port = r.integer(element, what, value, 1)
    if port > 65535:
        raise r.error(element, what, f"{port} is above the maximum 65535")
    return port


def _read_check(r: _Reader, check: Element, mode: str) -> tuple[CheckConfig, ...]:
    r.attrs(check, "check", ())
    result: list[CheckConfig] = []
    seen: dict[str, Element] = {}
    failed = False
    for el in r.children(check, "check", CHECK_KINDS):
        config = r.attempt(_read_checker, r, el, mode)     # every checker's error, not the first
        if config is _FAILED:
            failed = True
            continue
        if config.resource in seen:
            failed = True
            r.errors.append(str(r.error(el, f"{el.tag}@ident", f"resource {config.resource} is defined twice "
                                        f"(first at line {r.line_of.get(id(seen[config.resource]))})")))
            continue
        seen[config.resource] = el
        result.append(config)
    if failed:      # the errors are in r.errors already
        raise UserConfigError("<check>: see the errors above", errors=())
    return tuple(result)


def _read_checker(r: _Reader, el: Element, mode: str) -> CheckConfig:
    kind = el.tag
    known = {"tcp": ("ident", "when", "action"), "ping": ("ident", "when", "action"),
             "intf": ("ident", "when", "action"), "ip": ("ident", "when", "action"),
             "custom": ("ident", "when", "action", "exec", "arg"), "module": ("name", "action"),
             "splitbrain": ("ident", "exec", "arg", "action")}[kind]
    a = r.attrs(el, kind, known)
    ident = _ident(r, el, f"{kind}@{'name' if kind == 'module' else 'ident'}",
                   a.get("name") if kind == "module" else a.get("ident"))
    default_when = "prim" if mode == "mirror" else "both"
    allowed_when = ("prim", "both") if kind == "ip" else ("pre", "prim", "second", "both")
    when = r.choice(el, f"{kind}@when", a.get("when", default_when), allowed_when)
    action = r.choice(el, f"{kind}@action", a.get("action", CHECK_DEFAULT_ACTION[kind]), CHECK_ACTIONS)
    kw: dict[str, object] = {"kind": kind, "ident": ident, "when": when, "action": action}
    tos = r.children(el, kind, ("to",)) if kind not in ("custom", "splitbrain") else []
    if kind in ("custom", "splitbrain"):
        for child in el:
            r.warn(child, f"{kind}/{child.tag}", "unknown element, ignored")
    if kind in ("tcp", "intf", "ip") and len(tos) != 1:
        raise r.error(el, f"{kind}/to", f"expected exactly one <to .../>, found {len(tos)}")
    if kind == "ping" and not tos:
        raise r.error(el, "ping/to", "expected at least one <to addr=.../>")
    if kind == "module" and len(tos) > 1:
        raise r.error(el, "module/to", f"expected at most one <to addr= port=/>, found {len(tos)}")
    addrs: list[str] = []
    for to in tos:
        ta = r.attrs(to, "to", {"tcp": ("addr", "port", "interval", "timeout", "send", "expect"), "ping": ("addr", "interval", "timeout"),
                                "intf": ("name", "interval"), "ip": ("addr", "interval", "timeout"),
                                "module": ("addr", "port")}[kind])
        if "interval" in ta:
            kw["interval_s"] = _positive(r, to, "to@interval", r.time_s(to, "to@interval", ta["interval"], "s"))
        if "timeout" in ta:
            kw["timeout_s"] = _positive(r, to, "to@timeout", r.time_s(to, "to@timeout", ta["timeout"], "s"))
        if kind == "intf":
            name = ta.get("name")
            if not name or "/" in name or name in (".", "..") or len(name) > 15:
                raise r.error(to, "to@name", f"{name!r} is not an interface name" if name else "required")
            kw["interface"] = name
        elif kind == "module" and "addr" not in ta:
            if "port" in ta:
                raise r.error(to, "to@addr", "required with port=")
        else:
            addrs.append(_address(r, to, "to@addr", ta.get("addr"), ip_only=kind == "ip"))
        if kind == "tcp" and ("send" in ta or "expect" in ta):
            # A plain connect succeeds against a stopped server (the kernel accepts):
            # an exchange notices it.
            kw["send"], kw["expect"] = ta.get("send"), ta.get("expect")
        if kind in ("tcp", "module") and "port" in ta:
            kw["port"] = _port(r, to, "to@port", ta["port"])
        elif kind == "tcp":
            raise r.error(to, "to@port", "required")
    if kind == "custom":
        exec_name = a.get("exec")
        if not exec_name:
            raise r.error(el, "custom@exec", "required (a program in the module's bin/, or an absolute path)")
        if "\0" in exec_name or ".." in exec_name.split("/"):
            raise r.error(el, "custom@exec", f"{exec_name!r} must not contain '..' or NUL")
        kw["exec"], kw["arg"] = exec_name, a.get("arg")
    if kind == "splitbrain":
        r.warn(el, "splitbrain", "reported only: Raft quorum, not this checker, prevents split brain")
        if a.get("exec", "ping") != "ping":
            raise r.error(el, "splitbrain@exec", f"{a['exec']!r}: only exec=\"ping\" is supported")
        targets = (a.get("arg") or "").split()
        if not targets:
            raise r.error(el, "splitbrain@arg", "required: the witness address(es) to ping")
        addrs = [_address(r, el, "splitbrain@arg", t) for t in targets]
    kw["addrs"] = tuple(addrs)
    return CheckConfig(**kw)  # type: ignore[arg-type]


def _read_rules(r: _Reader, failover: Element | None, errd: tuple[ErrdProc, ...],
                checks: tuple[CheckConfig, ...]) -> tuple[Rule, ...]:
    implicit = [Rule(f"errd_{p.resource[5:]}", _down(p.resource), p.action) for p in errd if p.action != "none"]
    implicit += [Rule(f"{c.kind}_{c.ident}", _down(c.resource), c.action) for c in checks if c.action != "none"]
    if failover is None:
        return tuple(implicit)
    r.attrs(failover, "failover", ())
    for child in failover:
        r.warn(child, f"failover/{child.tag}", "unknown element, ignored")
    first_line = r.line_of.get(id(failover), 0)
    try:
        explicit = parse_rules(failover.text or "")
    except FailoverRulesError as exc:
        raise UserConfigError(f"{r.source}:{first_line + exc.line - 1}: failover: {exc.problem}") from None
    declared = {p.resource for p in errd} | {c.resource for c in checks}
    for rule in explicit:
        for name in sorted(resources_of(rule.condition)):
            if not name.endswith("." + WILDCARD) and name not in declared:
                raise UserConfigError(f"{r.source}:{first_line + rule.line - 1}: failover: rule {rule.label!r}: "
                                      f"no resource {name} in <errd> or <check>")
    # lines (and the names of unlabelled rules) relative to the file, as in every message
    explicit = [dataclasses.replace(rule, line=first_line + rule.line - 1,
                                    label=f"line{first_line + rule.line - 1}" if rule.label == f"line{rule.line}"
                                    else rule.label) for rule in explicit]
    labels = {rule.label for rule in explicit}
    return tuple([rule for rule in implicit if rule.label not in labels] + explicit)


def _down(resource: str) -> Compare:
    return Compare(resource, "==", "down")


def _read_farm(r: _Reader, farm: Element) -> tuple[FarmNode, ...]:
    r.attrs(farm, "farm", ())
    lans = r.children(farm, "farm", ("lan",))
    for extra in lans[1:]:
        r.warn(extra, "farm/lan", "only the first <lan> is used; more are not implemented yet, ignored")
    nodes: list[FarmNode] = []
    for lan in lans[:1]:
        r.attrs(lan, "lan", ("name",))
        for node in r.children(lan, "lan", ("node",)):
            na = r.attrs(node, "node", ("name", "addr", "power"))
            name = na.get("name")
            if not name or not _NODE_NAME.fullmatch(name):
                raise r.error(node, "node@name", f"{name!r} is not a node name" if name else "required")
            addr = _address(r, node, "node@addr", na.get("addr"))
            power = r.integer(node, "node@power", na.get("power", "1"), 1)
            if power > 1000:
                raise r.error(node, "node@power", f"{power} is above the maximum 1000")
            for other in nodes:
                if other.name == name or other.addr == addr:
                    raise r.error(node, "node@name" if other.name == name else "node@addr",
                                  f"{name if other.name == name else addr} is listed twice")
            nodes.append(FarmNode(name, addr, power))
    return tuple(nodes)


def _read_lb_rules(r: _Reader, vip: Element, mode: str) -> tuple[LbRule, ...]:
    rules: list[LbRule] = []
    for lb in vip:
        if lb.tag != "loadbalancing_list":
            continue
        if mode != "farm":
            raise r.error(lb, "vip/loadbalancing_list", "load balancing is only for a farm module")
        r.attrs(lb, "loadbalancing_list", ())
        for group in r.children(lb, "loadbalancing_list", ("group",)):
            r.attrs(group, "group", ("name",))
            for rule in r.children(group, "group", ("rule",)):
                ra = r.attrs(rule, "rule", ("port", "proto", "filter"))
                port = _port(r, rule, "rule@port", ra["port"]) if "port" in ra else None
                proto = r.choice(rule, "rule@proto", ra.get("proto", "tcp"), LB_PROTOS)
                filt = r.choice(rule, "rule@filter", ra.get("filter", "on_addr"), LB_FILTERS)
                rules.append(LbRule(port, proto, filt))
    return tuple(rules)
