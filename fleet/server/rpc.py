"""The gRPC island: the agent stream service, grpclib hosted in trio through trio-asyncio.

This module and ``fleet.agent.link`` are the only ones that touch asyncio. The island is small
and talks to the trio side only through **synchronous** calls, in both directions, so a message
never pays for a trio↔asyncio crossing (STACK-NOTES: a crossing costs hundreds of µs):

* receiving: one asyncio handler per stream reads messages and hands each to the synchronous
  ``AgentHooks.message`` (the supervisor's router) on the spot;
* sending: trio code calls ``session.send(message)``, which puts the message on the stream's
  ``asyncio.Queue`` without blocking; one asyncio writer per stream drains it.

Session rules (SPEC §1): the first message must be ``agent_handshake`` with valid credentials,
answered by ``ServerHandshakeAck`` (refusals are answered, then the stream ends); every later
message must carry the same ``vps_db_id`` and secret, else the stream is closed; a newer stream
for the same VPS replaces the older one (``AgentRegistry.attach``).

Shutdown (STACK-NOTES): grpclib's ``Server.close()`` cancels handlers, and a cancelled handler
sends no trailers, which leaves keepalive clients hanging. ``serve`` therefore ends every session
itself with status UNAVAILABLE, waits (bounded) for the handlers to finish, then closes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import betterproto2
import grpclib.const
import grpclib.server
import trio
import trio_asyncio
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from fleet.proto import agent_service as pb

from .agents import AgentInfo, AgentRegistry, Credentials, SessionClosed
from .config import ServerConfig

__all__ = ["METHOD_PATH", "AgentHooks", "RpcServer", "open_loop", "serve"]

logger = logging.getLogger(__name__)

METHOD_PATH = "/agent_service.AgentCommunicationService/EstablishCommunicationStream"
_WRITE_BATCH = 256


class _Codec(ProtoCodec):
    """grpclib's protobuf codec, but a frame that does not parse is the peer's error
    (INVALID_ARGUMENT, logged at info) rather than an application error with a traceback."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # betterproto2 raises several types on garbage
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"malformed {message_type.__name__}: {exc!r}"[:200]
            ) from exc


def open_loop() -> Any:
    """The asyncio loop that hosts grpclib inside trio: ``async with rpc.open_loop():`` once,
    at the top of the trio run, around ``serve`` (and any in-process agents)."""
    return trio_asyncio.open_loop()


class AgentHooks(Protocol):
    """What the island calls, synchronously, on the trio thread."""

    def connected(self, session: _Session, info: AgentInfo) -> None: ...

    def message(self, session: _Session, message: pb.MessageToServer) -> None: ...

    def disconnected(self, session: _Session) -> None: ...


@dataclass(frozen=True)
class _Close:
    status: Status
    reason: str


class _Session:
    """One authenticated agent stream (implements ``fleet.server.agents.AgentSession``)."""

    def __init__(self, vps_id: int, secret: str, peer: str) -> None:
        self.vps_id = vps_id
        self.peer = peer
        self._secret = secret
        self._queue: asyncio.Queue[pb.MessageToAgent | _Close] = asyncio.Queue()
        self._closed = False
        self._next_id = 1

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: pb.MessageToAgent) -> None:
        if self._closed:
            raise SessionClosed(f"vps={self.vps_id} stream is closed")
        message.server_message_id = self._next_id
        self._next_id += 1
        self._queue.put_nowait(message)

    def close(self, reason: str, status: Status = Status.UNAVAILABLE) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_Close(status, reason))

    def same_credentials(self, message: pb.MessageToServer) -> bool:
        return message.vps_db_id == self.vps_id and hmac.compare_digest(
            message.agent_secret.encode("utf-8", "surrogatepass"),
            self._secret.encode("utf-8", "surrogatepass"),
        )

    async def write(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        """Drain the queue into the stream until closed (asyncio side)."""
        try:
            await self._write(stream)
        except (StreamTerminatedError, StreamClosedError, ConnectionError) as exc:
            self._closed = True
            logger.debug("vps=%s stream gone while writing: %r", self.vps_id, exc)

    async def _write(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while not isinstance(batch[-1], _Close) and len(batch) < _WRITE_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            for entry in batch:
                if isinstance(entry, _Close):
                    self._closed = True
                    await stream.send_trailing_metadata(
                        status=entry.status, status_message=entry.reason
                    )
                    return
                await stream.send_message(entry)


def _info(handshake: pb.AgentHandshake) -> AgentInfo:
    try:
        os_type = pb.OsType(handshake.os_type).name
    except ValueError:
        os_type = "OTHER"
    return AgentInfo(
        hostname=handshake.hostname[:255],
        os_type=os_type,
        os_name=handshake.os_name[:255],
        arch=handshake.arch[:64],
        kernel_version=handshake.kernel_version[:255],
        agent_version=handshake.agent_version[:64],
        open_command_ids=(
            frozenset(handshake.open_command_ids) if handshake.open_command_ids_complete else None
        ),
    )


def _ack(ok: bool, error: str = "") -> pb.MessageToAgent:
    return pb.MessageToAgent(
        server_handshake_ack=pb.ServerHandshakeAck(
            authentication_successful=ok,
            error_message=error,
            server_time_unix_ms=int(time.time() * 1000),
        )
    )


class RpcServer:
    """The ``AgentCommunicationService``: authenticates streams and runs their sessions."""

    def __init__(
        self,
        config: ServerConfig,
        credentials: Credentials,
        registry: AgentRegistry,
        hooks: AgentHooks,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._registry = registry
        self._hooks = hooks
        self._handlers: set[asyncio.Task[Any]] = set()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            METHOD_PATH: grpclib.const.Handler(
                self._handle,
                grpclib.const.Cardinality.STREAM_STREAM,
                pb.MessageToServer,
                pb.MessageToAgent,
            )
        }

    async def _handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._session(stream)
        except (StreamTerminatedError, ConnectionError) as exc:
            logger.debug("agent stream ended: %s", exc)
        except GRPCError as exc:  # a malformed frame: end this stream with its status
            logger.info("agent stream ended: %s %s", exc.status.name, exc.message)
            raise
        finally:
            self._handlers.discard(task)

    async def _session(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        peer = _peer(stream)
        try:
            first = await asyncio.wait_for(
                stream.recv_message(), timeout=self._config.handshake_timeout_s
            )
        except TimeoutError:
            logger.info("peer=%s no handshake within %s s", peer, self._config.handshake_timeout_s)
            await stream.send_trailing_metadata(
                status=Status.DEADLINE_EXCEEDED, status_message="no handshake"
            )
            return
        if first is None:
            return
        refusal = self._check_handshake(first)
        if refusal is not None:
            logger.warning("peer=%s vps=%s handshake refused: %s", peer, first.vps_db_id, refusal)
            await stream.send_message(_ack(False, refusal))
            # Non-OK trailers reset the stream at once (grpclib), and the peer would then
            # lose the answer it has not read: give it a moment to read it and hang up.
            await _drain(stream, timeout=2.0)
            await stream.send_trailing_metadata(
                status=Status.UNAUTHENTICATED, status_message=refusal
            )
            return
        assert first.agent_handshake is not None
        session = _Session(first.vps_db_id, first.agent_secret, peer)
        await stream.send_message(_ack(True))
        self._registry.attach(session)
        logger.info("vps=%s peer=%s agent connected", session.vps_id, peer)
        writer = asyncio.ensure_future(session.write(stream))
        try:
            self._hooks.connected(session, _info(first.agent_handshake))
            await self._read(stream, session, writer)
        finally:
            self._registry.detach(session)
            self._hooks.disconnected(session)
            session.close("session ended")
            if not writer.done():
                try:
                    await asyncio.wait_for(asyncio.shield(writer), timeout=2)
                except (TimeoutError, StreamTerminatedError, ConnectionError):
                    writer.cancel()
            logger.info("vps=%s peer=%s agent disconnected", session.vps_id, peer)

    async def _read(
        self,
        stream: grpclib.server.Stream[Any, Any],
        session: _Session,
        writer: asyncio.Future[None],
    ) -> None:
        receive = asyncio.ensure_future(stream.recv_message())
        try:
            while True:
                done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
                if writer in done:
                    return  # the session was closed from the trio side
                message = receive.result()
                if message is None:
                    return  # the agent ended its side of the stream
                if not session.same_credentials(message):
                    logger.warning(
                        "vps=%s peer=%s credentials changed mid-stream (vps_db_id=%s); closing",
                        session.vps_id,
                        session.peer,
                        message.vps_db_id,
                    )
                    session.close("credentials changed mid-stream", Status.PERMISSION_DENIED)
                    return
                try:
                    self._hooks.message(session, message)
                except Exception:  # the outermost boundary: one bad report is not the stream's end
                    logger.exception(
                        "vps=%s a report could not be handled; dropped", session.vps_id
                    )
                receive = asyncio.ensure_future(stream.recv_message())
        finally:
            if not receive.done():
                receive.cancel()
            elif not receive.cancelled():
                receive.exception()  # retrieved: the stream's end is reported elsewhere

    def _check_handshake(self, message: pb.MessageToServer) -> str | None:
        field, _ = betterproto2.which_one_of(message, "payload")
        if field != "agent_handshake":
            return "the first message must be an agent_handshake"
        if message.vps_db_id <= 0 or not self._credentials.verify(
            message.vps_db_id, message.agent_secret
        ):
            return "unknown VPS id or wrong agent secret"
        return None

    def end_sessions(self, reason: str) -> None:
        for session in self._registry.sessions():
            session.close(reason)

    async def wait_handlers(self, timeout: float) -> None:
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)


async def _drain(stream: grpclib.server.Stream[Any, Any], *, timeout: float) -> None:
    """Wait (bounded) until the peer ends its side of the stream."""

    async def until_end() -> None:
        while await stream.recv_message() is not None:
            pass

    try:
        await asyncio.wait_for(until_end(), timeout=timeout)
    except (TimeoutError, StreamTerminatedError, ConnectionError):
        pass


def _peer(stream: grpclib.server.Stream[Any, Any]) -> str:
    try:
        addr = stream.peer.addr()
    except (AttributeError, OSError):  # pragma: no cover - peer info is best effort
        return "?"
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    context.set_alpn_protocols(["h2"])
    return context


async def serve(
    config: ServerConfig,
    credentials: Credentials,
    registry: AgentRegistry,
    hooks: AgentHooks,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve agent streams until cancelled. Must run inside ``trio_asyncio.open_loop()``.

    Supports ``nursery.start``: ``started()`` gets the bound gRPC port. On cancellation every
    session ends with UNAVAILABLE (so agents reconnect elsewhere or later), the handlers are
    given ``shutdown_grace_s`` to finish, then the listener closes.
    """
    host, port = config.grpc_endpoint
    sock = _bind(host, port)
    service = RpcServer(config, credentials, registry, hooks)
    server = await trio_asyncio.aio_as_trio(_start)(service, sock, config)
    try:
        task_status.started(sock.getsockname()[1])
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(config.shutdown_grace_s + 1, shield=True):
            service.end_sessions("the server is shutting down")
            await trio_asyncio.aio_as_trio(_stop)(service, server, config.shutdown_grace_s)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _start(
    service: RpcServer, sock: socket.socket, config: ServerConfig
) -> grpclib.server.Server:
    server = grpclib.server.Server(
        [service],
        codec=_Codec(),
        config=Configuration(
            _keepalive_time=config.keepalive_s,
            _keepalive_timeout=config.keepalive_timeout_s,
            _keepalive_permit_without_calls=True,
            _http2_max_pings_without_data=0,
        ),
    )
    await server.start(sock=sock, backlog=4096, ssl=_tls_context(config))
    return server


async def _stop(service: RpcServer, server: grpclib.server.Server, grace: float) -> None:
    await service.wait_handlers(grace)
    server.close()
    await server.wait_closed()
