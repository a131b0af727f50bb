"""Runs batches: one trio nursery per batch, one cancel-scoped task per VPS.

A batch's life through the modules::

    api.create_batch ─ store.create_batch (one transaction) ─ Supervisor.submit
      └─ BatchRun.run (its own nursery, under the supervisor's batch nursery)
           ├─ core.Batch.start → SendCommand per child → BatchRun._child (cancel scope each)
           │     registry has the agent? send BatchAgentCommandRequest → Dispatched
           │                             else → Unreachable (AGENT_UNREACHABLE at once)
           │     wait until terminal; cancelled by a terminate → shielded, bounded cleanup:
           │     send BatchTerminateCommandRequest, wait for the agent's answer, else
           │     TerminateUnconfirmed
           └─ BatchRun._deadlines: Tick at core.Batch.next_deadline (reconnect grace, timeout)
    rpc (agent messages) ─ Supervisor.message (sync router: command id → its BatchRun, only for
      the VPS it was sent to) ─ core events (Acked, Started, OutputSeen, Finished) ─ effects:
      ChildChanged/BatchChanged → WriteBack (persist, batched) + publish (feed);
      a result → BatchResultAck once it is committed.

``core.Batch`` decides; this module only carries out its effects. Everything here runs on the
trio thread, synchronously except the tasks, so a batch has a single writer and needs no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import betterproto2
import trio

from fleet import core
from fleet.proto import agent_service as pb

from .agents import AgentInfo, AgentRegistry, AgentSession, SessionClosed
from .batchrun import OUTPUT_FLUSH_S, BatchRun, NullFeed, Publisher, RunSettings
from .metrics import ServerMetrics
from .store import BatchRecord
from .writeback import WriteBack

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

_REPORTS = (
    pb.BatchCommandOutputStream,
    pb.BatchCommandResult,
    pb.BatchCommandAck,
    pb.BatchCommandStarted,
)


class Supervisor:
    """Owns the running batches and routes agent traffic to them.

    Implements ``fleet.server.rpc.AgentHooks``. Start ``run`` with ``nursery.start``.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        writeback: WriteBack,
        *,
        logs_dir: Path,
        output_cap: int,
        summary_lines: int = 20,
        terminate_confirm_s: float = 15.0,
        timers: core.BatchTimers | None = None,
        feed: Publisher | None = None,
        on_agent: Callable[[int, AgentInfo | None], None] | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.writeback = writeback
        self.feed: Publisher = feed or NullFeed()
        self.metrics = metrics or ServerMetrics()
        self.settings = RunSettings(
            logs_dir=logs_dir,
            output_cap=output_cap,
            summary_lines=summary_lines,
            terminate_confirm_s=terminate_confirm_s,
            timers=timers or core.BatchTimers(),
        )
        #: Called with (vps_id, handshake info or None) when an agent comes or goes.
        self.on_agent = on_agent
        self._runs: dict[str, BatchRun] = {}
        self.cleanups: set[trio.CancelScope] = set()  # shielded terminate cleanups under way
        self.stopping = False
        self._owner: dict[str, BatchRun] = {}  # child id → its batch
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until cancelled (the batch nursery lives here)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush_output)
            nursery.start_soon(self._cut_cleanups_on_shutdown)
            task_status.started()
            await trio.sleep_forever()

    async def _cut_cleanups_on_shutdown(self) -> None:
        """On shutdown, end the shielded terminate cleanups at once: they would otherwise hold
        the server up to ``terminate_confirm_s`` each."""
        try:
            await trio.sleep_forever()
        finally:
            self.stopping = True
            for scope in list(self.cleanups):
                scope.cancel()

    def submit(self, record: BatchRecord, *, resumed: bool = False) -> BatchRun:
        """Start running a stored batch (``resumed`` after a server restart)."""
        assert self._nursery is not None, "Supervisor.run is not running"
        run = BatchRun(record, self, resumed=resumed)
        self._runs[run.id] = run
        for child_id in run.batch.children:
            self._owner[child_id] = run
        self._nursery.start_soon(run.run, name=f"batch {run.id}")
        return run

    def get(self, batch_id: str) -> BatchRun | None:
        return self._runs.get(batch_id)

    def running(self) -> list[BatchRun]:
        return list(self._runs.values())

    def batch_finished(self, run: BatchRun) -> None:
        """Forget a final batch once its last changes are committed (until then the API
        reads it from memory, so nobody sees the store's older state)."""
        run.flush_output()
        self.metrics.batch_finished(run.batch, run.record.created_at)

        def forget() -> None:
            self._runs.pop(run.id, None)
            for child_id in run.batch.children:
                if self._owner.get(child_id) is run:
                    del self._owner[child_id]

        self.writeback.after_flush(forget)

    async def _flush_output(self) -> None:
        """Record output summaries and sizes every ``OUTPUT_FLUSH_S`` (never per chunk)."""
        while True:
            await trio.sleep(OUTPUT_FLUSH_S)
            for run in list(self._runs.values()):
                run.flush_output()

    # --- AgentHooks --------------------------------------------------------------------------

    def connected(self, session: AgentSession, info: AgentInfo) -> None:
        if self.on_agent is not None:
            self.on_agent(session.vps_id, info)
        for run in list(self._runs.values()):
            run.agent_returned(session.vps_id, session)

    def disconnected(self, session: AgentSession) -> None:
        if self.registry.get(session.vps_id) is not None:
            return  # a newer stream replaced this one: nothing was lost
        if self.on_agent is not None:
            self.on_agent(session.vps_id, None)
        for run in list(self._runs.values()):
            run.agent_lost(session.vps_id)

    def message(self, session: AgentSession, message: pb.MessageToServer) -> None:
        _, payload = betterproto2.which_one_of(message, "payload")
        if not isinstance(payload, _REPORTS):
            return  # a payload this server does not implement (or a repeated handshake)
        is_result = isinstance(payload, pb.BatchCommandResult)
        run = self._owner.get(payload.command_id)
        if run is None or run.batch.children[payload.command_id].vps_id != session.vps_id:
            if run is not None:
                logger.warning(
                    "vps=%s reported on command %s of another VPS; dropped",
                    session.vps_id,
                    payload.command_id,
                )
            if is_result:
                # Finished earlier (or unknown): acknowledge so the agent stops re-sending.
                self._ack_result(session, payload.command_id)
            return
        if isinstance(payload, pb.BatchCommandOutputStream):
            run.on_output(payload)
        elif isinstance(payload, pb.BatchCommandResult):
            command_id = payload.command_id
            if run.on_result(payload):
                self.writeback.after_flush(lambda: self._ack_result(session, command_id))
            else:
                self._ack_result(session, command_id)  # duplicate or late
        elif isinstance(payload, pb.BatchCommandAck):
            run.on_ack(payload)
        else:
            run.on_started(payload)

    def _ack_result(self, session: AgentSession, command_id: str) -> None:
        target = session if not session.closed else self.registry.get(session.vps_id)
        if target is None:
            return  # the agent re-sends after reconnecting and is acknowledged then
        try:
            target.send(
                pb.MessageToAgent(batch_result_ack=pb.BatchResultAck(command_id=command_id))
            )
        except SessionClosed:
            pass
