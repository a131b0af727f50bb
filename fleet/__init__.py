"""Fleet: run a shell command or a saved script on many machines at once.

Layers (a module may depend on modules of lower layers, and on modules of its own layer in one
direction only; no import cycles):

1. ``fleet.proto`` (generated wire messages), ``fleet.core`` (sans-I/O domain: statuses,
   state machines, output bookkeeping, request validation), ``fleet.logformat`` (the
   commands' text or JSON log lines), ``fleet.wellformed`` (decoded messages checked
   against their schema, for both ends of the agent stream) and ``fleet.wire`` (the gRPC
   method path and the trio-asyncio loop, shared by both ends).
2. ``fleet.agent`` (the daemon on every VPS) and ``fleet.cli`` (the ``fleet`` command: REST
   client, live feed, printing, one module per command group); neither imports
   ``fleet.server``.
3. ``fleet.server.config``, ``fleet.server.agents``, ``fleet.server.records`` (plain records),
   ``fleet.server.store`` (Pony, by noun), ``fleet.server.dbthread``, ``fleet.server.logs``,
   ``fleet.server.http.feed`` (the publish/subscribe hub), ``fleet.server.http.openapi``,
   ``fleet.server.http.openapi_parts``, ``fleet.server.http.openapi_batches``,
   ``fleet.server.http.openapi_teams``,
   ``fleet.server.reports`` (what an agent may report), ``fleet.server.metrics`` (Prometheus),
   ``fleet.server.datadir`` (the data directory's lock and file modes), ``fleet.server.clock``
   (trio time ↔ wall-clock time), ``fleet.server.health`` (whether the store takes writes),
   ``fleet.server.passwords`` (argon2id), ``fleet.server.logins`` (failed-login throttling)
4. ``fleet.server.views`` (JSON shapes), ``fleet.server.writeback``,
   ``fleet.server.handshakes`` (agent handshakes, refusals rate-limited),
   ``fleet.server.output`` (a batch's logs and output facts), ``fleet.server.rundeps`` (what a
   running batch depends on)
5. ``fleet.server.batchrun``
6. ``fleet.server.supervisor``
7. ``fleet.server.rpc`` (gRPC), ``fleet.server.http.common`` (what every route shares),
   ``fleet.server.http.policy`` (who may do what: roles and scope), ``fleet.server.http.auth``
   (who is calling: tokens and sessions), ``fleet.server.http.csrf`` (cookie writes from this
   origin only), ``fleet.server.cluster`` (several servers on one PostgreSQL: presence, routing,
   adoption)
8. ``fleet.server.http.routes_ui``, ``fleet.server.http.routes_vps``,
   ``fleet.server.http.routes_scripts``, ``fleet.server.http.routes_batches``,
   ``fleet.server.http.launch`` (creating a batch, or a re-run of one),
   ``fleet.server.http.routes_session``, ``fleet.server.http.routes_accounts``,
   ``fleet.server.http.routes_audit``
9. ``fleet.server.http.app`` (the Quart-Trio app: middleware, error handlers)
10. ``fleet.server.demo``, ``fleet.server.serve``
11. ``fleet.server.cli``

Only ``fleet.server.rpc``, ``fleet.agent.link`` and ``fleet.wire`` touch asyncio (grpclib runs
there, hosted in trio through trio-asyncio).
"""

from __future__ import annotations

__version__ = "0.1.0"
#: The distribution's name on the package index (``pip install fleet-run``); ``fleet`` there is
#: another project. The import package stays ``fleet``, the commands ``fleet-server``,
#: ``fleet-agent`` and ``fleet``.
DISTRIBUTION = "fleet-run"
