"""The gRPC island: the agent stream service, grpclib hosted in trio through trio-asyncio.

This module and ``fleet.agent.link`` are the only ones that touch asyncio. The island is small
and talks to the trio side only through **synchronous** calls, in both directions, so a message
never pays for a trio↔asyncio crossing (a crossing costs hundreds of µs):

* receiving: one asyncio handler per stream reads messages and hands each to the synchronous
  ``AgentHooks.message`` (the supervisor's router) on the spot;
* sending: trio code calls ``session.send(message)``, which puts the message on the stream's
  ``asyncio.Queue`` without blocking; one asyncio writer per stream drains it.

Session rules: the first message must be ``agent_handshake`` with valid credentials,
answered by ``ServerHandshakeAck`` (refusals are answered, then the stream ends); every later
message must carry the same ``vps_db_id`` and secret, else the stream is closed; a newer stream
for the same VPS replaces the older one (``AgentRegistry.attach``).

Hostile peers: a message is read by ``_receive``, which checks the length in its
5-byte gRPC prefix before reading the body (64 KiB until the handshake succeeded, then 4 MiB;
larger ends the stream RESOURCE_EXHAUSTED), so a peer cannot make the server buffer what it
declares; the HTTP/2 stream window bounds what it sends unread. Every decoded message is
checked by ``fleet.server.reports`` before anything else looks at it (INVALID_ARGUMENT), and
refused handshakes are rate-limited and logged per address (``fleet.server.handshakes``).

Shutdown: grpclib's ``Server.close()`` cancels handlers, and a cancelled handler
sends no trailers, which leaves keepalive clients hanging. ``serve`` therefore ends every session
itself with status UNAVAILABLE, waits (bounded) for the handlers to finish, then closes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import grpclib.const
import grpclib.server
import trio
import trio_asyncio
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes

from fleet.proto import agent_service as pb
from fleet.wire import METHOD_PATH, framed, open_loop

from .agents import AgentInfo, AgentRegistry, Credentials, PeerViolation, SessionClosed
from .config import ServerConfig
from .handshakes import (
    RefusedHandshakes,
    address_key,
    agent_info,
    check_handshake,
    handshake_ack,
    log_refusals,
)
from .reports import InvalidReport, check_report

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "MAX_MESSAGE_BYTES",
    "METHOD_PATH",
    "AgentHooks",
    "RpcServer",
    "open_loop",
    "serve",
]

logger = logging.getLogger(__name__)

_WRITE_BATCH = 256
#: The largest message accepted from an agent, and from a peer before its handshake succeeded.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_HANDSHAKE_BYTES = 64 * 1024
#: The largest HTTP/2 frame an authenticated agent may send (h2's default is 16 KiB).
MAX_FRAME_BYTES = 1024 * 1024


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
            close = batch[-1]
            messages = [entry for entry in batch if not isinstance(entry, _Close)]
            # The batch framed together, one HTTP/2 DATA send per ~1 MiB (``framed``), on
            # grpclib's protocol stream (``Stream._stream``; the initial metadata went with
            # the handshake answer).
            for data in framed(messages):
                await stream._stream.send_data(data)
            if isinstance(close, _Close):
                self._closed = True
                await stream.send_trailing_metadata(
                    status=close.status, status_message=close.reason
                )
                return


class RpcServer:
    """The ``AgentCommunicationService``: authenticates streams and runs their sessions."""

    def __init__(
        self,
        config: ServerConfig,
        credentials: Credentials,
        registry: AgentRegistry,
        hooks: AgentHooks,
        refusals: RefusedHandshakes | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._registry = registry
        self._hooks = hooks
        self._handlers: set[asyncio.Task[Any]] = set()
        # Not `refusals or …`: an empty RefusedHandshakes is falsy (it has a __len__).
        self.refusals = refusals if refusals is not None else RefusedHandshakes()

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
        except (StreamTerminatedError, StreamClosedError, ConnectionError) as exc:
            # The peer hung up (reset its stream or closed the connection) while the handler was
            # writing, e.g. the handshake's answer: an expected end, and grpclib has already
            # cancelled this handler for it (below).
            logger.debug("agent stream ended: %s", exc)
        except GRPCError as exc:  # before the handshake: grpclib ends the stream with its status
            logger.debug("agent stream ended: %s %s", exc.status.name, exc.message)
            raise
        finally:
            self._handlers.discard(task)
        if task.cancelling():
            # grpclib cancels the handler of a stream its peer reset or whose connection was
            # lost, and logs "Failed to handle cancellation" with a traceback (ERROR) unless the
            # handler ends with CancelledError. A handler that met the hang-up first (a write
            # raising StreamClosedError, or a read ending) must still end that way: grpclib then
            # logs the expected end as one info line ("Request was cancelled").
            raise asyncio.CancelledError

    async def _session(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        host, peer = _peer(stream)
        key = address_key(host)
        if not self.refusals.allowed(key, trio.current_time()):
            # Answered without work: no decoding, no secret hashing, no store.
            await stream.send_trailing_metadata(
                status=Status.RESOURCE_EXHAUSTED,
                status_message="too many refused handshakes from this address; retry later",
            )
            return
        # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the read finishes (a peer resetting its stream right after its handshake),
        # and the handler would go on to answer, then wait on a stream nobody will ever end.
        receive = asyncio.ensure_future(_receive(stream, MAX_HANDSHAKE_BYTES))
        try:
            await asyncio.wait({receive}, timeout=self._config.handshake_timeout_s)
        finally:
            in_time = receive.done()
            if not in_time:
                receive.cancel()
        if not in_time:
            logger.info("peer=%s no handshake within %s s", peer, self._config.handshake_timeout_s)
            await stream.send_trailing_metadata(
                status=Status.DEADLINE_EXCEEDED, status_message="no handshake"
            )
            return
        try:
            first = receive.result()
        except GRPCError as exc:  # oversized or malformed: the stream ends with its status
            self._refused(key, peer, f"{exc.status.name} {exc.message}")
            raise
        if first is None:
            return
        try:
            refusal = check_handshake(first, self._credentials)
        except InvalidReport as exc:
            self._refused(key, peer, f"malformed handshake: {exc}")
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed handshake: {exc}") from exc
        if refusal is not None:
            self._refused(key, peer, refusal)
            await stream.send_message(handshake_ack(False, refusal))
            # Non-OK trailers reset the stream at once (grpclib), and the peer would then
            # lose the answer it has not read: give it a moment to read it and hang up.
            await _drain(stream, timeout=2.0)
            await stream.send_trailing_metadata(
                status=Status.UNAUTHENTICATED, status_message=refusal
            )
            return
        assert first.agent_handshake is not None
        session = _Session(first.vps_db_id, first.agent_secret, peer)
        _accept_big_frames(stream)
        await stream.send_message(handshake_ack(True))
        self._registry.attach(session)
        logger.info("vps=%s peer=%s agent connected", session.vps_id, peer)
        writer = asyncio.ensure_future(session.write(stream))
        try:
            self._hooks.connected(session, agent_info(first.agent_handshake))
            await self._read(stream, session, writer)
        finally:
            self._registry.detach(session)
            self._hooks.disconnected(session)
            session.close("session ended")
            try:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                # that arrives as the writer finishes, and grpclib then logs an ERROR traceback
                # ("Failed to handle cancellation") for every peer that hangs up at that moment.
                await asyncio.wait({writer}, timeout=2)
            finally:
                writer.cancel()
                logger.info("vps=%s peer=%s agent disconnected", session.vps_id, peer)

    def _refused(self, key: str, peer: str, why: str) -> None:
        if self.refusals.refused(key, trio.current_time()):
            logger.warning(
                "peer=%s handshake refused: %s (more from %s are counted and logged once a minute)",
                peer,
                why,
                key,
            )

    async def _read(
        self,
        stream: grpclib.server.Stream[Any, Any],
        session: _Session,
        writer: asyncio.Future[None],
    ) -> None:
        receive: asyncio.Future[Any] = asyncio.ensure_future(_receive(stream, MAX_MESSAGE_BYTES))
        try:
            while True:
                done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
                if writer in done:
                    return  # the session was closed from the trio side
                try:
                    message = receive.result()
                except GRPCError as exc:  # oversized or undecodable: the writer ends the stream
                    self._end(session, exc.status, exc.message or exc.status.name)
                    return
                if message is None:
                    return  # the agent ended its side of the stream
                try:
                    check_report(message)
                except InvalidReport as exc:
                    self._end(session, Status.INVALID_ARGUMENT, f"impossible report: {exc}")
                    return
                if not session.same_credentials(message):
                    self._end(session, Status.PERMISSION_DENIED, "credentials changed mid-stream")
                    return
                try:
                    self._hooks.message(session, message)
                except PeerViolation as exc:
                    self._end(session, Status.INVALID_ARGUMENT, str(exc))
                    return
                except Exception:  # the outermost boundary: one bad report is not the stream's end
                    logger.exception(
                        "vps=%s a report could not be handled; dropped", session.vps_id
                    )
                receive = asyncio.ensure_future(_receive(stream, MAX_MESSAGE_BYTES))
        finally:
            if not receive.done():
                receive.cancel()
            elif not receive.cancelled():
                receive.exception()  # retrieved: the stream's end is reported elsewhere

    @staticmethod
    def _end(session: _Session, status: Status, reason: str) -> None:
        logger.warning(
            "vps=%s peer=%s %s: %s; closing", session.vps_id, session.peer, status.name, reason
        )
        session.close(reason, status)

    def end_sessions(self, reason: str) -> None:
        for session in self._registry.sessions():
            session.close(reason)

    async def wait_handlers(self, timeout: float) -> None:
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)


async def _drain(stream: grpclib.server.Stream[Any, Any], *, timeout: float) -> None:
    """Wait (bounded) until the peer ends its side of the stream."""

    async def until_end() -> None:
        while await _receive(stream, MAX_HANDSHAKE_BYTES) is not None:
            pass

    try:
        await asyncio.wait_for(until_end(), timeout=timeout)
    except (TimeoutError, GRPCError, StreamTerminatedError, ConnectionError):
        pass


def _accept_big_frames(stream: grpclib.server.Stream[Any, Any]) -> None:
    """Let an authenticated agent send DATA frames of up to ``MAX_FRAME_BYTES``.

    HTTP/2's default (16 KiB) cuts a 256 KiB output chunk into 17 frames, and each frame costs
    both ends pure-Python work in h2 and grpclib; the stream window still bounds what is in
    flight. Raised only after the handshake, so an unauthenticated peer cannot make the server
    buffer a big frame. grpclib has no setting for it: this sends h2's SETTINGS on the stream's
    connection (``tests/integration/test_grpc_frames.py`` and ``test_hostile_grpc.py`` fail if an
    upgrade moves them).
    """
    protocol_stream = stream._stream
    h2_connection = protocol_stream._h2_connection
    if h2_connection.max_inbound_frame_size < MAX_FRAME_BYTES:
        # Accepted from now on, not only once the peer acknowledges the SETTINGS: h2 (4.4.1)
        # sets its frame buffer's limit once per `receive_data` call, so a read holding the
        # peer's SETTINGS ACK and its first big frame would otherwise fail the connection.
        h2_connection.max_inbound_frame_size = MAX_FRAME_BYTES
        h2_connection.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_BYTES})
        protocol_stream.connection.flush()


def _peer(stream: grpclib.server.Stream[Any, Any]) -> tuple[str, str]:
    """The peer's host and ``host:port`` (``?`` when unknown)."""
    try:
        addr = stream.peer.addr()
    except (AttributeError, OSError):  # pragma: no cover - peer info is best effort
        return "?", "?"
    return (str(addr[0]), f"{addr[0]}:{addr[1]}") if addr else ("?", "?")


async def _receive(
    stream: grpclib.server.Stream[Any, Any], limit: int
) -> pb.MessageToServer | None:
    """The next message from the agent (None: it ended its side), at most ``limit`` bytes.

    This is ``grpclib.stream.recv_message`` with the limit checked on the 5-byte gRPC prefix
    before the body is read: grpclib's own reads the declared length whole, and its
    ``Buffer.read`` acknowledges flow control for every chunk it takes, so a peer could make
    the server buffer any length it declares. Here nothing past the prefix is read when the
    length is over ``limit``; what the peer sent meanwhile stays unacknowledged in h2's stream
    window (``Configuration.http2_stream_window_size``) and is dropped with the stream.

    Reads grpclib's protocol stream (``Stream._stream``): grpclib has no public way to read a
    message's prefix. ``tests/integration/test_hostile_grpc.py`` fails if an upgrade moves it.

    Raises:
        GRPCError: RESOURCE_EXHAUSTED (over the limit), INVALID_ARGUMENT (does not decode, or
            the stream ended inside a message), UNIMPLEMENTED (compressed).
    """
    data = stream._stream
    try:
        prefix = await data.recv_data(5)
        if not prefix:
            return None
        compressed, length = struct.unpack(">BI", prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if length > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"a message of {length} bytes is over the limit of {limit} bytes",
            )
        body = await data.recv_data(length)
    except AssertionError as exc:  # grpclib's Buffer.read: the stream ended mid-message
        raise GRPCError(Status.INVALID_ARGUMENT, "the stream ended inside a message") from exc
    try:
        return pb.MessageToServer.FromString(body)
    except Exception as exc:  # betterproto2 raises several types on garbage
        raise GRPCError(Status.INVALID_ARGUMENT, "the message does not decode") from exc


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
    refusals: RefusedHandshakes | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve agent streams until cancelled. Must run inside ``trio_asyncio.open_loop()``.

    Supports ``nursery.start``: ``started()`` gets the bound gRPC port. On cancellation every
    session ends with UNAVAILABLE (so agents reconnect elsewhere or later), the handlers are
    given ``shutdown_grace_s`` to finish, then the listener closes. ``refusals`` replaces the
    default rate limit of refused handshakes (tests).
    """
    host, port = config.grpc_endpoint
    sock = _bind(host, port)
    service = RpcServer(config, credentials, registry, hooks, refusals)
    server = await trio_asyncio.aio_as_trio(_start)(service, sock, config)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_refusals, service.refusals)
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
        codec=ProtoCodec(),
        config=Configuration(
            _keepalive_time=config.keepalive_s,
            _keepalive_timeout=config.keepalive_timeout_s,
            _keepalive_permit_without_calls=True,
            _http2_max_pings_without_data=0,
            # grpclib sends a ping only if the last one is older than this (default 300 s):
            # left alone, every ping after the first waited 300 s, and an agent whose network
            # went silent was noticed only minutes later. Half the interval, as the agent.
            _http2_min_sent_ping_interval_without_data=config.keepalive_s / 2,
        ),
    )
    await server.start(sock=sock, backlog=4096, ssl=_tls_context(config))
    return server


async def _stop(service: RpcServer, server: grpclib.server.Server, grace: float) -> None:
    await service.wait_handlers(grace)
    server.close()
    await server.wait_closed()
