"""The cluster member itself, whatever it runs: the room every other one stands on.

``daemon.Daemon`` runs the Raft member (raft/), this member's liveness lease
(``lease_holder``), the control API on a Unix socket (``control``) and, on a data
node, peer control for ``hacluster -H`` (``peer_control`` over ``tcp_service``);
it reads its configuration (``cluster_config``) and never writes it, and keeps the
committed membership in its state directory (``member_cache``); ``paths`` says where
everything is, ``layout_upgrade`` moves an older layout's state. ``commands``
declares every control command once. ``structured_log``: one logfmt line per event.
On a server: ``sd_notify`` (ready, watchdog, stop time to systemd), ``exit_status``
(what the units read), ``install`` (``hacluster setup``) and ``systemd/`` (the units).
``WitnessDaemon`` is a member with nothing more; a data node adds its modules
(``hacluster.node_daemon``), which see this room only as a ``ModuleHost``.
"""
from .cluster_config import ClusterConfig, ConfigError, load as load_config
from .control import ControlError
from .daemon import Daemon, WitnessDaemon
from .lease_holder import LeaseHolder
from .peer_control import PeerControlError, call_peer

__all__ = ["ClusterConfig", "ConfigError", "ControlError", "Daemon", "LeaseHolder",
           "PeerControlError", "WitnessDaemon", "call_peer", "load_config"]
