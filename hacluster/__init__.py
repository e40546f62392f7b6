"""hacluster: a software-only high-availability cluster for Linux on a Raft core.

Public API: the daemons and the configuration they run from.
"""
from .node.cluster_config import ClusterConfig, ConfigError, load as load_config
from .node.daemon import Daemon, NodeDaemon, WitnessDaemon

__all__ = ["ClusterConfig", "ConfigError", "load_config", "Daemon", "NodeDaemon", "WitnessDaemon"]
