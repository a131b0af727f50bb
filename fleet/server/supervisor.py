"""Runs batches: one trio nursery per batch, one cancel-scoped task per VPS.

A batch's life through the modules::

    api: store.create_batch (one transaction) ─ Supervisor.submit
      └─ BatchRun.run (its own nursery, under the supervisor's batch nursery)
           ├─ core.Batch.start → SendCommand per child: agent connected? send the request →
           │     Dispatched, else Unreachable (AGENT_UNREACHABLE at once)
           ├─ BatchRun._child per VPS (a cancel scope each) until the child is terminal;
           │     a terminate cancels it: tell the agent, wait for its answer
           └─ BatchRun._deadlines: Tick at core.Batch.next_deadline (reconnect grace,
                 terminate confirmation, result deadline)
    rpc (agent streams) ─ Supervisor.connected / message / disconnected (synchronous):
      presence (last seen, handshake facts, the /ws/vps feed), reconciliation of every batch
      with the agent's open commands, and reports routed by command id to their BatchRun (only
      from the VPS it was sent to) ─ core events ─ effects: persist (WriteBack) and publish;
      a result is acknowledged to the agent once it is committed.

``core.Batch`` decides; this module only carries out its effects. Everything here runs on the
trio thread, synchronously except the tasks, so a batch has a single writer and needs no locks.

A final batch stays routable for ``retain_s``: output and a result that arrive after the server
ended a child (its agent was away too long) still reach its log and its ``agent_reported``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

import betterproto2
import trio

from fleet.proto import agent_service as pb

from .agents import (
    AgentInfo,
    AgentRegistry,
    AgentSession,
    PeerViolation,
    SessionClosed,
    result_ack_message,
)
from .batchrun import BatchRun, Publisher, RunDeps
from .store import BatchRecord
from .views import iso

__all__ = ["OUTPUT_FLUSH_S", "VPS_TOPIC", "Supervisor"]

logger = logging.getLogger(__name__)

#: The feed topic of agent presence (``VPS_UPDATE`` events, ``/ws/vps``).
VPS_TOPIC = "vps"
#: How often output summaries, sizes and last_output_at reach the store.
OUTPUT_FLUSH_S = 0.5

_REPORTS = (
    pb.BatchCommandOutputStream,
    pb.BatchCommandResult,
    pb.BatchCommandAck,
    pb.BatchCommandStarted,
)


class Supervisor:
    """Owns the running batches, agent presence, and routes agent traffic to the batches.

    Implements ``fleet.server.rpc.AgentHooks``. Start ``run`` with ``nursery.start``.

    Args:
        deps: what every batch uses; its recorder also takes agent presence, and its feed the
            ``vps`` topic.
        retain_s: how long a final batch still takes late reports.
    """

    def __init__(self, deps: RunDeps, *, retain_s: float = 600.0) -> None:
        self.deps = deps
        self.registry: AgentRegistry = deps.agents
        self._writeback = deps.recorder
        self._feed: Publisher = deps.feed
        self._retain_s = retain_s
        self._runs: dict[str, BatchRun] = {}  # batches the API reads from memory
        self._owner: dict[str, BatchRun] = {}  # child id → its batch (running or retained)
        self._retained: collections.deque[tuple[float, BatchRun]] = (
            collections.deque()
        )  # oldest first
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until cancelled (the batch nursery lives here)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush_output)
            task_status.started()
            await trio.sleep_forever()

    def submit(
        self,
        record: BatchRecord,
        *,
        resumed: bool = False,
        secrets: Mapping[str, str] | None = None,
    ) -> BatchRun:
        """Start running a stored batch (``resumed`` after a server restart); ``secrets``: the
        values of its secret parameters (memory only)."""
        assert self._nursery is not None, "Supervisor.run is not running"
        run = BatchRun(record, self.deps, on_final=self._finished, resumed=resumed, secrets=secrets)
        self._runs[run.id] = run
        for child_id in run.batch.children:
            self._owner[child_id] = run
        self._nursery.start_soon(run.run, name=f"batch {run.id}")
        return run

    def get(self, batch_id: str) -> BatchRun | None:
        """A batch the store may not show up to date yet (running, or final but not flushed)."""
        return self._runs.get(batch_id)

    def routes(self, command_id: str) -> bool:
        """Whether reports on ``command_id`` reach a batch here (running or retained)."""
        return command_id in self._owner

    def running(self) -> list[BatchRun]:
        return list(self._runs.values())

    def _finished(self, run: BatchRun) -> None:
        """Once its last changes are committed, the API reads a final batch from the store
        (until then from memory, so nobody sees older state). It stays routable a while."""
        self.deps.metrics.batch_finished(run.batch, run.record.created_at)
        run.flush_output()

        def committed() -> None:
            self._runs.pop(run.id, None)
            self._retained.append((trio.current_time() + self._retain_s, run))

        self._writeback.after_flush(committed)

    def _forget_expired(self) -> None:
        now = trio.current_time()
        while self._retained and self._retained[0][0] <= now:
            _, run = self._retained.popleft()
            for child_id in run.batch.children:
                if self._owner.get(child_id) is run:
                    del self._owner[child_id]

    async def _flush_output(self) -> None:
        """Record output summaries and sizes every ``OUTPUT_FLUSH_S`` (never per chunk)."""
        while True:
            await trio.sleep(OUTPUT_FLUSH_S)
            for run in self._runs.values():
                run.flush_output()
            for _, run in self._retained:
                run.flush_output()
            self._forget_expired()

    # --- AgentHooks --------------------------------------------------------------------------

    def connected(self, session: AgentSession, info: AgentInfo) -> None:
        self._presence(session.vps_id, info)
        for run in list(self._runs.values()):
            run.agent_connected(session.vps_id, info.open_command_ids)

    def disconnected(self, session: AgentSession) -> None:
        if self.registry.get(session.vps_id) is not None:
            return  # a newer stream replaced this one: nothing was lost
        self._presence(session.vps_id, None)
        for run in list(self._runs.values()):
            run.agent_lost(session.vps_id)

    def message(self, session: AgentSession, message: pb.MessageToServer) -> None:
        _, payload = betterproto2.which_one_of(message, "payload")
        if not isinstance(payload, _REPORTS):
            return  # a payload this server does not implement (or a repeated handshake)
        command_id = payload.command_id
        is_result = isinstance(payload, pb.BatchCommandResult)
        run = self._owner.get(command_id)
        if run is not None and run.batch.children[command_id].vps_id != session.vps_id:
            # No honest agent can: its stream ends, nothing reaches the store.
            raise PeerViolation(f"vps={session.vps_id} reported on a command of another VPS")
        if run is None:
            if is_result:
                # Finished long ago (or unknown): acknowledge so the agent stops re-sending.
                self._ack_result(session, command_id)
            return
        if isinstance(payload, pb.BatchCommandOutputStream):
            run.on_output(payload)
        elif isinstance(payload, pb.BatchCommandResult):
            if run.on_result(payload):
                self._writeback.after_flush(lambda: self._ack_result(session, command_id))
            else:
                self._ack_result(session, command_id)  # a duplicate
        elif isinstance(payload, pb.BatchCommandAck):
            run.on_ack(payload)
        else:
            run.on_started(payload)

    def _ack_result(self, session: AgentSession, command_id: str) -> None:
        target = session if not session.closed else self.registry.get(session.vps_id)
        if target is None:
            return  # the agent re-sends after reconnecting and is acknowledged then
        try:
            target.send(result_ack_message(command_id))
        except SessionClosed:
            pass

    def _presence(self, vps_id: int, info: AgentInfo | None) -> None:
        """Record an agent's arrival (with its handshake) or departure, and publish it."""
        now = self.deps.clock.to_datetime(self.deps.clock.now())
        assert now is not None
        event: dict[str, Any] = {"id": vps_id, "online": info is not None, "last_seen_at": iso(now)}
        if info is not None:
            self._writeback.agent_info(vps_id, info, now)
            event |= {
                "hostname": info.hostname,
                "os": info.os_name or info.os_type,
                "agent_version": info.agent_version,
            }
        else:
            self._writeback.vps_seen(vps_id, now)
        self._feed.publish(VPS_TOPIC, {"type": "VPS_UPDATE", "vps": event})
