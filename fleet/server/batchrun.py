"""One running batch: its core state machine and its children's cancel scopes.

A ``BatchRun`` owns one trio nursery (``run``) with one cancel-scoped task per VPS. Its owner
(the ``Supervisor``) routes agent reports and agents coming and going to it synchronously;
``core.Batch`` decides, and this module carries out the effects: send commands and terminates,
record changes (the write-behind ``Recorder``), publish (the feed).

Terminating a child cancels that child's scope. The cleanup then runs *outside* the cancelled
region, as trio's ``run_process`` waits for its process after a cancel: it sends the terminate
and waits for the agent's answer. That wait needs no timeout of its own: the terminate
confirmation is one of ``core.Batch``'s deadlines, which ends the child (and so the wait) when
the agent does not answer. A server shutdown cancels the wait with everything else; the child
stays ``TERMINATING`` in the store and the restarted server asks the agent again.

Effects are carried out in order, one at a time: an effect that feeds the batch an event (a
send that reports ``Dispatched`` or ``Unreachable``) queues that event's effects behind the
others instead of recursing, so a rollout that walks through 10,000 unreachable targets one
slot at a time needs no deep stack.

Script parameters reach the agent as ``BatchAgentCommandRequest.environment``. Secret values
live only in this object's memory (never in the store, the record, the feed or a log) and are
dropped as soon as no child may still need its command sent.

Every time here is trio time (``WallClock`` converts it at the edge, when stored or shown).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import trio

from fleet import core
from fleet.proto import agent_service as pb

from .agents import command_message, terminate_message
from .output import BatchOutput
from .rundeps import NullFeed, Publisher, Recorder, RunDeps
from .store import BatchRecord, BatchUpdate, ChildRecord, ChildUpdate
from .views import batch_view, child_update_event, iso, rollout_view

__all__ = ["BatchRun", "NullFeed", "Publisher", "Recorder", "RunDeps"]

logger = logging.getLogger(__name__)

_RESULT_STATUS = {
    pb.CommandStatus.SUCCESS: core.ChildStatus.SUCCESS,
    pb.CommandStatus.FAILURE: core.ChildStatus.FAILURE,
    pb.CommandStatus.TERMINATED: core.ChildStatus.TERMINATED,
}
_STREAM = {pb.OutputType.STDOUT: "stdout", pb.OutputType.STDERR: "stderr"}


class BatchRun:
    """One batch: its core state, its children's scopes, its output.

    Args:
        record: the batch as stored (children included).
        deps: what it talks to.
        on_final: called (synchronously) once the batch reached its final status.
        resumed: the batch was restored after a server restart (``core.Batch.resume``).
        secrets: the values of the batch's secret parameters (``record.secret_parameters``),
            held in memory only until every command was sent.
    """

    def __init__(
        self,
        record: BatchRecord,
        deps: RunDeps,
        *,
        on_final: Callable[[BatchRun], None],
        resumed: bool = False,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.record = record
        self.id = record.id
        self._deps = deps
        self._on_final = on_final
        self._resumed = resumed
        if resumed:
            tasks = [
                core.ChildTask.restore(
                    c.id,
                    c.vps_id,
                    c.vps_name,
                    c.status,
                    exit_code=c.exit_code,
                    error_message=c.error_message,
                )
                for c in record.children
            ]
        else:
            tasks = [core.ChildTask(c.id, c.vps_id, c.vps_name) for c in record.children]
        rollout = core.Rollout(
            max_concurrency=record.max_concurrency,
            max_errors=record.max_errors,
            wait_for_agent_s=record.wait_for_agent_seconds,
        )
        self.batch = core.Batch(
            record.id,
            tasks,
            timeout_s=record.timeout_seconds,
            timers=deps.timers,
            rollout=rollout,
        )
        self._secrets: dict[str, str] | None = dict(secrets or {})
        self._effects: collections.deque[core.Effect] = collections.deque()
        self._applying = False
        self.output = BatchOutput(
            record.children, cap=deps.output_cap, summary_lines=deps.summary_lines
        )
        self._records = {c.id: c for c in record.children}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._done = {c.id: trio.Event() for c in record.children}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Set once ``run`` has started (or resumed) the batch: it takes agent events from then.
        self.started = trio.Event()

    # --- the batch's tasks -------------------------------------------------------------------

    async def run(self) -> None:
        """Run the batch to its final status. Owns the batch's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for task in self.batch.children.values():
                if task.is_terminal:
                    self._done[task.child_id].set()
                else:
                    self._scopes[task.child_id] = trio.CancelScope()
                    nursery.start_soon(self._child, task.child_id)
            now = self._deps.clock.now()
            if self._resumed:
                terminating = self.record.status is core.BatchStatus.TERMINATING
                self._apply(
                    self.batch.resume(
                        now=now, user_terminated=terminating, stop_reason=self.record.stop_reason
                    )
                )
            else:
                self._apply(self.batch.start(now=now))
            self.started.set()
            nursery.start_soon(self._deadlines)
        self.output.close_all()
        logger.info("batch=%s finished: %s", self.id, self.batch.status.value)

    async def _child(self, child_id: str) -> None:
        """The child's life, in its own cancel scope; a terminate cancels it (module doc)."""
        task = self.batch.children[child_id]
        scope = self._scopes[child_id]
        with scope:
            await self._done[child_id].wait()
        if not scope.cancelled_caught or task.is_terminal:
            return
        self._deps.agents.send(task.vps_id, terminate_message(child_id))
        await self._done[child_id].wait()  # bounded by core's terminate confirmation deadline

    async def _deadlines(self) -> None:
        """Feed ``Tick`` at ``core.Batch.next_deadline`` (on trio's clock)."""
        while not self.batch.is_final:
            deadline = self.batch.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            if deadline is not None and trio.current_time() >= deadline:
                self._handle(core.Tick())

    # --- events in, effects out --------------------------------------------------------------

    def _handle(self, event: core.Event) -> bool:
        """Apply an event; False when the state machine refused it (nothing changed)."""
        try:
            effects = self.batch.handle(event, now=self._deps.clock.now())
        except core.InvalidTransition as exc:
            logger.debug("batch=%s ignored %s: %s", self.id, event, exc)
            return False
        self._apply(effects)
        return True

    def _apply(self, effects: list[core.Effect]) -> None:
        """Carry out effects in order; nested ones join the queue (module doc)."""
        self._effects.extend(effects)
        if self._applying:
            return
        self._applying = True
        try:
            while self._effects:
                self._carry_out(self._effects.popleft())
        finally:
            self._applying = False

    def _carry_out(self, effect: core.Effect) -> None:
        if isinstance(effect, core.SendCommand):
            self._dispatch(effect.child_id)
        elif isinstance(effect, core.SendTerminate):
            self._terminate(effect.child_id)
        elif isinstance(effect, core.ChildChanged):
            self._child_changed(effect.child_id)
        elif isinstance(effect, core.BatchChanged):
            self._batch_changed()

    def _environment(self) -> dict[str, str] | None:
        """The parameters as environment variables; ``None`` when secret values are needed but
        gone (the server restarted since the batch was created: they are never stored)."""
        values = dict(self.record.parameters)
        if self.record.secret_parameters:
            if self._secrets is None or set(self._secrets) < set(self.record.secret_parameters):
                return None
            values |= self._secrets
        return core.param_environment(values)

    def _forget_secrets(self) -> None:
        """Drop secret values once no child may need its command sent (again)."""
        if self._secrets is None:
            return
        counts = self.batch.counts()
        if not counts.get("PENDING") and not counts.get("SENT_TO_AGENT"):
            self._secrets = None

    def _dispatch(self, child_id: str) -> None:
        task = self.batch.children[child_id]
        if task.is_terminal:
            return  # ended before its turn (terminated)
        environment = self._environment()
        if environment is None:
            if task.status is core.ChildStatus.PENDING:
                reason = "not run: its secret parameters were not kept across a server restart"
                self._handle(core.Skipped(child_id, reason))
            return
        message = command_message(self.record, child_id, environment)
        if self._deps.agents.send(task.vps_id, message):
            self._handle(core.Dispatched(child_id))
        elif task.status is core.ChildStatus.PENDING:
            self._handle(core.Unreachable(child_id))
        else:
            self._handle(core.AgentLost(child_id))  # sending again failed: it is away again

    def _terminate(self, child_id: str) -> None:
        task = self.batch.children[child_id]
        scope = self._scopes.get(child_id)
        if scope is not None and not scope.cancel_called and not task.is_terminal:
            scope.cancel(reason=f"batch {self.id}: child {child_id} terminated")
        else:
            # Its scope was cancelled already, or a deadline ended it: tell the agent directly.
            self._deps.agents.send(task.vps_id, terminate_message(child_id))

    def _child_changed(self, child_id: str) -> None:
        task = self.batch.children[child_id]
        clock = self._deps.clock
        output = self.output.take(child_id) if self.output.is_dirty(child_id) else {}
        self._deps.recorder.child(
            ChildUpdate(
                child_id=child_id,
                status=task.status,
                exit_code=task.exit_code,
                error_message=self._error_message(child_id),
                agent_started_at=clock.to_datetime(task.started_at),
                agent_completed_at=clock.to_datetime(task.completed_at),
                updated_at=clock.to_datetime(task.updated_at),
                last_output_at=clock.to_datetime(task.last_output_at),
                agent_reported=self._agent_reported(task),
                **output,
            )
        )
        if self._deps.feed.has_subscribers(self.id):
            # The event carries no summaries: skip decoding them.
            record = self.child_record(child_id, summaries=False)
            self._deps.feed.publish(self.id, child_update_event(record))
        self._changed.set()
        if task.is_terminal:
            self._done[child_id].set()
            self.output.close(child_id)
        self._forget_secrets()

    def _batch_changed(self) -> None:
        b = self.batch
        clock = self._deps.clock
        updated = clock.to_datetime(b.updated_at if b.updated_at is not None else clock.now())
        completed = clock.to_datetime(b.completed_at)
        self._deps.recorder.batch(
            BatchUpdate(
                self.id,
                status=b.status,
                updated_at=updated,
                completed_at=completed,
                stop_reason=b.stop_reason,
            )
        )
        self._deps.feed.publish(
            self.id,
            {
                "type": "BATCH_TASK_UPDATE",
                "batch_command_id": self.id,
                "overall_status": b.status.value,
                "counts": b.counts(),
                "updated_at": iso(updated),
                "completed_at": iso(completed),
                **rollout_view(self._rollout_record()),
            },
        )
        if b.is_final:
            self._changed.set()
            self._on_final(self)

    def _agent_reported(self, task: core.ChildTask) -> dict[str, Any] | None:
        report = task.agent_reported
        if report is None:
            return None
        return {
            "status": report.status.value,
            "exit_code": report.exit_code,
            "at": iso(self._deps.clock.to_datetime(report.at)),
        }

    def _error_message(self, child_id: str) -> str | None:
        """The child's error, and why output was lost if a log could not be written."""
        message = self.batch.children[child_id].error_message
        loss = self.output.loss(child_id)
        if loss is None:
            return message
        return f"{message}; {loss}" if message else loss

    def flush_output(self) -> None:
        """Record the output facts of children whose output changed since the last flush."""
        for child_id in self.output.dirty():
            fields = self.output.take(child_id)
            task = self.batch.children[child_id]
            self._deps.recorder.child(
                ChildUpdate(
                    child_id=child_id,
                    last_output_at=self._deps.clock.to_datetime(task.last_output_at),
                    error_message=self._error_message(child_id),
                    **fields,
                )
            )

    # --- agent traffic (synchronous, from the router) ----------------------------------------

    def on_ack(self, ack: pb.BatchCommandAck) -> None:
        if ack.accepted:
            self._handle(core.Acked(ack.command_id))
        else:
            self._handle(core.Rejected(ack.command_id, ack.reason[:1000]))

    def on_started(self, started: pb.BatchCommandStarted) -> None:
        self._handle(core.Started(started.command_id, max(started.pid, 0)))

    def on_output(self, out: pb.BatchCommandOutputStream) -> None:
        """Store a chunk, whatever the child's status: a chunk that arrives after the child
        ended (its agent was away) still completes the log."""
        stream = _STREAM.get(out.stream_type)
        if stream is None:
            logger.info(
                "batch=%s child=%s output of unknown stream %s dropped",
                self.id,
                out.command_id,
                out.stream_type,
            )
            return
        child_id = out.command_id
        self._deps.metrics.output_received(stream, len(out.chunk))
        task = self.batch.children[child_id]
        written = self.output.write(child_id, stream, out.chunk, out.offset)
        if not task.is_terminal:
            self._handle(core.OutputSeen(child_id))
        if written is None:
            return
        if self._deps.chunks is not None:
            self._deps.chunks(child_id, stream, written.offset, written.data)
        if task.is_terminal:
            self.output.close(child_id)
        if not self._deps.feed.has_subscribers(self.id):
            self.output.unwatched(child_id, stream)
            return
        self._deps.feed.publish(
            self.id,
            {
                "type": "NEW_LOG_OUTPUT",
                "child_command_id": child_id,
                "vps_id": task.vps_id,
                "stream": stream,
                "offset": written.offset,
                "data": self.output.text(child_id, stream, written),
            },
        )

    def on_result(self, result: pb.BatchCommandResult) -> bool:
        """Apply a result; ``False`` when it changed nothing (a duplicate)."""
        status = _RESULT_STATUS.get(result.status)
        error = result.error_message[:10_000] or None
        if status is None:
            status = core.ChildStatus.FAILURE
            error = f"the agent reported an unknown status ({result.status}); {error or ''}"
        return self._handle(core.Finished(result.command_id, status, result.exit_code, error))

    def agent_connected(self, vps_id: int, open_ids: Collection[str] | None) -> None:
        if self.batch.children_of(vps_id):
            now = self._deps.clock.now()
            self._apply(self.batch.agent_connected(vps_id, open_ids, now=now))

    def agent_lost(self, vps_id: int) -> None:
        if self.batch.children_of(vps_id):
            self._apply(self.batch.agent_lost(vps_id, now=self._deps.clock.now()))

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
        clock = self._deps.clock
        return dataclasses.replace(
            base,
            status=task.status,
            exit_code=task.exit_code,
            error_message=self._error_message(child_id),
            updated_at=clock.to_datetime(task.updated_at) or base.updated_at,
            agent_started_at=clock.to_datetime(task.started_at) or base.agent_started_at,
            agent_completed_at=clock.to_datetime(task.completed_at) or base.agent_completed_at,
            last_output_at=clock.to_datetime(task.last_output_at) or base.last_output_at,
            agent_reported=self._agent_reported(task) or base.agent_reported,
            waiting_until=clock.to_datetime(self.batch.wait_deadline(task)),
            **self.output.fields(child_id, summaries=summaries),
        )

    def _rollout_record(self) -> BatchRecord:
        """The record with the live rollout facts (no children: cheap)."""
        b = self.batch
        return dataclasses.replace(
            self.record,
            counts=b.counts(),
            stop_reason=b.stop_reason,
            rollout_counts=b.rollout_counts(),
            children=(),
        )

    def summary(self, record: BatchRecord | None = None) -> BatchRecord:
        """``record`` (default: the batch as submitted) with the live overall state, without
        its children (what a list of batches shows)."""
        b = self.batch
        clock = self._deps.clock
        base = record if record is not None else self.record
        return dataclasses.replace(
            base,
            status=b.status,
            updated_at=clock.to_datetime(b.updated_at) or base.updated_at,
            completed_at=clock.to_datetime(b.completed_at),
            counts=b.counts(),
            stop_reason=b.stop_reason,
            rollout_counts=b.rollout_counts(),
        )

    def snapshot(self) -> BatchRecord:
        """The batch as the API shows it now, children included."""
        return dataclasses.replace(
            self.summary(),
            children=tuple(self.child_record(c) for c in self.batch.children),
        )

    def view(self) -> dict[str, Any]:
        return batch_view(self.snapshot())
