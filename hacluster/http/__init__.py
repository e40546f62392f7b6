"""The node's HTTP endpoints: Prometheus metrics and load-balancer readiness (plain HTTP,
Raft port + 4) and the JSON API behind a login (HTTPS, Raft port + 5).

Lowest room of hacluster/ (it imports no other room, only raft/): the daemon
(``hacluster.node``) starts ``server.HttpServer`` and ``api_server.ApiServer`` on its own
event loop and feeds them through two narrow interfaces: ``snapshot.NodeProbe`` (a
``snapshot.NodeSnapshot`` of the node) and ``api_backend.ApiBackend`` (the cluster, its
modules, commands, users; ``hacluster.node.api_backend`` implements it). Everything
that decides or renders is pure and unit tested: ``exposition`` (the Prometheus text
format), ``metrics`` (what is exported), ``readiness`` (who answers 200), ``histogram``
(the lease-renewal latency); for the API ``api`` (routes, roles, CSRF, guards),
``openapi`` (its document), ``tls`` (the cluster CA and members' certificates),
``passwords`` (scrypt), ``sessions`` (signed cookies), ``login_limit``, ``roles``,
``audit``. ``alerts.yml`` ships the Prometheus alert rules.
"""
