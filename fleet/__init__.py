"""Fleet: run a shell command or a saved script on many machines at once.

Layers (a module may only depend on modules in a strictly lower layer):

1. ``fleet.proto`` (generated wire messages) and ``fleet.core`` (sans-I/O domain: statuses,
   state machines, output summaries, request validation).
2. ``fleet.agent`` (the daemon on every VPS; never imports ``fleet.server``).
3. ``fleet.server.store``, ``fleet.server.agents``, ``fleet.server.logs``
4. ``fleet.server.supervisor``
5. ``fleet.server.api``, ``fleet.server.feed``, ``fleet.server.rpc``
6. ``fleet.server.serve``
7. ``fleet.server.cli``; ``fleet.cli`` (the REST client) depends on nothing in ``fleet.server``.

Only ``fleet.server.rpc`` and ``fleet.agent.link`` touch asyncio (grpclib runs there, hosted in
trio through trio-asyncio).
"""

from __future__ import annotations

__version__ = "0.1.0"
