"""What the agent still owes the server: acks, command output, and final results.

The outbox outlives connections. Commands write their output into it whether or not a link is
up; the current link's pump ``take()``s messages out of it; a new link starts by ``connect()``,
which rewinds every command so that what may have been lost with the old link goes out again.

Rules (the server relies on them):

1. Per command, messages leave in this order: its ``BatchCommandAck`` (only for a duplicate or
   a rejection) and ``BatchCommandStarted`` (control messages, sent once, oldest first; the
   start is the acceptance of a command that runs), its output chunks in the
   order they were produced (stdout and stderr interleaved), and last its
   ``BatchCommandResult``, only once every chunk before it has been taken.
2. ``offset`` is the chunk's byte position in its stream *as the server receives it*. A chunk
   gets its offset the first time it is sent and keeps it when re-sent, so the server can drop
   duplicates by offset (``fleet.core.StreamCursor``).
3. Each command keeps at most ``buffer_bytes`` of output not yet sent. While a link is up a
   writer waits for room (backpressure reaches the command's pipe); while no link is up the
   oldest unsent bytes are dropped and the first chunk after them is preceded by a visible
   marker, ``[fleet: N bytes dropped while disconnected]``, which takes its own offsets: the
   server's log stays gap-free.
4. Each command also keeps up to ``buffer_bytes`` of output already sent, re-sent after a
   reconnect (the server drops what it had). Output older than that which was in flight when a
   link broke shows up at the server as a gap.
5. A result stays until ``acknowledge(command_id)`` (the server's ``BatchResultAck``) and is
   re-sent after every reconnect. At most ``max_results`` results are kept (oldest dropped, with
   a warning); finished commands beyond ``keep_finished_output`` whose result went out give up
   their retained output (a server that never acks must not grow memory forever).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import trio

from fleet.proto import agent_service as pb

__all__ = ["DROP_MARKER", "Outbox", "OutboxStatistics", "unix_ms"]

logger = logging.getLogger(__name__)

DROP_MARKER = "\n[fleet: {} bytes dropped while disconnected]\n"


def unix_ms() -> int:
    """Wall-clock time in Unix milliseconds (the wire's timestamp unit)."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True, eq=False)
class _Chunk:
    seq: int  # production order across both streams of a command
    data: bytes
    timestamp: int
    offset: int | None  # assigned when first sent


@dataclass(slots=True, eq=False)
class _StreamBuffer:
    """One output stream of one command.

    ``chunks[:sent_count]`` have offsets (sent at least once); the rest are new. ``cursor`` is
    the next chunk to send on the current link (``<= sent_count`` after a rewind). ``dropped``
    bytes were dropped just before ``chunks[sent_count]`` and still need their marker.
    """

    kind: pb.OutputType
    chunks: deque[_Chunk] = field(default_factory=deque)
    cursor: int = 0
    sent_count: int = 0
    next_offset: int = 0
    dropped: int = 0
    dropped_seq: int = 0

    def peek(self) -> int | None:
        """Sequence number of what this stream would send next, or None."""
        if self.cursor < self.sent_count:
            return self.chunks[self.cursor].seq
        if self.dropped:
            return self.dropped_seq
        if self.cursor < len(self.chunks):
            return self.chunks[self.cursor].seq
        return None


@dataclass(slots=True, eq=False)
class _Record:
    command_id: str
    synthetic: bool = False  # an orphan result, not a command this agent ran
    streams: tuple[_StreamBuffer, ...] = ()
    new_bytes: int = 0  # not sent yet
    sent_bytes: int = 0  # sent, kept for re-sending
    dropped: int = 0
    result: pb.BatchCommandResult | None = None
    result_sent: bool = False

    @classmethod
    def for_command(cls, command_id: str) -> _Record:
        kinds = (pb.OutputType.STDOUT, pb.OutputType.STDERR)
        return cls(command_id, streams=tuple(_StreamBuffer(kind) for kind in kinds))

    def output_pending(self) -> bool:
        return any(stream.peek() is not None for stream in self.streams)


@dataclass(frozen=True)
class OutboxStatistics:
    """A snapshot of an :class:`Outbox` (for tests, benchmarks and logs)."""

    commands: int
    unacknowledged_results: int
    pending_controls: int
    unsent_bytes: int
    retained_bytes: int
    dropped_bytes: int


class Outbox:
    """Everything the agent still has to tell the server, kept across reconnects.

    Not thread-safe; used from one trio run. ``write()`` and the ``wait_*`` methods park on
    trio parking lots; everything else is synchronous.

    Args:
        buffer_bytes: per command, the unsent output kept (and, separately, the sent output
            kept for re-sending).
        max_results: results kept while waiting for their ``BatchResultAck``.
        keep_finished_output: finished commands that keep their retained output.
    """

    def __init__(self, *, buffer_bytes: int, max_results: int, keep_finished_output: int) -> None:
        self._buffer_bytes = buffer_bytes
        self._max_results = max_results
        self._keep_finished_output = keep_finished_output
        self._records: dict[str, _Record] = {}
        self._controls: deque[pb.MessageToServer] = deque()
        self._seq = itertools.count()
        self._connected = False
        self._round_robin = 0
        self._dropped_total = 0
        self._pending = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._acks = trio.lowlevel.ParkingLot()

    # -- link state --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``disconnect()``."""
        return self._connected

    def connect(self) -> None:
        """A new link is up: rewind every command and results so all of it goes out again."""
        for record in self._records.values():
            record.result_sent = False
            for stream in record.streams:
                stream.cursor = 0
        self._connected = True
        self._pending.unpark_all()

    def disconnect(self) -> None:
        """The link is gone: writers stop waiting for room and drop the oldest bytes instead."""
        self._connected = False
        self._space.unpark_all()

    # -- what commands report ----------------------------------------------------------------

    def add_control(self, message: pb.MessageToServer) -> None:
        """Queue an ack or started message; sent once, before any command's output."""
        self._controls.append(message)
        self._pending.unpark_all()

    def open(self, command_id: str) -> None:
        """Start keeping output and (later) the result of an accepted command."""
        if command_id in self._records and not self._records[command_id].synthetic:
            raise AssertionError(f"command {command_id} is in the outbox")  # pragma: no cover
        self._records[command_id] = _Record.for_command(command_id)

    def holds(self, command_id: str) -> bool:
        """True if the command was accepted and its result is not yet acknowledged."""
        record = self._records.get(command_id)
        return record is not None and not record.synthetic

    def open_ids(self) -> list[str]:
        """Every command accepted whose result is not yet acknowledged (running or finished)."""
        return [command_id for command_id, record in self._records.items() if not record.synthetic]

    def has_result(self, command_id: str) -> bool:
        """True if the command's final result waits for the server's ack."""
        record = self._records.get(command_id)
        return record is not None and record.result is not None

    async def write(
        self, command_id: str, kind: pb.OutputType, data: bytes, timestamp: int
    ) -> None:
        """Add one output chunk of a command (``timestamp`` in Unix ms).

        While a link is up, waits until the command's unsent output leaves room for ``data``;
        without a link it never waits and drops the oldest unsent bytes instead. Cancellation
        while waiting drops nothing and adds nothing.
        """
        record = self._records.get(command_id)
        if record is None or not record.streams or not data:
            return
        size = len(data)
        while self._connected and record.new_bytes and record.new_bytes + size > self._buffer_bytes:
            await self._space.park()
        stream = record.streams[0] if kind == pb.OutputType.STDOUT else record.streams[1]
        stream.chunks.append(_Chunk(next(self._seq), data, timestamp, None))
        record.new_bytes += size
        if record.new_bytes > self._buffer_bytes:
            self._drop_oldest_new(record)
        self._pending.unpark_all()

    def finish(self, result: pb.BatchCommandResult) -> None:
        """Record a command's final result; it goes out after the command's output."""
        record = self._records.get(result.command_id)
        if record is None:
            record = self._records[result.command_id] = _Record.for_command(result.command_id)
        record.result = result
        record.result_sent = False
        self._enforce_result_cap()
        self._pending.unpark_all()

    def add_orphan_result(self, result: pb.BatchCommandResult) -> None:
        """Record a result about a command this agent does not run ("no such running command").

        Kept until acknowledged like any result, but it does not make the id count as a
        command this agent holds (a later request for that id still runs).
        """
        if result.command_id in self._records:
            return
        record = self._records[result.command_id] = _Record(result.command_id, synthetic=True)
        record.result = result
        self._enforce_result_cap()
        self._pending.unpark_all()

    def resend_result(self, command_id: str) -> None:
        """Send a held result again (the server asked about the command once more)."""
        record = self._records.get(command_id)
        if record is not None and record.result is not None:
            record.result_sent = False
            self._pending.unpark_all()

    def acknowledge(self, command_id: str) -> bool:
        """The server stored the result: forget the command. Returns False if nothing matched."""
        record = self._records.get(command_id)
        if record is None or record.result is None:
            return False
        del self._records[command_id]
        self._acks.unpark_all()
        return True

    # -- what the link's pump takes ----------------------------------------------------------

    def take(self, limit: int) -> list[pb.MessageToServer]:
        """Return up to ``limit`` messages to send now, in the order of the module's rules.

        What is returned counts as sent on the current link. Commands are visited round-robin
        so a chatty command does not starve the others.
        """
        out: list[pb.MessageToServer] = []
        while self._controls and len(out) < limit:
            out.append(self._controls.popleft())
        if not self._records or len(out) >= limit:
            return out
        ids = list(self._records)
        start = self._round_robin % len(ids)
        self._round_robin = start + 1
        for index in range(len(ids)):
            record = self._records[ids[(start + index) % len(ids)]]
            self._take_from(record, out, limit)
            if len(out) >= limit:
                break
        return out

    async def wait_pending(self) -> None:
        """Wait until something was added since the last ``take()`` that returned nothing."""
        await self._pending.park()

    async def wait_results_acknowledged(self) -> None:
        """Wait until no result is waiting for its ack."""
        while any(record.result is not None for record in self._records.values()):
            await self._acks.park()

    def statistics(self) -> OutboxStatistics:
        """Counts of what the outbox holds now."""
        records = self._records.values()
        return OutboxStatistics(
            commands=sum(1 for record in records if not record.synthetic),
            unacknowledged_results=sum(1 for record in records if record.result is not None),
            pending_controls=len(self._controls),
            unsent_bytes=sum(record.new_bytes for record in records),
            retained_bytes=sum(record.sent_bytes for record in records),
            dropped_bytes=self._dropped_total,
        )

    # -- internals ---------------------------------------------------------------------------

    def _take_from(self, record: _Record, out: list[pb.MessageToServer], limit: int) -> None:
        while len(out) < limit:
            ready = [(q, i) for i, s in enumerate(record.streams) if (q := s.peek()) is not None]
            if not ready:
                break
            out.append(self._emit(record, record.streams[min(ready)[1]]))
        if len(out) >= limit or record.output_pending():
            return
        if record.result is not None and not record.result_sent:
            out.append(pb.MessageToServer(batch_command_result=record.result))
            record.result_sent = True
            self._release_finished_output()

    def _emit(self, record: _Record, stream: _StreamBuffer) -> pb.MessageToServer:
        index = stream.cursor
        if index < stream.sent_count:  # re-sending after a reconnect
            chunk = stream.chunks[index]
        elif stream.dropped:
            text = DROP_MARKER.format(stream.dropped).encode()
            chunk = _Chunk(stream.dropped_seq, text, unix_ms(), stream.next_offset)
            stream.next_offset += len(text)
            stream.chunks.insert(index, chunk)
            stream.sent_count += 1
            stream.dropped = 0
            record.sent_bytes += len(text)
        else:
            chunk = stream.chunks[index]
            chunk.offset = stream.next_offset
            stream.next_offset += len(chunk.data)
            stream.sent_count += 1
            record.new_bytes -= len(chunk.data)
            record.sent_bytes += len(chunk.data)
            self._space.unpark_all()
        stream.cursor += 1
        if record.sent_bytes > self._buffer_bytes:
            self._evict_sent(record)
        return pb.MessageToServer(
            batch_command_output_stream=pb.BatchCommandOutputStream(
                command_id=record.command_id,
                stream_type=stream.kind,
                chunk=chunk.data,
                timestamp=chunk.timestamp,
                offset=chunk.offset,
            )
        )

    def _evict_sent(self, record: _Record) -> None:
        """Forget the oldest sent chunks (already sent on this link) beyond the bound."""
        while record.sent_bytes > self._buffer_bytes:
            candidates = [s for s in record.streams if s.cursor > 0 and s.sent_count > 0]
            if not candidates:
                return
            victim = min(candidates, key=lambda s: s.chunks[0].seq)
            chunk = victim.chunks.popleft()
            victim.sent_count -= 1
            victim.cursor -= 1
            record.sent_bytes -= len(chunk.data)

    def _drop_oldest_new(self, record: _Record) -> None:
        """Drop the oldest unsent chunks until the unsent output fits the bound."""
        while record.new_bytes > self._buffer_bytes:
            victim = min(
                (s for s in record.streams if len(s.chunks) > s.sent_count),
                key=lambda s: s.chunks[s.sent_count].seq,
            )
            chunk = victim.chunks[victim.sent_count]
            del victim.chunks[victim.sent_count]
            victim.dropped += len(chunk.data)
            victim.dropped_seq = chunk.seq
            record.new_bytes -= len(chunk.data)
            record.dropped += len(chunk.data)
            self._dropped_total += len(chunk.data)
        logger.debug(
            "command=%s output buffer full while disconnected: %d bytes dropped so far",
            record.command_id,
            record.dropped,
        )

    def _enforce_result_cap(self) -> None:
        finished = [record for record in self._records.values() if record.result is not None]
        for record in finished[: max(0, len(finished) - self._max_results)]:
            logger.warning(
                "command=%s result dropped unacknowledged: more than %d results wait for the "
                "server's BatchResultAck",
                record.command_id,
                self._max_results,
            )
            del self._records[record.command_id]
        if len(finished) > self._max_results:
            self._acks.unpark_all()

    def _release_finished_output(self) -> None:
        holding = [
            record
            for record in self._records.values()
            if record.result_sent and record.streams and not record.output_pending()
        ]
        for record in holding[: max(0, len(holding) - self._keep_finished_output)]:
            record.streams = ()
            record.sent_bytes = 0
            record.new_bytes = 0
