"""The pysyncobj names raft/ relies on (issue 18 item 8).

raft/ patches pysyncobj by overriding, calling and reading its private names (mangled
``_SyncObj__x`` ones and single-underscore ones) and by replacing module globals that
pysyncobj's own code reads. A release that renames one of them need not fail at import:
an override of a renamed method is simply never called (the journal would stop being
fsynced, pre-vote would stop, the transport limits would vanish), and a replaced global
that nothing reads any more changes nothing. setup.cfg pins the tested release; if the pin
is ever moved, this test names each name that broke, one test case per name.

Checked here, against the installed pysyncobj itself (never our subclasses, whose
overrides would hide a name pysyncobj dropped):

* every module-level name raft/ imports or replaces, and the constants whose values
  raft/ copies;
* every method raft/ overrides or calls, with its parameter names;
* every instance attribute raft/ reads or writes, on real pysyncobj objects;
* that pysyncobj's code still reads the names raft/ replaces or overrides (the patch
  points), by the names in its compiled code;
* that SyncObjConf reads every setting RaftMember passes (it ignores unknown ones);
* completeness: every mangled name in raft/'s source and every method raft/'s subclasses
  override is listed here, so a new reliance cannot be added without its check.
"""
from __future__ import annotations

import collections
import configparser
import importlib
import importlib.metadata
import inspect
import io
import pkgutil
import re
import tokenize
import types
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import pysyncobj
import pysyncobj.atomic_replace
import pysyncobj.journal
import pysyncobj.syncobj
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer
from pysyncobj.fast_queue import FastQueue
from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.node import TCPNode
from pysyncobj.poller import PollPoller, createPoller
from pysyncobj.serializer import Serializer
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

import raft
from raft.member import syncobj_conf_kwargs
from raft.settings import RaftSettings
from tests.conftest import REPO

TESTED_VERSION = "0.3.17"

# ---- module-level names: (module, name, what relies on it) ---------------------------
MODULE_NAMES = [
    ("pysyncobj", "FAIL_REASON", "member: command failures"),
    ("pysyncobj", "SyncObj", "member: _SyncObj"),
    ("pysyncobj", "SyncObjConf", "member: RaftMember"),
    ("pysyncobj", "SyncObjConsumer", "member: _StateConsumer"),
    ("pysyncobj", "replicated", "member: _StateConsumer.command"),
    ("pysyncobj.monotonic", "monotonic", "member, hardened_transport: pysyncobj's timer clock"),
    ("pysyncobj.node", "TCPNode", "member: change_peers"),
    ("pysyncobj.syncobj", "_RAFT_STATE", "member: leader/follower states"),
    ("pysyncobj.poller", "POLL_EVENT_TYPE", "hardened_transport: listener events"),
    ("pysyncobj.tcp_connection", "CONNECTION_STATE", "hardened_transport"),
    ("pysyncobj.tcp_connection", "TcpConnection", "hardened_transport: HardenedConnection"),
    ("pysyncobj.tcp_server", "SERVER_STATE", "hardened_transport: HardenedServer.bound"),
    ("pysyncobj.tcp_server", "TcpServer", "hardened_transport: HardenedServer"),
    ("pysyncobj.transport", "TCPTransport", "hardened_transport: HardenedTransport"),
    ("pysyncobj.journal", "MetaStorer", "durable_storage: DurableMetaStorer"),
    ("pysyncobj.journal", "FileJournal", "durable_storage: DurableFileJournal"),
    ("pysyncobj.journal", "MemoryJournal", "durable_storage: _create_journal without a file"),
    ("pysyncobj.journal", "dumps", "durable_storage: DurableMetaStorer.storeMeta"),
    ("pysyncobj.journal", "createJournal", "durable_storage: the function _create_journal replaces"),
    ("pysyncobj.atomic_replace", "atomicReplace", "durable_storage: the function _private_replace replaces"),
]

# ---- constants: (holder, name, value raft/ assumes or None, what relies on it) ------------
_RAFT_STATE = pysyncobj.syncobj._RAFT_STATE
_FAIL = pysyncobj.FAIL_REASON
_CONN = pysyncobj.tcp_connection.CONNECTION_STATE
_SERVER = pysyncobj.tcp_server.SERVER_STATE
_POLL = pysyncobj.poller.POLL_EVENT_TYPE
CONSTANTS = [
    (_RAFT_STATE, "FOLLOWER", 0, "member: _STATE_NAMES"),
    (_RAFT_STATE, "CANDIDATE", 1, "member: _STATE_NAMES"),
    (_RAFT_STATE, "LEADER", 2, "member: _LEADER, _STATE_NAMES"),
    *((_FAIL, name, None, "member: _FAIL_TEXT, _OUTCOME_UNKNOWN") for name in (
        "SUCCESS", "QUEUE_FULL", "MISSING_LEADER", "DISCARDED", "NOT_LEADER", "LEADER_CHANGED",
        "REQUEST_DENIED", "UNKNOWN_OUTCOME")),
    (_CONN, "DISCONNECTED", None, "hardened_transport: a decoder failure closed the connection"),
    (_SERVER, "BINDED", None, "hardened_transport: HardenedServer.bound"),
    (_POLL, "READ", None, "hardened_transport: accept loop, resume"),
    (_POLL, "ERROR", None, "hardened_transport: accept loop, resume"),
]

# ---- methods and properties: (class, name, parameter names or None, what relies on it) ----
# None: a property or a function whose parameters are not pysyncobj's (os.rename).
METHODS = [
    (SyncObj, "__init__", ("self", "selfNode", "otherNodes", "conf", "consumers", "nodeClass",
                           "transport", "transportClass"), "member: _SyncObj passes consumers=, transportClass="),
    (SyncObj, "_SyncObj__onMessageReceived", ("self", "node", "message"), "member: _SyncObj overrides (pre-vote, §5.3 append rule)"),
    (SyncObj, "_onTick", ("self", "timeToWait"), "member: _SyncObj overrides (pre-vote before each tick)"),
    (SyncObj, "_SyncObj__connectedToAnyone", ("self",), "member: _before_tick, _deadlines"),
    (SyncObj, "_SyncObj__generateRaftTimeout", ("self",), "member: election deadline"),
    (SyncObj, "_SyncObj__getCurrentLogIndex", ("self",), "member: pre-vote, append rule"),
    (SyncObj, "_SyncObj__getCurrentLogTerm", ("self",), "member: pre-vote"),
    (SyncObj, "_SyncObj__getEntries", ("self", "fromIDx", "count", "maxSizeBytes"), "member: _trim_matching_entries"),
    (SyncObj, "_SyncObj__onLeaderChanged", ("self",), "member: fails commands waiting on a lost leader"),
    (SyncObj, "_SyncObj__sendNextNodeIdx", ("self", "node", "reset", "nextNodeIdx", "success"),
     "member: _acknowledge_matching_append passes nextNodeIdx=, success="),
    (SyncObj, "_SyncObj__setCurrentTerm", ("self", "term", "votedForNodeId"), "member: _adopt_term"),
    (SyncObj, "_SyncObj__setState", ("self", "newState"), "member: _adopt_term, append rule"),
    (SyncObj, "_isLeader", ("self",), "member: RaftMember.is_leader"),
    (SyncObj, "_getLeader", ("self",), "member: leader_address, _resend_awaiting_leader"),
    (SyncObj, "addOnTickCallback", ("self", "callback"), "member: the lease keeper on the tick thread"),
    (SyncObj, "addNodeToCluster", ("self", "node", "callback"), "member: change_peers"),
    (SyncObj, "removeNodeFromCluster", ("self", "node", "callback"), "member: change_peers"),
    (SyncObj, "transferLeadership", ("self", "node", "callback"), "member: a removed leader hands over"),
    (SyncObj, "isReady", ("self",), "member: caught_up"),
    (SyncObj, "getStatus", ("self",), "member: raft_status"),
    (SyncObj, "destroy", ("self",), "member: destroy"),
    (SyncObj, "encryptor", None, "secure_channel: AuditingEncryptor wraps it"),
    (SyncObjConsumer, "__init__", ("self",), "member: _StateConsumer"),
    (SyncObjConsumer, "_serialize", ("self",), "member: _StateConsumer overrides (Raft snapshots)"),
    (SyncObjConsumer, "_deserialize", ("self", "data"), "member: _StateConsumer overrides (Raft snapshots)"),
    (TCPTransport, "_createServer", ("self",), "hardened_transport: overrides, adopts the plain server"),
    (TCPTransport, "__init__", ("self", "syncObj", "selfNode", "otherNodes"),
     "link_transport: LinkedTransport reads syncObj.link_plan first"),
    (TCPTransport, "_connectIfNecessarySingle", ("self", "node"),
     "link_transport: overrides (connects on a live network)"),
    (TCPTransport, "_shouldConnect", ("self", "node"), "link_transport: calls it"),
    (TCPTransport, "destroy", ("self",), "link_transport: overrides (closes its sockets first)"),
    (TCPTransport, "addNode", ("self", "node"), "hardened_transport, secure_channel: override"),
    (TCPTransport, "_onTick", ("self",), "hardened_transport: overrides (rebind, handshake deadline)"),
    (TCPTransport, "_maybeBind", ("self",), "hardened_transport: rebinds a closed listener via _ready"),
    (TCPTransport, "_onUtilityMessage", ("self", "conn", "message"), "secure_channel: overrides (admin commands off)"),
    (TCPTransport, "_onNewIncomingConnection", ("self", "conn"), "secure_channel: overrides (auditing encryptor)"),
    (TCPTransport, "send", ("self", "node", "message"), "secure_channel, member: override (journal fsync, transfer mark)"),
    (TcpConnection, "__init__", ("self", "poller", "onMessageReceived", "onConnected", "onDisconnected",
                                 "socket", "timeout", "sendBufferSize", "recvBufferSize", "keepalive"),
     "hardened_transport: HardenedConnection, built by keyword in HardenedServer._admit"),
    (TcpConnection, "connect", ("self", "host", "port"), "hardened_transport: overrides"),
    (TcpConnection, "disconnect", ("self",), "hardened_transport: overrides"),
    (TcpConnection, "send", ("self", "message"), "secure_channel: refusal answer"),
    (TcpConnection, "fileno", ("self",), "secure_channel: _peer_of"),
    (TcpConnection, "state", None, "hardened_transport: disconnected after decoding"),
    (TcpConnection, "_TcpConnection__tryReadBuffer", ("self",), "hardened_transport: overrides (bounded reads)"),
    (TcpConnection, "_TcpConnection__processParseMessage", ("self",),
     "hardened_transport: overrides and calls (length checked before buffering)"),
    (TcpServer, "bind", ("self",), "hardened_transport: overrides (backlog, reserve fd)"),
    (TcpServer, "unbind", ("self",), "hardened_transport: overrides"),
    (TcpServer, "_TcpServer__onNewConnection", ("self", "descr", "event"), "hardened_transport: overrides (accept loop)"),
    (FileJournal, "__init__", ("self", "journalFile"), "durable_storage: DurableFileJournal"),
    (FileJournal, "add", ("self", "command", "idx", "term"), "durable_storage: overrides (dirty mark)"),
    (FileJournal, "clear", ("self",), "durable_storage: overrides"),
    (FileJournal, "deleteEntriesFrom", ("self", "entryFrom"), "durable_storage: overrides"),
    (FileJournal, "_destroy", ("self",), "durable_storage: overrides (last fsync)"),
    (FileJournal, "setRaftCommitIndex", ("self", "raftCommitIndex"), "member: _acknowledge_matching_append"),
    (MetaStorer, "__init__", ("self", "path"), "durable_storage: DurableMetaStorer"),
    (MetaStorer, "storeMeta", ("self", "meta"), "durable_storage: overrides (durable term and vote)"),
    (MetaStorer, "getPath", ("self",), "durable_storage: DurableMetaStorer"),
    (PollPoller, "poll", ("self", "timeout"), "member: _SyncObj replaces its poller's poll"),
    (PollPoller, "subscribe", ("self", "descr", "callback", "eventMask"), "hardened_transport: resume_if_due"),
    (PollPoller, "unsubscribe", ("self", "descr"), "hardened_transport: pause"),
    (TCPNode, "address", None, "member, hardened_transport, secure_channel"),
    (TCPNode, "ip", None, "hardened_transport: _member_hosts"),
    (pysyncobj.journal, "createJournal", ("journalFile",), "durable_storage: _create_journal takes its place"),
    (pysyncobj.journal, "dumps", ("obj", "protocol"), "durable_storage: storeMeta"),
    (pysyncobj.atomic_replace, "atomicReplace", None, "durable_storage: _private_replace takes its place"),
]

# ---- instance attributes: (object, name, type or None, what relies on it) ----------------
# Objects: "syncobj" a plain pysyncobj SyncObj, "queue" its command queue, "transport" its
# TCPTransport, "server" that transport's TcpServer, "connection" a TcpConnection,
# "journal" a FileJournal.
INSTANCE_ATTRIBUTES = [
    ("syncobj", "_SyncObj__commandsQueue", FastQueue, "member: _deadlines"),
    ("syncobj", "_SyncObj__conf", SyncObjConf, "member: raftMinTimeout for leader stickiness"),
    ("syncobj", "_SyncObj__lastResponseTime", dict, "member: _leader_current"),
    ("syncobj", "_SyncObj__leaderCommitIndex", None, "member: _acknowledge_matching_append"),
    ("syncobj", "_SyncObj__newAppendEntriesTime", None, "member: _deadlines (next heartbeat)"),
    ("syncobj", "_SyncObj__otherNodes", set, "member: pre-vote majority (set intersection)"),
    ("syncobj", "_SyncObj__properies", set, "member: _poll_sockets kept out of the dump"),
    ("syncobj", "_SyncObj__raftCommitIndex", None, "member: _acknowledge_matching_append"),
    ("syncobj", "_SyncObj__raftCurrentTerm", None, "member: pre-vote, term notice, append rule"),
    ("syncobj", "_SyncObj__raftElectionDeadline", None, "member: pre-vote, _deadlines"),
    ("syncobj", "_SyncObj__raftLeader", None, "member: pre-vote, append rule"),
    ("syncobj", "_SyncObj__raftLog", None, "member: sync_journal, append rule"),
    ("syncobj", "_SyncObj__raftState", None, "member: leader checks"),
    ("syncobj", "_SyncObj__selfNode", None, "member: _before_tick, pre-vote"),
    ("syncobj", "_SyncObj__transferInProgress", None, "member: transfer election, append rule"),
    ("syncobj", "_SyncObj__transport", TCPTransport, "member: pre-vote, term notice messages"),
    ("syncobj", "_SyncObj__thread", None, "member: destroy (not from the tick thread)"),
    ("syncobj", "_poller", None, "member: _SyncObj replaces _poller.poll"),
    ("queue", "_FastQueue__queue", collections.deque, "member: _deadlines (commands left over)"),
    ("transport", "_connections", dict, "hardened_transport, secure_channel: addNode"),
    ("transport", "_unknownConnections", set, "hardened_transport: handshake caps and deadline"),
    ("transport", "_nodes", set, "hardened_transport: _member_hosts"),
    ("transport", "_ready", bool, "hardened_transport: rebind a closed listener"),
    ("transport", "_lastConnectAttempt", dict, "link_transport: reconnect at once after a switch"),
    ("transport", "_selfNode", None, "link_transport: its address (heartbeat sender, port)"),
    ("transport", "_server", TcpServer, "hardened_transport: _createServer, _onTick"),
    ("transport", "_syncObj", SyncObj, "member, secure_channel: encryptor, outgoing, sync_journal"),
    ("server", "_TcpServer__socket", None, "hardened_transport: accept, listen backlog"),
    ("server", "_TcpServer__fileno", None, "hardened_transport: pause, resume"),
    ("server", "_TcpServer__poller", None, "hardened_transport: pause, resume, _admit"),
    ("server", "_TcpServer__state", None, "hardened_transport: bound"),
    ("server", "_TcpServer__sendBufferSize", None, "hardened_transport: _admit"),
    ("server", "_TcpServer__recvBufferSize", None, "hardened_transport: _admit"),
    ("server", "_TcpServer__connectionTimeout", None, "hardened_transport: _admit"),
    ("server", "_TcpServer__keepalive", None, "hardened_transport: _admit"),
    ("server", "_TcpServer__onNewConnectionCallback", None, "hardened_transport: _admit"),
    ("server", "_TcpServer__host", None, "link_transport: a LinkServer on another address"),
    ("server", "_TcpServer__port", None, "link_transport: a LinkServer on the same port"),
    ("connection", "_TcpConnection__socket", None, "hardened_transport: bounded reads"),
    ("connection", "_TcpConnection__lastReadTime", None, "hardened_transport: bounded reads"),
    ("connection", "_TcpConnection__readBuffer", None, "hardened_transport: one frame to the decoder"),
    ("connection", "encryptor", None, "hardened_transport, secure_channel"),
    ("connection", "recvRandKey", None, "hardened_transport: authenticated once the key is proven"),
    ("journal", "_FileJournal__metaStorer", MetaStorer, "durable_storage: DurableMetaStorer swapped in"),
]

# ---- patch points: (function, names its code must read, why) -----------------------------
CODE_READS = [
    (SyncObj.__init__, ("createJournal",),
     "durable_storage.install replaces pysyncobj.syncobj.createJournal: the journal is durable only "
     "while SyncObj builds it through that global"),
    (Serializer.serialize, ("atomicReplace",),
     "durable_storage.install replaces pysyncobj.serializer.atomicReplace (durable, private dumps)"),
    (Serializer.setTransmissionData, ("atomicReplace",), "as above, for dumps received from the leader"),
    (SyncObj._onTick, ("_poller", "poll"), "member: _SyncObj's poll until the next timer"),
    (SyncObj._SyncObj__setState, ("onStateChanged",), "member: the lease clock hears of elections"),
    (SyncObj._SyncObj__tryLogCompaction, ("_SyncObj__properies",), "member: _poll_sockets kept out of dumps"),
    (TcpConnection._TcpConnection__processConnection,
     ("_TcpConnection__tryReadBuffer", "_TcpConnection__processParseMessage"),
     "hardened_transport: its overrides are what the connection calls on a read event"),
    (TcpConnection._TcpConnection__processParseMessage, ("_TcpConnection__readBuffer", "encryptor", "recvRandKey"),
     "hardened_transport: hands it one frame in _TcpConnection__readBuffer"),
    (TcpServer.bind, ("_TcpServer__onNewConnection",), "hardened_transport: its accept loop is what bind subscribes"),
    (TCPTransport._onTick, ("_maybeBind",), "hardened_transport: a cleared _ready binds the listener again"),
    (TCPTransport._maybeBind, ("_ready", "_server", "bind"), "hardened_transport: as above"),
    (TCPTransport._createServer, ("_server", "TcpServer"), "hardened_transport: HardenedServer.adopt takes it over"),
    (TCPTransport.addNode, ("_connections", "TcpConnection"), "hardened_transport: hardens the connection it made"),
    (TCPTransport._connectIfNecessarySingle, ("_connections", "_shouldConnect", "_lastConnectAttempt",
                                              "connectionRetryTime", "connect"),
     "link_transport: its override does the same steps, choosing the network"),
]


def _where(owner: Any) -> str:
    return owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"


def _id(entry: tuple) -> str:
    owner, name = entry[0], entry[1]
    return f"{owner if isinstance(owner, str) else _where(owner)}.{name}"


# ---- the pin ---------------------------------------------------------------------------
def _pysyncobj_requirement() -> Requirement:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg["options"]["install_requires"].splitlines():
        if line.strip() and Requirement(line).name == "pysyncobj":
            return Requirement(line)
    raise AssertionError("setup.cfg: no pysyncobj in install_requires")


def test_setup_cfg_pins_pysyncobj_to_the_tested_release():
    spec = _pysyncobj_requirement().specifier
    assert Version(TESTED_VERSION) in spec
    for untested in ("0.3.16", "0.3.17.post1", "0.3.18", "0.4.0", "1.0"):
        assert Version(untested) not in spec, f"setup.cfg admits untested pysyncobj {untested}"


def test_installed_pysyncobj_is_the_tested_release():
    installed = importlib.metadata.version("pysyncobj")
    assert installed == TESTED_VERSION, (
        f"pysyncobj {installed} installed, raft/ was checked against {TESTED_VERSION}: run this "
        "file, fix raft/ for every name it reports, then move TESTED_VERSION and setup.cfg's pin")


# ---- names ---------------------------------------------------------------------------
@pytest.mark.parametrize("module, name, relied_on_by", MODULE_NAMES, ids=[_id(e) for e in MODULE_NAMES])
def test_module_name_exists(module: str, name: str, relied_on_by: str):
    assert hasattr(importlib.import_module(module), name), (
        f"pysyncobj no longer has {module}.{name} ({relied_on_by})")


@pytest.mark.parametrize("holder, name, value, relied_on_by", CONSTANTS, ids=[_id(e) for e in CONSTANTS])
def test_constant(holder: Any, name: str, value: int | None, relied_on_by: str):
    assert hasattr(holder, name), f"pysyncobj no longer has {_where(holder)}.{name} ({relied_on_by})"
    if value is not None:
        assert getattr(holder, name) == value, (
            f"pysyncobj's {_where(holder)}.{name} is {getattr(holder, name)!r}, raft/ assumes "
            f"{value!r} ({relied_on_by})")


@pytest.mark.parametrize("owner, name, params, relied_on_by", METHODS, ids=[_id(e) for e in METHODS])
def test_method_and_its_parameters(owner: Any, name: str, params: tuple[str, ...] | None,
                                   relied_on_by: str):
    # vars(), not getattr: a name inherited from object (__init__) must be pysyncobj's own.
    found = next((vars(c)[name] for c in (owner.__mro__ if inspect.isclass(owner) else (owner,))
                  if name in vars(c) and c is not object), None)
    assert found is not None, f"pysyncobj no longer has {_where(owner)}.{name} ({relied_on_by})"
    if params is not None:
        got = tuple(inspect.signature(found).parameters)
        assert got == params, (
            f"pysyncobj's {_where(owner)}.{name} takes {got}, raft/ expects {params} ({relied_on_by})")


@pytest.fixture(scope="module")
def pysyncobj_objects(tmp_path_factory) -> dict[str, Any]:
    """Real pysyncobj objects as pysyncobj builds them (not raft/'s subclasses, whose own
    attributes would hide one pysyncobj dropped). Nothing is bound or connected."""
    syncobj = SyncObj("127.0.0.1:0", ["127.0.0.1:9"], SyncObjConf(autoTick=False, password="contract"))
    transport = syncobj._SyncObj__transport
    journal = FileJournal(str(tmp_path_factory.mktemp("journal") / "raft.journal"))
    objects = {"syncobj": syncobj, "queue": syncobj._SyncObj__commandsQueue, "transport": transport,
               "server": transport._server, "connection": TcpConnection(poller=createPoller("auto")),
               "journal": journal}
    yield objects
    journal._destroy()
    syncobj.destroy()


@pytest.mark.parametrize("kind, name, type_, relied_on_by", INSTANCE_ATTRIBUTES, ids=[_id(e) for e in INSTANCE_ATTRIBUTES])
def test_instance_attribute(pysyncobj_objects, kind: str, name: str, type_: type | None,
                            relied_on_by: str):
    obj = pysyncobj_objects[kind]
    assert hasattr(obj, name), f"pysyncobj's {type(obj).__name__} no longer has .{name} ({relied_on_by})"
    if type_ is not None:
        assert isinstance(getattr(obj, name), type_), (
            f"pysyncobj's {type(obj).__name__}.{name} is a {type(getattr(obj, name)).__name__}, "
            f"raft/ uses it as a {type_.__name__} ({relied_on_by})")


def _names_read(code: types.CodeType) -> set[str]:
    """Global and attribute names a function's code reads, comprehensions included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_read(const)
    return names


@pytest.mark.parametrize("function, names, why", CODE_READS, ids=[f.__qualname__ for f, *_ in CODE_READS])
def test_pysyncobj_still_reads_the_patched_name(function, names: tuple[str, ...], why: str):
    missing = [n for n in names if n not in _names_read(function.__code__)]
    assert not missing, (
        f"pysyncobj's {function.__module__}.{function.__qualname__} no longer reads {missing}: {why}")


def test_get_status_has_the_keys_raft_status_reads(pysyncobj_objects):
    status = pysyncobj_objects["syncobj"].getStatus()
    for key in ("state", "raft_term", "commit_idx", "last_applied", "has_quorum", "log_len"):
        assert key in status, f"pysyncobj's getStatus() has no {key!r} (raft.member.RaftMember.raft_status)"
    assert "partner_node_status_server_127.0.0.1:9" in status, (
        "pysyncobj's getStatus() no longer names peers partner_node_status_server_<address>")


def test_syncobj_conf_reads_every_setting_raft_member_passes(tmp_path):
    def on_state_changed(old: int, new: int) -> None:
        pass

    given = syncobj_conf_kwargs("secret", tmp_path, RaftSettings(), on_state_changed,
                                bind_address="127.0.0.1:9")
    assert given, "syncobj_conf_kwargs passed nothing"
    for key in given:
        sentinel = object()
        # SyncObjConf takes **kwargs and reads the names it knows: a renamed setting
        # would be dropped without a word.
        assert getattr(SyncObjConf(**{key: sentinel}), key, None) is sentinel, (
            f"pysyncobj's SyncObjConf ignores {key!r} (raft.member.syncobj_conf_kwargs sets it)")


# ---- completeness: every reliance in raft/ is listed above -----------------------------
_MANGLED = re.compile(r"^_[A-Z]\w*__\w*[a-zA-Z0-9]$")   # _Class__name, not __dunder__


def _mangled_names_in_raft() -> dict[str, set[str]]:
    """Mangled names in raft/'s code (NAME tokens: docstrings and comments are not code)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "raft").glob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.NAME and _MANGLED.match(tok.string):
                found.setdefault(tok.string, set()).add(path.name)
    return found


def _listed_names() -> set[str]:
    names = {e[1] for e in METHODS} | {e[1] for e in INSTANCE_ATTRIBUTES}
    for _, read, _ in CODE_READS:
        names.update(read)
    return names


def test_every_mangled_name_raft_uses_is_listed():
    found = _mangled_names_in_raft()
    assert "_SyncObj__raftState" in found  # the scan itself works
    unlisted = {name: sorted(files) for name, files in found.items() if name not in _listed_names()}
    assert not unlisted, f"pysyncobj private names used in raft/ without a check here: {unlisted}"


def _raft_subclasses_of_pysyncobj() -> list[type]:
    classes = []
    for info in pkgutil.iter_modules(raft.__path__):
        module = importlib.import_module(f"raft.{info.name}")
        for cls in vars(module).values():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__
                    and any(base.__module__.startswith("pysyncobj") for base in cls.__mro__)):
                classes.append(cls)
    return classes


def test_every_method_raft_overrides_is_listed():
    listed = {(owner, name) for owner, name, *_ in METHODS}
    subclasses = _raft_subclasses_of_pysyncobj()
    assert {"_SyncObj", "HardenedConnection", "DurableFileJournal"} <= {c.__name__ for c in subclasses}
    unlisted = []
    for cls in subclasses:
        theirs = [c for c in cls.__mro__ if c.__module__.startswith("pysyncobj")]
        for name, member in vars(cls).items():
            if not callable(member) and not isinstance(member, property):
                continue
            base = next((c for c in theirs if name in vars(c)), None)
            if base is not None and not any((b, name) in listed for b in theirs):
                unlisted.append(f"{cls.__qualname__}.{name} (overrides {_where(base)})")
    assert not unlisted, f"raft/ overrides pysyncobj methods without a check here: {unlisted}"
