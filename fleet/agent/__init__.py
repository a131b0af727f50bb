"""The Fleet agent: a light daemon on every VPS that runs the server's commands.

Modules, lowest layer first (a module only imports those before it):

- ``config``: :class:`AgentConfig` and :class:`Secret` (no I/O at import).
- ``host``: what the handshake says about this machine.
- ``backoff``: reconnect delays.
- ``outbox``: output, acks and results owed to the server, kept across reconnects.
- ``journal``: the journal's records and how they replay (no I/O).
- ``statedir``: the state directory: its lock, the journal file, compaction.
- ``orphans``: finds and stops the processes of commands a previous agent process left.
- ``runner``: runs one command in its own process group.
- ``metrics``: what the agent counts, and ``--metrics`` (prometheus-client, imported only then).
- ``link``: the gRPC stream (grpclib in trio via trio-asyncio): the only asyncio module.
- ``run``: :func:`run_agent`, the reconnect loop and the per-command tasks.
- ``cli``: ``fleet-agent`` / ``python -m fleet.agent``.

The agent never imports ``fleet.server`` nor the server's dependencies (Quart, Hypercorn, Pony):
``pip install fleet-run`` is enough to run it. This package only re-exports the configuration
types; import :func:`fleet.agent.run.run_agent` from its module so that importing the config
does not import grpclib.
"""

from __future__ import annotations

from .config import AgentConfig as AgentConfig
from .config import ConfigError as ConfigError
from .config import Secret as Secret

__all__ = ["AgentConfig", "ConfigError", "Secret"]
