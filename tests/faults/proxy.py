"""A loopback TCP proxy between agents and the server's gRPC port, for network faults.

``reset()`` closes every forwarded connection on both sides with an RST (``SO_LINGER`` 0), as
a broken route or a rebooted middlebox does; ``stall()`` stops forwarding in both directions
while keeping every socket open, as a black-holed link does (only keepalive can notice it).
While cut (``cut(stall=…)`` until ``heal()``) new connections are reset at once, or accepted
and left silent when stalled. ``upstream`` can change (a restarted server listens on a new
port); a connection the upstream refuses is closed.
"""

from __future__ import annotations

import socket
import struct

import trio

_CHUNK = 65536


class Proxy:
    def __init__(self) -> None:
        self.upstream: tuple[str, int] | None = None
        self.port = 0
        self._links: set[tuple[trio.SocketStream, trio.SocketStream]] = set()
        self._pending: set[trio.SocketStream] = set()
        self._flowing = trio.Event()
        self._flowing.set()
        self._refusing = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        """RST every forwarded connection, both sides."""
        for client, server in list(self._links):
            _rst(client)
            _rst(server)
        for client in list(self._pending):
            _rst(client)

    def cut(self, *, stall: bool) -> None:
        """Start a network cut: stall (sockets kept, nothing forwarded) or reset."""
        if stall:
            self._flowing = trio.Event()
        else:
            self._refusing = True
            self.reset()

    def heal(self) -> None:
        self._refusing = False
        self._flowing.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self._refusing or self.upstream is None:
            _rst(client)
            return
        self._pending.add(client)
        try:
            await self._flowing.wait()  # a stalled network: the connection hangs
            if self._refusing:
                _rst(client)
                return
            try:
                server = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                _rst(client)
                return
        finally:
            self._pending.discard(client)
        link = (client, server)
        self._links.add(link)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            _rst(client)
            _rst(server)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.receive_some(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


def _rst(stream: trio.SocketStream) -> None:
    """Close ``stream`` with an RST (no FIN), at once."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()
