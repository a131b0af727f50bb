"""What both ends of the agent protocol share beyond the generated messages of ``fleet.proto``.

``METHOD_PATH`` is the one gRPC method (a bidirectional stream) an agent opens on the server;
``open_loop`` is the asyncio loop that hosts grpclib inside trio. Together with
``fleet.server.rpc`` and ``fleet.agent.link`` (its two users) this is the only code that touches
asyncio: everything else is plain trio.
"""

from __future__ import annotations

from typing import Any, Final

import trio_asyncio

__all__ = ["METHOD_PATH", "open_loop"]

METHOD_PATH: Final = "/agent_service.AgentCommunicationService/EstablishCommunicationStream"
"""``/{package}.{service}/{method}`` of the protocol's one RPC, a bidirectional stream."""


def open_loop() -> Any:
    """The asyncio loop that hosts grpclib inside trio: ``async with open_loop():`` once, at the
    top of the trio run, around the gRPC server or any number of agents."""
    return trio_asyncio.open_loop()
