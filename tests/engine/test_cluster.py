"""A cluster node's routing on trio's virtual clock: the engine runs for real, the bus to
PostgreSQL is a fake that records what the node would write and feeds it what would arrive."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import betterproto2
import trio

from fleet import core
from fleet.proto import agent_service as pb
from fleet.server.batchrun import RunDeps
from fleet.server.clock import WallClock
from fleet.server.cluster import ClusterFeed, ClusterHooks, ClusterNode
from fleet.server.cluster.bus import Inbound, Report
from fleet.server.cluster.sql import Dispatch, Presence
from fleet.server.config import ServerConfig
from fleet.server.supervisor import Supervisor

from .harness import CONFIRM, GRACE, SLACK, FakeSession, Feed, MemoryRecorder, info, make_batch

S = core.ChildStatus
_ids = itertools.count(1)


class FakeBus:
    """What ``Bus`` would write, kept in lists."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, int, str | None, bytes]] = []
        self.reports: list[Report] = []
        self.presence: list[tuple[int, frozenset[str] | None, bool]] = []
        self.feed: list[tuple[str, str]] = []
        self.chunks: list[tuple[str, str, int, bytes]] = []
        self.handled: list[int] = []

    def post_message(
        self, node: str, kind: str, vps_id: int, batch_id: str | None, payload: bytes
    ) -> None:
        self.messages.append((node, kind, vps_id, batch_id, payload))

    def post_report(self, report: Report) -> None:
        self.reports.append(report)

    def post_presence(self, vps_id: int, open_ids: frozenset[str] | None, connected: bool) -> None:
        self.presence.append((vps_id, open_ids, connected))

    def post_feed(self, batch_id: str, event: str) -> None:
        self.feed.append((batch_id, event))

    def post_chunk(self, child_id: str, stream: str, offset: int, data: bytes) -> None:
        self.chunks.append((child_id, stream, offset, data))

    def post_handled(self, ids: list[int]) -> None:
        self.handled.extend(ids)

    async def call(self, fn: Any, *args: Any) -> Any:
        return {}  # output_many: nothing stored yet

    def to_agents(self, node: str, kind: str) -> list[str]:
        """Command ids of the ``kind`` payloads sent towards agents held by ``node``."""
        out = []
        for to, what, _vps, _batch, payload in self.messages:
            if to == node and what == "agent":
                name, body = betterproto2.which_one_of(
                    pb.MessageToAgent.FromString(payload), "payload"
                )
                if name == kind:
                    out.append(body.command_id)
        return out


class Node:
    """One cluster node's engine: a supervisor whose agents are local fakes or remote."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.bus = FakeBus()
        config = ServerConfig.for_test(tmp_path / name, node_name=name)
        self.cluster = ClusterNode(config, bus=self.bus)  # type: ignore[arg-type]
        self.recorder = MemoryRecorder()
        self.hub = Feed()
        self.deps = RunDeps(
            agents=self.cluster.registry,
            recorder=self.recorder,
            feed=ClusterFeed(self.hub, self.bus, self.recorder),  # type: ignore[arg-type]
            clock=WallClock(),
            timers=core.BatchTimers(
                reconnect_grace_s=GRACE, result_slack_s=SLACK, terminate_confirm_s=CONFIRM
            ),
            output_cap=1 << 20,
            chunks=self.cluster.chunk,
        )
        self.supervisor = Supervisor(self.deps, retain_s=120)
        self.hooks = ClusterHooks(self.supervisor, self.cluster)
        self.cluster.attach(self.supervisor, None, self.hub, self.recorder, None)  # type: ignore[arg-type]

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.supervisor.run)
        nursery.start_soon(self.cluster._handle_inbound)

    def local_agent(self, vps_id: int) -> FakeSession:
        """An agent whose stream this node holds (it listed no open command)."""
        session = FakeSession(vps_id)
        self.cluster.registry.attach(session)
        self.hooks.connected(session, info([]))
        return session

    def remote_agent(self, vps_id: int, node: str, open_ids: list[str] | None = None) -> None:
        ids = None if open_ids is None else frozenset(open_ids)
        self.arrive(presence=[Presence(vps_id, node, next(_ids), ids)])

    def arrive(self, **parts: Any) -> None:
        self.cluster._arrive(Inbound(**parts))

    def feed_events(self) -> list[dict[str, Any]]:
        """The feed events this node wrote for other nodes, in order."""
        return [json.loads(event) for _, event in self.bus.feed]

    def report(self, vps_id: int, **payload: Any) -> Dispatch:
        message = pb.MessageToServer(vps_db_id=vps_id, **payload)
        return Dispatch(next(_ids), "report", vps_id, None, bytes(message), "b")


def _result(child_id: str) -> dict[str, Any]:
    return {
        "batch_command_result": pb.BatchCommandResult(
            command_id=child_id, status=pb.CommandStatus.SUCCESS, exit_code=0
        )
    }


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def running_node(tmp_path: Path) -> AsyncIterator[Node]:
    """Node "a" running (supervisor and inbound handling) for one test, bounded in time."""
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            node = Node("a", tmp_path)
            await node.start(nursery)
            yield node
            nursery.cancel_scope.cancel()


async def test_a_child_reaches_an_agent_held_by_another_node(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        a.remote_agent(1, "b", [])
        await _settle()
        run = a.supervisor.submit(make_batch(tmp_path, [1]))
        await _settle()
        (child_id,) = run.batch.children
        # The command went out as a row for node b, which holds the agent's stream.
        assert a.bus.to_agents("b", "batch_agent_command_request") == [child_id]
        assert run.batch.children[child_id].status is S.SENT_TO_AGENT
        # b forwards the agent's output and result; the owner applies them.
        out = a.report(
            1,
            batch_command_output_stream=pb.BatchCommandOutputStream(
                command_id=child_id, stream_type=pb.OutputType.STDOUT, chunk=b"hi\n", offset=0
            ),
        )
        result = a.report(1, **_result(child_id))
        a.arrive(dispatch=[out, result])
        await _settle()
        assert run.batch.children[child_id].status is S.SUCCESS
        assert a.bus.chunks == [(child_id, "stdout", 0, b"hi\n")]  # for downloads anywhere
        # Rows are forgotten, and the result acknowledged, once the change is committed.
        assert a.bus.handled == []
        assert a.bus.to_agents("b", "batch_result_ack") == []
        # Output reaches other nodes' subscribers at once (its offset places it), after its
        # bytes; status changes once they are committed here.
        assert [event["type"] for event in a.feed_events()] == ["NEW_LOG_OUTPUT"]
        a.recorder.commit()
        types = [event["type"] for event in a.feed_events()]
        assert types[0] == "NEW_LOG_OUTPUT"
        assert "CHILD_TASK_UPDATE" in types
        assert "BATCH_TASK_UPDATE" in types
        assert a.bus.handled == [out.id, result.id]
        assert a.bus.to_agents("b", "batch_result_ack") == [child_id]


async def test_a_terminate_travels_to_the_node_holding_the_agent(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        a.remote_agent(1, "c", [])
        await _settle()
        run = a.supervisor.submit(make_batch(tmp_path, [1]))
        await _settle()
        (child_id,) = run.batch.children
        # A terminate asked on another node arrives as a row for the owner.
        payload = f'{{"batch_id": "{run.id}", "child_id": null}}'.encode()
        a.arrive(dispatch=[Dispatch(next(_ids), "terminate", 0, run.id, payload, "b")])
        await _settle()
        assert a.bus.to_agents("c", "batch_terminate_command_request") == [child_id]
        assert run.batch.children[child_id].status is S.TERMINATING


async def test_an_agent_moving_between_nodes_is_reconciled_not_rerun(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        a.remote_agent(1, "b", [])
        a.remote_agent(2, "b", [])
        await _settle()
        run = a.supervisor.submit(make_batch(tmp_path, [1, 2]))
        await _settle()
        first, second = run.batch.children
        # b dies: its agents' presence goes; both children wait out the reconnect grace.
        a.arrive(presence=[Presence(1, None), Presence(2, None)])
        await _settle()
        assert not a.cluster.registry.is_online(1)
        # They come back on c: agent 1 holds its command, agent 2 never received its own.
        a.remote_agent(1, "c", [first])
        a.remote_agent(2, "c", [])
        await _settle()
        assert a.bus.to_agents("c", "batch_agent_command_request") == [second]
        assert run.batch.children[first].status is S.SENT_TO_AGENT  # waits for its result
        await trio.sleep(GRACE + 1)
        assert run.batch.children[first].status is S.SENT_TO_AGENT


async def test_a_stream_here_yields_to_a_newer_one_on_another_node(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        session = a.local_agent(1)
        assert a.bus.presence == [(1, frozenset(), True)]
        a.remote_agent(1, "b", [])
        await _settle()
        assert session.closed  # the newest stream wins, cluster-wide
        a.cluster.registry.detach(session)
        a.hooks.disconnected(session)
        assert a.bus.presence[-1] == (1, None, False)  # deleted only if still ours (SQL)
        assert a.cluster.registry.is_online(1)  # through b


async def test_reports_for_batches_run_elsewhere_are_forwarded_without_credentials(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            b = Node("b", tmp_path)
            await b.start(nursery)
            session = b.local_agent(7)
            message = pb.MessageToServer(vps_db_id=7, agent_secret="s3cret", **_result("x-1"))
            b.hooks.message(session, message)
            (report,) = b.bus.reports
            assert (report.vps_id, report.command_id, report.is_result) == (7, "x-1", True)
            forwarded = pb.MessageToServer.FromString(report.payload)
            assert forwarded.agent_secret == ""
            assert forwarded.batch_command_result is not None
            # A report nobody owns (its batch ended long ago) comes back unrouted: acknowledged.
            b.arrive(unrouted=[report])
            await _settle()
            assert session.command_ids("batch_result_ack") == ["x-1"]
            nursery.cancel_scope.cancel()


async def test_reports_wait_while_batches_are_being_adopted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        a.cluster._adopting = trio.Event()
        a.arrive(dispatch=[a.report(1, **_result("adopted-1"))])
        await _settle()
        assert a.bus.messages == []  # not acknowledged as unknown: its batch is on its way
        gate, a.cluster._adopting = a.cluster._adopting, None
        gate.set()
        await _settle()
        assert a.bus.messages == []  # agent 1 is connected nowhere: nothing to send to


class FakeDb:
    def __init__(self, record: Any) -> None:
        self.record = record

    async def run(self, fn: Any, *args: Any) -> Any:
        return self.record


async def test_an_adopted_batch_has_its_connected_agents_reconnect_to_reconcile(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with running_node(tmp_path) as a:
        record = make_batch(
            tmp_path / "logs",
            [1, 2, 3],
            status=core.BatchStatus.IN_PROGRESS,
            children=[(S.EXECUTING, None), (S.SENT_TO_AGENT, None), (S.SUCCESS, 0)],
        )
        first, second, _ = (c.id for c in record.children)
        a.cluster._db = FakeDb(record)  # type: ignore[assignment]

        async def same_logs(record: Any) -> Any:
            return record  # (writing them takes a real thread: not on the virtual clock)

        a.cluster._local_logs = same_logs  # type: ignore[method-assign]
        here = FakeSession(1)
        a.cluster.registry.attach(here)
        a.hooks.connected(here, info([]))  # an old handshake: it predates the command
        a.remote_agent(2, "c", [])
        a.remote_agent(3, "c", [])
        await _settle()
        await a.cluster._resume(record.id)
        run = a.supervisor.get(record.id)
        assert run is not None
        # Their handshakes are stale: the agents of live children reconnect and say anew.
        assert here.closed
        resync = [m for m in a.bus.messages if m[1] == "resync"]
        assert [(m[0], m[2]) for m in resync] == [("c", 2)]  # 3's child has ended
        assert run.batch.children[first].status is S.EXECUTING  # not "came back without"
        a.remote_agent(2, "b", [second])  # its fresh handshake holds the command
        await _settle()
        assert run.batch.children[second].status is S.SENT_TO_AGENT
        assert a.bus.to_agents("b", "batch_agent_command_request") == []  # not sent twice
