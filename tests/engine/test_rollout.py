"""Rollout in the engine on trio's virtual clock: slots, the error threshold, waiting
for an agent, terminate, parameters and secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio

from fleet.core import BatchStatus, ChildStatus
from fleet.proto import agent_service as pb
from fleet.server.store import BatchRecord

from .harness import Engine, make_batch

S = ChildStatus
COMMAND = "batch_agent_command_request"


def batch(tmp_path: Path, vps_ids: list[int], **options: Any) -> BatchRecord:
    return dataclasses.replace(make_batch(tmp_path, vps_ids), **options)


def sent(engine: Engine) -> list[str]:
    return [cid for s in engine.sessions.values() for cid in s.command_ids(COMMAND)]


def child(run: Any, vps_id: int) -> str:
    return next(c.child_id for c in run.batch.children.values() if c.vps_id == vps_id)


async def test_at_most_max_concurrency_run_at_once(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(5):
        for vps_id in range(1, 6):
            engine.connect(vps_id)
        run = engine.submit(batch(tmp_path, [1, 2, 3, 4, 5], max_concurrency=2))
        await engine.settle()
        assert sent(engine) == [child(run, 1), child(run, 2)]
        assert run.view()["queued"] == 3
        engine.ack(1, child(run, 1))
        engine.result(1, child(run, 1))
        await engine.settle()
        assert sent(engine) == [child(run, i) for i in (1, 2, 3)]
        for vps_id in (2, 3, 4, 5):
            while child(run, vps_id) not in sent(engine):
                await engine.settle()
                engine.result(vps_id - 1, child(run, vps_id - 1))  # keep the pipe moving
            engine.result(vps_id, child(run, vps_id))
        await engine.settle()
        assert run.batch.status is BatchStatus.COMPLETED_SUCCESSFULLY


async def test_the_error_threshold_skips_the_rest_and_is_recorded(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(5):
        for vps_id in range(1, 5):
            engine.connect(vps_id)
        run = engine.submit(batch(tmp_path, [1, 2, 3, 4], max_concurrency=2, max_errors=0))
        await engine.settle()
        engine.result(1, child(run, 1), pb.CommandStatus.FAILURE, 3)
        await engine.settle()
        assert sent(engine) == [child(run, 1), child(run, 2)]
        view = run.view()
        assert view["stop_reason"].startswith("error threshold reached")
        assert view["skipped"] == 2
        assert view["counts"] == {"FAILURE": 1, "SENT_TO_AGENT": 1, "SKIPPED": 2}
        for vps_id in (3, 4):
            task = next(t for t in view["tasks"] if t["vps_id"] == vps_id)
            assert task["error_message"] == "not run: error threshold reached"
        engine.result(2, child(run, 2))
        await engine.settle()
        assert run.batch.status is BatchStatus.COMPLETED_WITH_ERRORS
        stored = engine.recorder.batches[run.id]
        assert stored["stop_reason"] == view["stop_reason"]
        updates = [e for t, e in engine.feed.events if e.get("type") == "BATCH_TASK_UPDATE"]
        assert any(e["stop_reason"] == view["stop_reason"] for e in updates)
        assert updates[-1]["skipped"] == 2


async def test_a_target_waits_for_its_agent_and_runs_when_it_connects(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(700):
        engine.connect(2)
        run = engine.submit(batch(tmp_path, [1, 2], max_concurrency=1, wait_for_agent_seconds=600))
        await engine.settle()
        waiting = child(run, 1)
        assert sent(engine) == [child(run, 2)]  # 1 was away at its turn: 2 got the slot
        view = run.view()
        assert view["waiting_for_agent"] == 1
        task = next(t for t in view["tasks"] if t["vps_id"] == 1)
        assert task["status"] == "PENDING"
        assert task["waiting_until"] is not None
        events = [e for _, e in engine.feed.events if e.get("child_command_id") == waiting]
        assert events[-1]["waiting_until"] == task["waiting_until"]
        await trio.sleep(300)
        engine.result(2, child(run, 2))
        await engine.settle()
        assert engine.status(run, waiting) is S.PENDING
        session = engine.connect(1, open_ids=[])
        await engine.settle()
        assert session.command_ids(COMMAND) == [waiting]  # at once, once
        engine.connect(1, open_ids=[waiting])
        await engine.settle()
        assert engine.sessions[1].command_ids(COMMAND) == []
        assert engine.status(run, waiting) is S.SENT_TO_AGENT


async def test_a_target_whose_agent_never_comes_is_unreachable_after_the_wait(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(100):
        run = engine.submit(batch(tmp_path, [1], wait_for_agent_seconds=90))
        await engine.settle()
        await trio.sleep(89.9)
        assert run.batch.children[child(run, 1)].status is S.PENDING
        await trio.sleep(0.2)
        assert run.batch.is_final
        task = run.batch.children[child(run, 1)]
        assert task.status is S.AGENT_UNREACHABLE
        assert task.error_message == "agent did not connect within 90 s"
        assert run.batch.status is BatchStatus.FAILED_TO_START


async def test_terminate_skips_what_was_never_dispatched(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(5):
        engine.connect(1)
        engine.connect(2)
        run = engine.submit(
            batch(tmp_path, [1, 2, 3], max_concurrency=1, wait_for_agent_seconds=60)
        )
        await engine.settle()
        run.terminate()
        await engine.settle()
        assert run.batch.stop_reason == "batch terminated"
        for vps_id in (2, 3):
            task = run.batch.children[child(run, vps_id)]
            assert (task.status, task.error_message) == (S.SKIPPED, "not run: batch terminated")
        assert engine.sessions[1].command_ids("batch_terminate_command_request") == [child(run, 1)]
        assert engine.sessions[2].command_ids(COMMAND) == []


async def test_parameters_travel_as_environment_and_secrets_are_forgotten(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(5):
        engine.connect(1)
        record = batch(
            tmp_path,
            [1, 2],
            max_concurrency=1,
            parameters={"MODE": "safe", "TOKEN": "***"},
            secret_parameters=("TOKEN",),
        )
        run = engine.supervisor.submit(record, secrets={"TOKEN": "hunter2"})
        await engine.settle()
        (request,) = engine.sessions[1].payloads(COMMAND)
        assert request.environment == {"FLEET_PARAM_MODE": "safe", "FLEET_PARAM_TOKEN": "hunter2"}
        engine.ack(1, child(run, 1))
        await engine.settle()
        assert run._secrets == {"TOKEN": "hunter2"}  # child 2 is queued: not sent yet
        engine.result(1, child(run, 1))
        await engine.settle()
        # VPS 2 was away at its turn (no wait): every child is past dispatch, secrets gone.
        assert engine.status(run, child(run, 2)) is S.AGENT_UNREACHABLE
        assert run._secrets is None
        assert "hunter2" not in repr(run.view())
        assert "hunter2" not in repr(engine.feed.events)
        assert "hunter2" not in repr(engine.recorder.batches) + repr(engine.recorder.children)


async def test_a_restored_batch_without_its_secrets_skips_what_it_cannot_send(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(5):
        record = batch(tmp_path, [1], parameters={"TOKEN": "***"}, secret_parameters=("TOKEN",))
        run = engine.submit(record, resumed=True)
        await engine.settle()
        session = engine.connect(1, open_ids=[])
        await engine.settle()
        assert session.command_ids(COMMAND) == []
        task = run.batch.children[child(run, 1)]
        assert task.status is S.SKIPPED
        assert "secret parameters were not kept" in (task.error_message or "")


async def test_a_long_queue_of_absent_agents_drains_without_recursion(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(30):
        run = engine.submit(batch(tmp_path, list(range(1, 2001)), max_concurrency=1))
        await engine.settle()
        assert run.batch.counts() == {"AGENT_UNREACHABLE": 2000}


async def test_a_resumed_rollout_sends_what_never_left_one_slot_at_a_time(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    """After a restart the queue is rebuilt from what the agents say they hold: never sent
    twice, never more than max_concurrency at once."""
    with trio.fail_after(5):
        record = batch(tmp_path, [1, 2, 3], max_concurrency=1)
        run = engine.submit(record, resumed=True)
        await engine.settle()
        c1, c2, c3 = (child(run, v) for v in (1, 2, 3))
        engine.connect(1, open_ids=[c1])  # c1 was on its way before the restart: it runs
        engine.connect(2, open_ids=[])
        engine.connect(3, open_ids=[])
        await engine.settle()
        assert sent(engine) == []  # c1 holds the slot
        engine.result(1, c1)
        await engine.settle()
        assert sent(engine) == [c2]
        engine.result(2, c2)
        await engine.settle()
        assert sent(engine) == [c2, c3]
