"""A WebSocket client connection for the live feed that ends cleanly when a ping meets its close.

trio-websocket 0.12 answers every ping from its reader task. A ping that arrives after the client
sent its close frame (Hypercorn pings as soon as it accepts, so a batch that is already final in
the first snapshot makes this likely) makes wsproto refuse the pong with ``LocalProtocolError``,
which kills the reader; ``open_websocket_url`` then lets a ``trio.Cancelled`` of its own internal
scope escape (python-trio/trio-websocket#184, fix proposed upstream in #198). That stray
cancellation silently ends whatever encloses the feed: ``fleet run`` could stop before printing
its summary and exit with the wrong status.

``open_feed`` opens the connection in a nursery of its own and runs the reader through a guard: a
refused pong while the connection is closing ends the reader quietly (the close frame is already
on its way; nothing the caller needs is lost), and the close is time-bounded.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionTimeout, WebSocketConnection, connect_websocket_url
from wsproto.utilities import LocalProtocolError

if sys.version_info < (3, 11):  # pragma: no cover - the CLI still runs on Python 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["open_feed"]


class _GuardedNursery:
    """The one thing ``connect_websocket_url`` asks of a nursery (``start_soon`` of the reader),
    with the reader's refused pong during the close turned into the end of the reader."""

    def __init__(self, nursery: trio.Nursery, closing: trio.CancelScope) -> None:
        self._nursery = nursery
        self._closing = closing
        self.connection: WebSocketConnection | None = None

    def start_soon(self, reader: Callable[[], Awaitable[Any]]) -> None:
        self._nursery.start_soon(self._guard, reader)

    async def _guard(self, reader: Callable[[], Awaitable[Any]]) -> None:
        try:
            await reader()
        except LocalProtocolError:
            if self.connection is None or self.connection.closed is None:
                raise  # not closing: a real fault
            # Our close frame is sent; the reader that would have seen the answer is gone, so
            # stop waiting for it (the close then shuts the TCP stream).
            self._closing.cancel()


@asynccontextmanager
async def open_feed(
    url: str,
    ssl_context: ssl.SSLContext | None,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    connect_timeout: float = 30,
    disconnect_timeout: float = 5,
    **options: Any,
) -> AsyncIterator[WebSocketConnection]:
    """Like ``trio_websocket.open_websocket_url``, without the stray cancellation described above.

    Raises what ``open_websocket_url`` raises (``HandshakeError`` and its ``ConnectionTimeout``,
    ``ConnectionRejected``; ``ConnectionClosed`` from the connection), never an exception group.
    """
    closing = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            guarded = _GuardedNursery(nursery, closing)
            with trio.move_on_after(connect_timeout) as connecting:
                guarded.connection = await connect_websocket_url(
                    guarded,  # type: ignore[arg-type]  # only its start_soon is used
                    url,
                    ssl_context,
                    extra_headers=extra_headers,
                    **options,
                )
            if connecting.cancelled_caught or guarded.connection is None:
                raise ConnectionTimeout
            try:
                yield guarded.connection
            finally:
                with trio.move_on_after(disconnect_timeout, shield=True), closing:
                    await guarded.connection.aclose()
                nursery.cancel_scope.cancel()  # the reader, if the close did not end it
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the body's own exception, as open_websocket_url raises it
            raise group.exceptions[0] from None
        raise
