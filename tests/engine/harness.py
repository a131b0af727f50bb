"""Fakes for the engine tier: agent sessions, an in-memory recorder, stored records.

The engine (``BatchRun``, ``Supervisor``) runs for real on trio's virtual clock; only its
edges are fakes: sessions that collect what the server sends, a recorder that keeps updates in
memory and commits when told, and ``BatchRecord``s built here instead of by a store.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import betterproto2
import trio

from fleet import core
from fleet.proto import agent_service as pb
from fleet.server.agents import AgentInfo, AgentRegistry, SessionClosed
from fleet.server.batchrun import RunDeps
from fleet.server.clock import WallClock
from fleet.server.store import UNSET, BatchRecord, BatchUpdate, ChildRecord, ChildUpdate
from fleet.server.supervisor import Supervisor

__all__ = ["Engine", "FakeSession", "MemoryRecorder", "info", "make_batch"]

GRACE = 30.0
CONFIRM = 15.0
SLACK = 60.0
_ids = itertools.count(1)


class FakeSession:
    """An agent stream as the server sees it: sent messages pile up in ``sent``."""

    def __init__(self, vps_id: int) -> None:
        self.vps_id = vps_id
        self.sent: list[pb.MessageToAgent] = []
        self.closed = False
        self.arrived = trio.Event()

    def send(self, message: pb.MessageToAgent) -> None:
        if self.closed:
            raise SessionClosed("closed")
        self.sent.append(message)
        self.arrived.set()

    def close(self, reason: str) -> None:
        self.closed = True

    def payloads(self, kind: str) -> list[Any]:
        """Every sent payload of one kind (``batch_agent_command_request``, …)."""
        out = []
        for message in self.sent:
            name, payload = betterproto2.which_one_of(message, "payload")
            if name == kind:
                out.append(payload)
        return out

    def command_ids(self, kind: str) -> list[str]:
        return [p.command_id for p in self.payloads(kind)]


class MemoryRecorder:
    """The write-behind store, in memory: updates merge per row; ``commit`` runs callbacks."""

    def __init__(self) -> None:
        self.children: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.seen: dict[int, datetime] = {}
        self.infos: dict[int, AgentInfo] = {}
        self._callbacks: list[Callable[[], None]] = []

    def child(self, update: ChildUpdate) -> None:
        row = self.children.setdefault(update.child_id, {})
        for name in update.__dataclass_fields__:
            value = getattr(update, name)
            if value is not None and value is not UNSET:
                row[name] = value

    def batch(self, update: BatchUpdate) -> None:
        row = self.batches.setdefault(update.batch_id, {})
        for name in update.__dataclass_fields__:
            value = getattr(update, name)
            if value is not None:
                row[name] = value

    def agent_info(self, vps_id: int, info: AgentInfo, at: datetime) -> None:
        self.infos[vps_id] = info
        self.seen[vps_id] = at

    def vps_seen(self, vps_id: int, at: datetime) -> None:
        self.seen[vps_id] = at

    def after_flush(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def commit(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class Feed:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    watching: bool = True

    def publish(self, topic: str, event: dict[str, Any], *, text: str | None = None) -> None:
        self.events.append((topic, event))

    def has_subscribers(self, topic: str) -> bool:
        return self.watching


def info(open_ids: list[str] | None = None) -> AgentInfo:
    """A handshake's facts; ``open_ids`` given = the agent listed its commands completely."""
    return AgentInfo(
        hostname="h",
        os_type="LINUX",
        os_name="Linux",
        arch="x86_64",
        kernel_version="6",
        agent_version="t",
        open_command_ids=None if open_ids is None else frozenset(open_ids),
    )


def make_batch(
    logs: Path,
    vps_ids: list[int],
    *,
    timeout_s: int = 0,
    status: core.BatchStatus = core.BatchStatus.PENDING,
    children: list[tuple[core.ChildStatus, int | None]] | None = None,
) -> BatchRecord:
    """A stored batch with one child per VPS (``children``: restored statuses)."""
    batch_id = f"b{next(_ids)}"
    now = datetime.now(UTC)
    records = []
    for i, vps_id in enumerate(vps_ids):
        child_id = f"{batch_id}-c{vps_id}"
        child_status, exit_code = children[i] if children else (core.ChildStatus.PENDING, None)
        records.append(
            ChildRecord(
                id=child_id,
                batch_id=batch_id,
                vps_id=vps_id,
                vps_name=f"vps-{vps_id}",
                status=child_status,
                exit_code=exit_code,
                error_message=None,
                stdout_log_path=str(logs / batch_id / f"{child_id}.stdout"),
                stderr_log_path=str(logs / batch_id / f"{child_id}.stderr"),
                last_output_at=None,
                created_at=now,
                updated_at=now,
                agent_started_at=None,
                agent_completed_at=None,
                stdout_summary=(),
                stderr_summary=(),
                stdout_bytes=0,
                stderr_bytes=0,
                truncated=False,
            )
        )
    return BatchRecord(
        id=batch_id,
        status=status,
        execution_alias=None,
        user_id="admin",
        command_type="ADHOC_COMMAND",
        command_content="echo hi",
        script_id=None,
        working_directory=None,
        timeout_seconds=timeout_s,
        created_at=now,
        updated_at=now,
        completed_at=None,
        counts={},
        children=tuple(records),
    )


class Engine:
    """A supervisor with fake agents, on whatever clock the test runs (use autojump_clock)."""

    def __init__(self, nursery: trio.Nursery, logs: Path) -> None:
        self.nursery = nursery
        self.logs = logs
        self.registry = AgentRegistry()
        self.recorder = MemoryRecorder()
        self.feed = Feed()
        self.deps = RunDeps(
            agents=self.registry,
            recorder=self.recorder,
            feed=self.feed,
            clock=WallClock(),
            timers=core.BatchTimers(
                reconnect_grace_s=GRACE, result_slack_s=SLACK, terminate_confirm_s=CONFIRM
            ),
            output_cap=1 << 20,
        )
        self.supervisor = Supervisor(self.deps, retain_s=120)
        self.sessions: dict[int, FakeSession] = {}

    async def start(self) -> None:
        await self.nursery.start(self.supervisor.run)

    # --- agents ------------------------------------------------------------------------------

    def connect(self, vps_id: int, open_ids: list[str] | None = None) -> FakeSession:
        session = FakeSession(vps_id)
        self.sessions[vps_id] = session
        self.registry.attach(session)
        self.supervisor.connected(session, info(open_ids))
        return session

    def drop(self, vps_id: int) -> None:
        session = self.sessions.pop(vps_id)
        session.closed = True
        self.registry.detach(session)
        self.supervisor.disconnected(session)

    def report(self, vps_id: int, **payload: Any) -> None:
        """An agent message (``batch_command_ack=…`` etc.) from ``vps_id``'s session."""
        session = self.sessions[vps_id]
        self.supervisor.message(session, pb.MessageToServer(vps_db_id=vps_id, **payload))

    def ack(self, vps_id: int, child_id: str, accepted: bool = True, reason: str = "") -> None:
        self.report(
            vps_id,
            batch_command_ack=pb.BatchCommandAck(
                command_id=child_id, accepted=accepted, reason=reason
            ),
        )

    def started(self, vps_id: int, child_id: str, pid: int = 42) -> None:
        self.report(
            vps_id, batch_command_started=pb.BatchCommandStarted(command_id=child_id, pid=pid)
        )

    def output(self, vps_id: int, child_id: str, data: bytes, offset: int) -> None:
        self.report(
            vps_id,
            batch_command_output_stream=pb.BatchCommandOutputStream(
                command_id=child_id,
                stream_type=pb.OutputType.STDOUT,
                chunk=data,
                offset=offset,
            ),
        )

    def result(
        self,
        vps_id: int,
        child_id: str,
        status: pb.CommandStatus = pb.CommandStatus.SUCCESS,
        exit_code: int = 0,
        error: str = "",
    ) -> None:
        self.report(
            vps_id,
            batch_command_result=pb.BatchCommandResult(
                command_id=child_id, status=status, exit_code=exit_code, error_message=error
            ),
        )

    # --- batches -----------------------------------------------------------------------------

    def submit(self, record: BatchRecord, *, resumed: bool = False) -> Any:
        return self.supervisor.submit(record, resumed=resumed)

    async def settle(self) -> None:
        """Let every task that can run, run (no time passes)."""
        await trio.testing.wait_all_tasks_blocked()

    def status(self, run: Any, child_id: str) -> core.ChildStatus:
        return run.batch.children[child_id].status
