"""hacluster: a software-only high-availability cluster for Linux on a Raft core.

The package is in rooms; each imports only the rooms below it
(tests/unit/test_import_graph.py):

  cli.py, __main__.py  the ``hacluster`` command line: a thin client of the local daemon
  node_daemon.py       a data node: the daemon and its modules, put together
  mirror/, farm/       the two kinds of module: a pure state machine and its driver
  modules/             what every module has (registry, runtime, packages, fetch,
                       scripts, checks, userconfig) and ``ModuleHost``, all it sees of
                       its node
  node/                the cluster member: daemon, control socket, peer control, lease
                       holder, configuration, the table of control commands, the log
  http/                the HTTP endpoints (metrics, readiness): pure functions of a
                       snapshot the daemon hands over (``NodeProbe``), and their server

Nothing is imported here, so that a room loads only what it uses.
"""

# The one place the version is written: setup.cfg reads it (attr:), and
# `hacluster --version` prefers the installed distribution's metadata.
__version__ = "0.1.0"
