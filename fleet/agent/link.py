"""The agent's stream to the server: grpclib hosted in trio through trio-asyncio.

This is the only agent module that touches asyncio or grpclib (trio-asyncio's advice: keep the
two domains rigidly separate). The rest of the agent sees a trio-native :class:`Link` with
``send()`` / ``receive()``.

Theory of operation: crossing between trio and asyncio is what costs, so a link crosses
rarely (STACK-NOTES "Bridging trio and grpclib")::

    trio side                                asyncio side (the trio-asyncio loop)
    Link.send() -> outgoing memory channel
    writer task: drains the channel and      _send_batch(): the batch's messages framed
      crosses once per *batch* ------------>   together, one HTTP/2 DATA send per ~1 MiB
    reader task: crosses once for the        _converse(): connect, handshake, then
      whole life of the stream ------------>   recv_message() in a loop, handing each message
    Link.receive() <- incoming channel <----   to a synchronous dispatcher (send_nowait)

asyncio code here only calls trio's synchronous APIs (``send_nowait``, ``Event.set``); it never
awaits a trio object.

Every message from the server is read by ``_receive``: at most ``MAX_MESSAGE_BYTES`` (checked on
the gRPC length prefix before the body is read, so a hostile server cannot make the agent buffer
what it declares), decoded, and checked against the schema (``fleet.wellformed``); anything else
ends the link with a :class:`LinkError`.

Every outgoing message is stamped here with ``vps_db_id``, ``agent_secret`` and an increasing
``client_message_id`` (the counter is the caller's, so ids keep increasing across reconnects).

Loggers: ``fleet.agent.link`` (connection failures are the caller's to log).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import betterproto2
import h2.exceptions
import trio
import trio_asyncio
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from fleet.proto import agent_service as pb
from fleet.wellformed import problem
from fleet.wire import METHOD_PATH, framed, open_loop

from .config import AgentConfig

__all__ = [
    "MAX_MESSAGE_BYTES",
    "METHOD_PATH",
    "HandshakeRefused",
    "Link",
    "LinkError",
    "check_asyncio_loop",
    "open_link",
    "open_loop",
]

#: Messages queued for the writer; a full queue makes ``send()`` wait (backpressure).
OUTGOING_CAPACITY = 32
#: Most messages sent per trio -> asyncio crossing.
MAX_BATCH = 64
#: Messages received but not yet taken by ``receive()``; overflowing it drops the link.
INCOMING_CAPACITY = 4096
#: The largest message accepted from the server (SPEC §7).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# What a broken or refused connection raises out of grpclib / the socket layer.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionError, TimeoutError, ssl.SSLError, socket.gaierror
    GRPCError,
    StreamTerminatedError,
    ProtocolError,
    h2.exceptions.H2Error,
)


class LinkError(Exception):
    """The connection to the server failed or broke; the external cause is in ``__cause__``."""


class HandshakeRefused(LinkError):
    """The server answered the handshake with ``authentication_successful=false``.

    Attributes:
        reason: the server's ``error_message``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the server refused the handshake: {reason or '(no reason given)'}")
        self.reason = reason


class Link:
    """One authenticated stream to the server, used from trio.

    Built and owned by :func:`open_link`; valid only inside its ``async with`` block.

    Attributes:
        handshake_ack: the server's answer to the handshake.
        messages_sent: messages handed to grpclib so far.
        batches_sent: trio -> asyncio crossings the writer made for them.
        messages_received: messages read from the server.
    """

    def __init__(self, config: AgentConfig, message_ids: Iterator[int]) -> None:
        self._config = config
        self._message_ids = message_ids
        self._secret = config.secret.reveal()
        self._outgoing_send, self._outgoing_receive = trio.open_memory_channel[pb.MessageToServer](
            OUTGOING_CAPACITY
        )
        self._incoming_send, self._incoming_receive = trio.open_memory_channel[pb.MessageToAgent](
            INCOMING_CAPACITY
        )
        self._ready = trio.Event()
        self._failure: LinkError | None = None
        self._scope: trio.CancelScope | None = None
        self._stream: Stream[pb.MessageToServer, pb.MessageToAgent] | None = None
        self.handshake_ack = pb.ServerHandshakeAck()
        self.messages_sent = 0
        self.batches_sent = 0
        self.messages_received = 0

    async def send(self, message: pb.MessageToServer) -> None:
        """Queue ``message`` (its payload set) for the server, stamped with the credentials.

        Waits while the outgoing queue is full, i.e. while the network is slower than the
        producer. Returning does not mean the server received it. Cancellation leaves the
        message unsent.
        """
        await self._outgoing_send.send(self._stamp(message))

    async def receive(self) -> pb.MessageToAgent:
        """Return the next message from the server.

        Raises:
            trio.EndOfChannel: the link failed; leaving the ``open_link`` block raises why.
        """
        return await self._incoming_receive.receive()

    def __aiter__(self) -> Link:
        return self

    async def __anext__(self) -> pb.MessageToAgent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # -- internals ---------------------------------------------------------------------------

    def _stamp(self, message: pb.MessageToServer) -> pb.MessageToServer:
        message.client_message_id = next(self._message_ids)
        message.vps_db_id = self._config.vps_id
        message.agent_secret = self._secret
        return message

    def _fail(self, error: LinkError) -> None:
        """Record why the link ended (first reason wins) and stop its tasks and user."""
        if self._failure is None:
            self._failure = error
        self._ready.set()
        self._incoming_send.close()
        if self._scope is not None:
            self._scope.cancel()

    async def _read(self, handshake: pb.MessageToServer) -> None:
        """Trio task: run the whole asyncio side of the stream in one crossing."""
        try:
            await trio_asyncio.aio_as_trio(self._converse)(handshake)
        except LinkError as error:
            self._fail(error)
        except _TRANSPORT_ERRORS as error:
            self._fail(_link_error(error))
        except asyncio.CancelledError as error:
            # trio-asyncio turns a *trio* cancellation into trio.Cancelled; a bare asyncio
            # CancelledError means grpclib tore the connection down under us.
            self._fail(_link_error(error))
        else:  # pragma: no cover - _converse only ends by raising
            self._fail(LinkError("the stream ended"))

    async def _write(self) -> None:
        """Trio task: drain the outgoing channel, one crossing per batch."""
        while True:
            batch = [await self._outgoing_receive.receive()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._outgoing_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await trio_asyncio.aio_as_trio(self._send_batch)(batch)
            except LinkError as error:
                self._fail(error)
                return
            except _TRANSPORT_ERRORS as error:
                self._fail(_link_error(error))
                return
            except asyncio.CancelledError as error:
                self._fail(_link_error(error))
                return
            self.batches_sent += 1

    async def _send_batch(self, batch: list[pb.MessageToServer]) -> None:
        """asyncio: send each message of ``batch`` in order."""
        stream = self._stream
        if stream is None:
            raise LinkError("the stream is closed")
        # One DATA send per buffer of messages rather than one per message (``framed``):
        # grpclib's ``send_message`` would frame each alone. Writes grpclib's protocol stream
        # (``Stream._stream``) under the stream's wrapper, as ``_receive`` reads it.
        with stream._wrapper:
            for data in framed(batch):
                await stream._stream.send_data(data)
        self.messages_sent += len(batch)

    async def _converse(self, handshake: pb.MessageToServer) -> None:
        """asyncio: connect, handshake, then hand every server message to trio until the end.

        Always raises: :class:`HandshakeRefused`, :class:`LinkError`, or a transport error.
        """
        channel = Channel(
            self._config.host,
            self._config.port,
            ssl=_ssl_context(self._config),
            config=_grpc_configuration(self._config),
        )
        try:
            stream = channel.request(
                METHOD_PATH, Cardinality.STREAM_STREAM, pb.MessageToServer, pb.MessageToAgent
            )
            async with stream:
                try:
                    await stream.send_message(handshake)
                except AttributeError as error:
                    # grpclib 0.4.9: a connection lost between its connect and the stream's
                    # creation (a server or proxy accepting and closing at once, e.g. while
                    # the server restarts) leaves its Connection without ``_transport``. Only
                    # that one is a lost connection; any other AttributeError is a bug.
                    if "_transport" not in str(error):
                        raise
                    raise LinkError("the connection was lost as it opened") from error
                self.messages_sent += 1
                await stream.recv_initial_metadata()  # _receive reads messages only
                first = await _receive(stream)
                if first is None:
                    raise LinkError("the server closed the stream without answering the handshake")
                name, ack = betterproto2.which_one_of(first, "payload")
                if not isinstance(ack, pb.ServerHandshakeAck):
                    raise LinkError(f"expected a handshake answer, got {name or 'no payload'}")
                if not ack.authentication_successful:
                    raise HandshakeRefused(ack.error_message)
                self.handshake_ack = ack
                self._stream = stream
                self._ready.set()
                while (message := await _receive(stream)) is not None:
                    self.messages_received += 1
                    try:
                        self._incoming_send.send_nowait(message)
                    except trio.WouldBlock:
                        raise LinkError(
                            f"the server sent over {INCOMING_CAPACITY} messages the agent "
                            "has not processed yet"
                        ) from None
                # The server ended its side: end ours and read its status (a non-OK status
                # raises GRPCError here).
                await stream.end()
                await stream.recv_trailing_metadata()
                raise LinkError("the server ended the stream")
        finally:
            self._stream = None
            channel.close()


def check_asyncio_loop() -> None:
    """Raise a clear error unless called inside ``trio_asyncio.open_loop()``.

    Raises:
        RuntimeError: there is no trio-asyncio loop to host grpclib.
    """
    if trio_asyncio.current_loop.get() is None:
        raise RuntimeError(
            "the agent's link needs a trio-asyncio loop: "
            "run it inside `async with trio_asyncio.open_loop():`"
        )


@asynccontextmanager
async def open_link(
    config: AgentConfig,
    handshake: pb.AgentHandshake,
    message_ids: Iterator[int],
) -> AsyncIterator[Link]:
    """Connect to ``config.server``, handshake, and yield the :class:`Link`.

    Must run inside ``trio_asyncio.open_loop()``. Owns a nursery with the link's reader and
    writer tasks and the grpclib channel; leaving the block closes them all.

    If the link breaks while the block runs, the block is cancelled and leaving it raises
    :class:`LinkError` (its ``__cause__`` is the grpclib/socket error). Cancelling from outside
    closes the connection and propagates the cancellation.

    Args:
        config: the agent's configuration (server address, credentials, TLS, keepalive).
        handshake: what to tell the server about this machine.
        message_ids: source of ``client_message_id`` values (shared across reconnects).

    Raises:
        HandshakeRefused: the server refused the credentials.
        LinkError: connecting failed, timed out (``connect_timeout_s``), or the link broke.
    """
    link = Link(config, message_ids)
    async with trio.open_nursery() as nursery:
        link._scope = nursery.cancel_scope
        nursery.start_soon(link._read, link._stamp(pb.MessageToServer(agent_handshake=handshake)))
        with trio.move_on_after(config.connect_timeout_s):
            await link._ready.wait()
        if not link._ready.is_set():
            link._fail(LinkError(f"no handshake answer within {config.connect_timeout_s:g} s"))
        if link._failure is None:
            nursery.start_soon(link._write)
            try:
                yield link
            finally:
                nursery.cancel_scope.cancel()
        else:
            nursery.cancel_scope.cancel()
    if link._failure is not None:
        raise link._failure


def _link_error(error: BaseException) -> LinkError:
    if isinstance(error, GRPCError):
        detail = f": {error.message}" if error.message else ""
        text = f"the server ended the stream with {error.status.name}{detail}"
    elif isinstance(error, StreamTerminatedError):
        text = f"the stream was terminated: {error}"
    elif isinstance(error, asyncio.CancelledError):
        text = "the connection was torn down"
    elif isinstance(error, OSError):
        text = f"connection failed: {error.strerror or error}"
    else:
        text = f"protocol error: {error}"
    result = LinkError(text)
    result.__cause__ = error
    return result


async def _receive(
    stream: Stream[pb.MessageToServer, pb.MessageToAgent],
) -> pb.MessageToAgent | None:
    """The next message from the server (None: it ended its side), at most MAX_MESSAGE_BYTES.

    ``grpclib``'s ``recv_message`` reads whatever length the 5-byte gRPC prefix declares (its
    ``Buffer.read`` acknowledges flow control chunk by chunk), so the limit is checked here on
    the prefix before the body is read; what the server sent meanwhile stays in the HTTP/2
    stream window and goes with the stream. Reads grpclib's protocol stream and its wrapper
    (``Stream._stream``, ``Stream._wrapper``, which wakes this read if the connection dies):
    grpclib has no public way to read a prefix (``tests/agent/test_link_limits.py`` fails if
    an upgrade moves them). Call ``recv_initial_metadata()`` once before the first read.

    Raises:
        LinkError: over the limit, compressed, cut off, undecodable or malformed.
    """
    with stream._wrapper:
        data = stream._stream
        try:
            prefix = await data.recv_data(5)
            if not prefix:
                return None
            compressed, length = struct.unpack(">BI", prefix)
            if compressed:
                raise LinkError("the server sent a compressed message (not supported)")
            if length > MAX_MESSAGE_BYTES:
                raise LinkError(
                    f"the server sent a message of {length} bytes, over the limit of "
                    f"{MAX_MESSAGE_BYTES} (RESOURCE_EXHAUSTED)"
                )
            body = await data.recv_data(length)
        except AssertionError as error:  # grpclib's Buffer.read: the stream ended mid-message
            raise LinkError("the server's stream ended inside a message") from error
    try:
        message = pb.MessageToAgent.FromString(body)
    except Exception as error:  # betterproto2 raises several types on garbage
        raise LinkError("the server sent a message that does not decode") from error
    found = problem(message)
    if found is not None:
        raise LinkError(f"the server sent a malformed message ({found})")
    return message


def _grpc_configuration(config: AgentConfig) -> Configuration:
    # Keepalive is off by default on grpclib clients; pings both ways are what notice a dead
    # server (or a silently dropped NAT mapping) on an otherwise idle stream.
    return Configuration(
        _keepalive_time=config.keepalive_time_s,
        _keepalive_timeout=config.keepalive_timeout_s,
        _keepalive_permit_without_calls=True,
        _http2_max_pings_without_data=0,
        # Half the interval, so timer jitter never makes grpclib skip a ping.
        _http2_min_sent_ping_interval_without_data=config.keepalive_time_s / 2,
    )


def _ssl_context(config: AgentConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(config.ca_file) if config.ca_file is not None else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    # asyncio checks the certificate against the HOST part of --server.
    return context
