"""One running batch: its core state machine, its children's cancel scopes, logs, agent traffic.

A ``BatchRun`` owns one trio nursery (``run``) with one cancel-scoped task per VPS. Its owner
(the ``Supervisor``) routes agent reports to it synchronously; ``core.Batch`` decides, and this
module carries out the effects: send commands and terminates, persist (``WriteBack``), publish
(the feed). Terminating a child cancels that child's scope; the shielded, time-bounded cleanup
sends the terminate and waits for the agent's answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import trio

from fleet import core
from fleet.proto import agent_service as pb

from .agents import AgentRegistry, AgentSession, SessionClosed
from .logs import STREAMS, LogSink
from .metrics import ServerMetrics
from .store import BatchRecord, BatchUpdate, ChildRecord, ChildUpdate
from .views import batch_view, child_update_event, from_ts, iso
from .writeback import WriteBack

__all__ = ["OUTPUT_FLUSH_S", "BatchHost", "BatchRun", "NullFeed", "Publisher", "RunSettings"]

logger = logging.getLogger(__name__)

_RESULT_STATUS = {
    pb.CommandStatus.SUCCESS: core.ChildStatus.SUCCESS,
    pb.CommandStatus.FAILURE: core.ChildStatus.FAILURE,
    pb.CommandStatus.TERMINATED: core.ChildStatus.TERMINATED,
}
#: How often output summaries, sizes and last_output_at reach the store.
OUTPUT_FLUSH_S = 0.5

_STREAM = {pb.OutputType.STDOUT: "stdout", pb.OutputType.STDERR: "stderr"}


class Publisher(Protocol):
    """Where live events go (the feed hub). Must never block."""

    def publish(self, batch_id: str, event: dict[str, Any]) -> None: ...

    def has_subscribers(self, batch_id: str) -> bool: ...


class NullFeed:
    """A publisher with no subscribers (when the server runs without a feed)."""

    def publish(self, batch_id: str, event: dict[str, Any]) -> None:
        pass

    def has_subscribers(self, batch_id: str) -> bool:
        return False


def _now_dt() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class RunSettings:
    logs_dir: Path
    output_cap: int
    summary_lines: int
    terminate_confirm_s: float
    timers: core.BatchTimers


class BatchHost(Protocol):
    """What a ``BatchRun`` needs from its owner (the ``Supervisor``)."""

    registry: AgentRegistry
    writeback: WriteBack
    feed: Publisher
    settings: RunSettings
    cleanups: set[trio.CancelScope]
    stopping: bool
    metrics: ServerMetrics

    def batch_finished(self, run: BatchRun) -> None: ...


class BatchRun:
    """One running batch: its core state, its children's scopes, logs and agent traffic."""

    def __init__(
        self,
        record: BatchRecord,
        host: BatchHost,
        *,
        resumed: bool = False,
    ) -> None:
        self.record = record
        self.id = record.id
        self._sup = host
        s = host.settings
        tasks = []
        for c in record.children:
            task = core.ChildTask(c.id, c.vps_id, c.vps_name)
            if resumed:
                task.status = c.status
                task.exit_code = c.exit_code
                task.error_message = c.error_message
            tasks.append(task)
        self.batch = core.Batch(record.id, tasks, timeout_s=record.timeout_seconds, timers=s.timers)
        self._records = {c.id: c for c in record.children}
        # A VPS's children, so that an agent coming or going costs O(its children), not a scan
        # of the batch (10,000 agents dropping at once would otherwise be 10⁸ checks).
        self._by_vps: dict[int, list[core.ChildTask]] = {}
        for task in self.batch.children.values():
            self._by_vps.setdefault(task.vps_id, []).append(task)
        self._sinks: dict[tuple[str, str], LogSink] = {}  # opened at a stream's first output
        self._scopes: dict[str, trio.CancelScope] = {}
        self._dirty: set[str] = set()  # children whose output summary is not yet recorded
        self._done = {c.id: trio.Event() for c in record.children}
        self._changed = trio.Event()
        self._resumed = resumed
        self._nursery: trio.Nursery | None = None

    # --- the batch's tasks -------------------------------------------------------------------

    async def run(self) -> None:
        """Run the batch to its final status. Owns the batch's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._resumed:
                self._resume(nursery)
            else:
                self._apply(self.batch.start(now=time.time()))
            nursery.start_soon(self._deadlines)
        self._close_logs()
        logger.info("batch=%s finished: %s", self.id, self.batch.status.value)

    def _resume(self, nursery: trio.Nursery) -> None:
        """After a server restart: every live child waits for its agent to come back."""
        terminating = self.record.status is core.BatchStatus.TERMINATING
        self._apply(self.batch.resume(now=time.time(), user_terminated=terminating))
        for task in self.batch.children.values():
            if task.is_terminal:
                self._done[task.child_id].set()
            else:
                nursery.start_soon(self._child_wait, task.child_id)

    async def _child(self, child_id: str) -> None:
        task = self.batch.children[child_id]
        if task.is_terminal:  # terminated before its task ran
            return
        session = self._sup.registry.get(task.vps_id)
        if session is None:
            self._handle(core.Unreachable(child_id))
            return
        try:
            session.send(self._command_message(child_id))
        except SessionClosed:
            self._handle(core.Unreachable(child_id))
            return
        self._handle(core.Dispatched(child_id))
        await self._child_wait(child_id)

    async def _child_wait(self, child_id: str) -> None:
        """Wait for the child's end; a terminate cancels the wait and cleans up, shielded."""
        task = self.batch.children[child_id]
        with trio.CancelScope() as scope:
            self._scopes[child_id] = scope
            await self._done[child_id].wait()
        self._scopes.pop(child_id, None)
        if not scope.cancelled_caught or task.is_terminal:
            return
        confirm_s = self._sup.settings.terminate_confirm_s
        with trio.move_on_after(confirm_s, shield=True) as cleanup:
            self._sup.cleanups.add(cleanup)
            self._send_terminate(task)
            await self._done[child_id].wait()
        self._sup.cleanups.discard(cleanup)
        if self._sup.stopping:
            # The server is shutting down: the child stays TERMINATING in the store, and the
            # restarted server asks the agent again (resume keeps the batch terminating).
            return
        if not task.is_terminal:
            self._handle(core.TerminateUnconfirmed(child_id, confirm_s))

    async def _deadlines(self) -> None:
        while not self.batch.is_final:
            deadline = self.batch.next_deadline()
            delay = math.inf if deadline is None else max(deadline - time.time(), 0)
            with trio.move_on_after(delay):
                await self._changed.wait()
            self._changed = trio.Event()
            if deadline is not None and time.time() >= deadline:
                self._handle(core.Tick())

    # --- events in, effects out --------------------------------------------------------------

    def _handle(self, event: core.Event) -> bool:
        """Apply an event; False when the state machine refused it (nothing changed)."""
        try:
            effects = self.batch.handle(event, now=time.time())
        except core.InvalidTransition as exc:
            logger.debug("batch=%s ignored %s: %s", self.id, event, exc)
            return False
        self._apply(effects)
        return True

    def _apply(self, effects: list[core.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, core.SendCommand):
                assert self._nursery is not None
                self._nursery.start_soon(self._child, effect.child_id)
            elif isinstance(effect, core.SendTerminate):
                scope = self._scopes.get(effect.child_id)
                task = self.batch.children[effect.child_id]
                if scope is not None and not task.is_terminal:
                    scope.cancel()
                else:
                    self._send_terminate(task)  # a deadline ended it: tell the agent anyway
            elif isinstance(effect, core.ChildChanged):
                self._child_changed(effect.child_id)
            elif isinstance(effect, core.BatchChanged):
                self._batch_changed()

    def _child_changed(self, child_id: str) -> None:
        task = self.batch.children[child_id]
        # Straight from the task (no full record): this runs for every child of every batch.
        self._sup.writeback.child(
            ChildUpdate(
                child_id=child_id,
                status=task.status,
                exit_code=task.exit_code,
                error_message=task.error_message,
                agent_started_at=from_ts(task.started_at),
                agent_completed_at=from_ts(task.completed_at),
                updated_at=from_ts(task.updated_at),
                **(self._output_update(child_id) if child_id in self._dirty else {}),
            )
        )
        if self._sup.feed.has_subscribers(self.id):
            # The event carries no summaries: skip decoding them.
            record = self.child_record(child_id, summaries=False)
            self._sup.feed.publish(self.id, child_update_event(record))
        self._changed.set()
        if task.is_terminal:
            self._done[child_id].set()
            for stream in STREAMS:
                sink = self._sinks.get((child_id, stream))
                if sink is not None:
                    sink.close()

    def _batch_changed(self) -> None:
        b = self.batch
        updated = from_ts(b.updated_at) or _now_dt()
        self._sup.writeback.batch(
            BatchUpdate(
                self.id, status=b.status, updated_at=updated, completed_at=from_ts(b.completed_at)
            )
        )
        self._sup.feed.publish(
            self.id,
            {
                "type": "BATCH_TASK_UPDATE",
                "batch_command_id": self.id,
                "overall_status": b.status.value,
                "counts": b.counts(),
                "updated_at": iso(updated),
                "completed_at": iso(from_ts(b.completed_at)),
            },
        )
        if b.is_final:
            self._changed.set()
            self._sup.batch_finished(self)

    def _sink(self, child_id: str, stream: str) -> LogSink:
        sink = self._sinks.get((child_id, stream))
        if sink is None:
            record = self._records[child_id]
            path = record.stdout_log_path if stream == "stdout" else record.stderr_log_path
            summary = record.stdout_summary if stream == "stdout" else record.stderr_summary
            assert path is not None
            settings = self._sup.settings
            sink = self._sinks[(child_id, stream)] = LogSink(
                Path(path),
                cap=settings.output_cap,
                summary_lines=settings.summary_lines,
                summary=list(summary),
            )
        return sink

    def _output_fields(self, child_id: str, *, summaries: bool = True) -> dict[str, Any]:
        """The child's output facts: from its open logs, else as stored (``summaries=False``
        keeps the stored summaries, which saves decoding lines nobody will read)."""
        record = self._records[child_id]
        fields: dict[str, Any] = {
            "stdout_summary": record.stdout_summary,
            "stderr_summary": record.stderr_summary,
            "stdout_bytes": record.stdout_bytes,
            "stderr_bytes": record.stderr_bytes,
            "truncated": record.truncated,
        }
        for stream in STREAMS:
            sink = self._sinks.get((child_id, stream))
            if sink is not None:
                if summaries:
                    fields[f"{stream}_summary"] = tuple(sink.summary.lines())
                fields[f"{stream}_bytes"] = sink.size
                fields["truncated"] = fields["truncated"] or sink.truncated or bool(sink.error)
        return fields

    def _output_update(self, child_id: str) -> dict[str, Any]:
        self._dirty.discard(child_id)
        return {
            **self._output_fields(child_id),
            "last_output_at": from_ts(self.batch.children[child_id].last_output_at),
        }

    def flush_output(self) -> None:
        """Record summaries of children whose output changed since the last flush."""
        for child_id in list(self._dirty):
            self._sup.writeback.child(
                ChildUpdate(child_id=child_id, **self._output_update(child_id))
            )

    # --- agent traffic (synchronous, from the router) ----------------------------------------

    def on_ack(self, ack: pb.BatchCommandAck) -> None:
        self._handle(core.Acked(ack.command_id, ack.accepted, ack.reason[:1000]))

    def on_started(self, started: pb.BatchCommandStarted) -> None:
        self._handle(core.Started(started.command_id, max(started.pid, 0)))

    def on_output(self, out: pb.BatchCommandOutputStream) -> None:
        stream = _STREAM.get(out.stream_type)
        if stream is None:
            logger.info(
                "batch=%s child=%s output of unknown stream %s dropped",
                self.id,
                out.command_id,
                out.stream_type,
            )
            return
        self._sup.metrics.output_received(stream, len(out.chunk))
        task = self.batch.children[out.command_id]
        if task.is_terminal:
            return  # a re-sent chunk after the end: the log is complete
        sink = self._sink(out.command_id, stream)
        written = sink.write(out.chunk, out.offset)
        self._handle(core.OutputSeen(out.command_id))
        if written is None:
            return
        self._dirty.add(out.command_id)
        if not self._sup.feed.has_subscribers(self.id):
            sink.skip()
        else:
            self._sup.feed.publish(
                self.id,
                {
                    "type": "NEW_LOG_OUTPUT",
                    "child_command_id": out.command_id,
                    "vps_id": task.vps_id,
                    "stream": stream,
                    "offset": written.offset,
                    "data": sink.text(written),
                },
            )

    def on_result(self, result: pb.BatchCommandResult) -> bool:
        status = _RESULT_STATUS.get(result.status)
        error = result.error_message[:10_000] or None
        if status is None:
            status = core.ChildStatus.FAILURE
            error = f"the agent reported an unknown status ({result.status}); {error or ''}"
        return self._handle(core.Finished(result.command_id, status, result.exit_code, error))

    def agent_lost(self, vps_id: int) -> None:
        for task in self._by_vps.get(vps_id, ()):
            if not task.is_terminal and task.sent_at is not None:
                self._handle(core.AgentLost(task.child_id))

    def agent_returned(self, vps_id: int, session: AgentSession) -> None:
        for task in self._by_vps.get(vps_id, ()):
            if task.is_terminal or task.lost_since is None:
                continue
            self._handle(core.AgentReturned(task.child_id))
            if task.status is core.ChildStatus.TERMINATING:
                self._send_terminate(task)
            elif task.status is core.ChildStatus.SENT_TO_AGENT:
                # The request may have been lost with the old stream; the agent ignores a
                # request for a command id it already has (it acknowledges it again).
                with contextlib.suppress(SessionClosed):
                    session.send(self._command_message(task.child_id))

    def terminate(self, child_id: str | None = None) -> None:
        if child_id is None:
            self._handle(core.TerminateBatch())
        else:
            self._handle(core.TerminateChild(child_id))

    # --- views -------------------------------------------------------------------------------

    def child_record(self, child_id: str, *, summaries: bool = True) -> ChildRecord:
        """The child as the API shows it now (live state over the stored record)."""
        task = self.batch.children[child_id]
        base = self._records[child_id]
        return dataclasses.replace(
            base,
            status=task.status,
            exit_code=task.exit_code,
            error_message=task.error_message,
            updated_at=from_ts(task.updated_at) or base.updated_at,
            agent_started_at=from_ts(task.started_at) or base.agent_started_at,
            agent_completed_at=from_ts(task.completed_at) or base.agent_completed_at,
            last_output_at=from_ts(task.last_output_at) or base.last_output_at,
            **self._output_fields(child_id, summaries=summaries),
        )

    def snapshot(self) -> BatchRecord:
        b = self.batch
        return dataclasses.replace(
            self.record,
            status=b.status,
            updated_at=from_ts(b.updated_at) or self.record.updated_at,
            completed_at=from_ts(b.completed_at),
            counts=b.counts(),
            children=tuple(self.child_record(c) for c in self.batch.children),
        )

    def view(self) -> dict[str, Any]:
        return batch_view(self.snapshot())

    # --- helpers -----------------------------------------------------------------------------

    def _command_message(self, child_id: str) -> pb.MessageToAgent:
        r = self.record
        kind = (
            pb.CommandType.SAVED_SCRIPT
            if r.command_type == "SAVED_SCRIPT"
            else pb.CommandType.ADHOC_COMMAND
        )
        return pb.MessageToAgent(
            batch_agent_command_request=pb.BatchAgentCommandRequest(
                command_id=child_id,
                type=kind,
                content=r.command_content,
                working_directory=r.working_directory or "",
                timeout_seconds=r.timeout_seconds,
            )
        )

    def _send_terminate(self, task: core.ChildTask) -> None:
        session = self._sup.registry.get(task.vps_id)
        if session is None:
            return  # sent again when the agent comes back (agent_returned)
        try:
            session.send(
                pb.MessageToAgent(
                    batch_terminate_command_request=pb.BatchTerminateCommandRequest(
                        command_id=task.child_id
                    )
                )
            )
        except SessionClosed:
            pass

    def _close_logs(self) -> None:
        for sink in self._sinks.values():
            sink.close()
