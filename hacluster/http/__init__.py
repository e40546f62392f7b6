"""The node's HTTP endpoints: Prometheus metrics and load-balancer readiness.

Lowest room of hacluster/ (it imports no other room): the daemon (``hacluster.node``)
starts ``server.HttpServer`` on its own event loop and feeds it a ``snapshot.NodeSnapshot``
through ``snapshot.NodeProbe``, the one interface between them. Everything that decides
or renders is pure and unit tested: ``exposition`` (the Prometheus text format),
``metrics`` (what is exported), ``readiness`` (who answers 200), ``histogram`` (the
lease-renewal latency). ``alerts.yml`` ships the Prometheus alert rules.

Plain HTTP for now (as Patroni's REST API by default); issue 22 adds HTTPS and the
console on the same server.
"""
