"""Fleet: run a shell command or a saved script on many machines at once.

Layers (a module may only depend on modules in a strictly lower layer):

1. ``fleet.proto`` (generated wire messages) and ``fleet.core`` (sans-I/O domain: statuses,
   state machines, output bookkeeping, request validation).
2. ``fleet.agent`` (the daemon on every VPS; never imports ``fleet.server``) and the ``fleet``
   CLI: ``fleet.client`` (the REST client), ``fleet.watch`` (the live feed), ``fleet.console``
   (printing), ``fleet.commands`` and ``fleet.cli`` (flags and dispatch); none of them imports
   ``fleet.server``.
3. ``fleet.server.config``, ``fleet.server.agents``, ``fleet.server.records``,
   ``fleet.server.schema``, ``fleet.server.store``,
   ``fleet.server.dbthread``, ``fleet.server.feed``, ``fleet.server.logs``,
   ``fleet.server.openapi``
4. ``fleet.server.views``, ``fleet.server.writeback``
5. ``fleet.server.batchrun``
6. ``fleet.server.supervisor``
7. ``fleet.server.rpc``, ``fleet.server.api``, ``fleet.server.api_inventory``,
   ``fleet.server.api_batches``
8. ``fleet.server.demo``, ``fleet.server.serve``
9. ``fleet.server.cli``

Only ``fleet.server.rpc`` and ``fleet.agent.link`` touch asyncio (grpclib runs there, hosted in
trio through trio-asyncio).
"""

from __future__ import annotations

__version__ = "0.1.0"
