"""The engine's timers on trio's virtual clock: grace, result slack, terminate confirmation."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fleet.core import BatchStatus, ChildStatus
from fleet.proto import agent_service as pb

from .harness import CONFIRM, GRACE, SLACK, Engine, make_batch

S = ChildStatus
TERMINATE = "batch_terminate_command_request"
COMMAND = "batch_agent_command_request"


async def _running(engine: Engine, tmp_path: Path, **kwargs: int) -> tuple[object, str]:
    """A one-child batch on VPS 1, its command started on a connected agent."""
    session = engine.sessions.get(1) or engine.connect(1)
    run = engine.submit(make_batch(tmp_path, [1], **kwargs))
    await engine.settle()
    (child_id,) = run.batch.children
    assert session.command_ids(COMMAND) == [child_id]
    engine.ack(1, child_id)
    engine.started(1, child_id)
    assert engine.status(run, child_id) is S.EXECUTING
    return run, child_id


async def test_a_connected_agent_runs_the_command_and_its_result_is_acked_once_stored(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1):
        run, child_id = await _running(engine, tmp_path)
        engine.output(1, child_id, b"hi\n", 0)
        engine.result(1, child_id)
        await engine.settle()
        assert engine.status(run, child_id) is S.SUCCESS
        assert engine.sessions[1].command_ids("batch_result_ack") == []  # not yet committed
        engine.recorder.commit()
        assert engine.sessions[1].command_ids("batch_result_ack") == [child_id]
        assert run.batch.status is BatchStatus.COMPLETED_SUCCESSFULLY
        assert (tmp_path / run.id / f"{child_id}.stdout").read_bytes() == b"hi\n"


async def test_an_absent_agent_is_unreachable_at_once(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1):
        run = engine.submit(make_batch(tmp_path, [1]))
        await engine.settle()
        assert run.batch.status is BatchStatus.FAILED_TO_START
        assert trio.current_time() == 0


async def test_a_lost_agent_gets_exactly_the_grace(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE * 2):
        run, child_id = await _running(engine, tmp_path)
        lost_at = trio.current_time()
        engine.drop(1)
        while not run.batch.is_final:
            await engine.settle()
            await trio.sleep(1)
        task = run.batch.children[child_id]
        assert task.status is S.AGENT_UNREACHABLE
        assert task.completed_at == pytest.approx(lost_at + GRACE)
        assert "did not come back within 30 s" in (task.error_message or "")


async def test_a_late_result_after_the_grace_is_kept_as_agent_reported(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE * 3):
        run, child_id = await _running(engine, tmp_path)
        engine.output(1, child_id, b"one\n", 0)
        engine.drop(1)
        await trio.sleep(GRACE + 1)
        assert engine.status(run, child_id) is S.AGENT_UNREACHABLE
        engine.recorder.commit()  # the final batch is committed: the API reads the store now
        engine.connect(1, open_ids=[child_id])
        engine.output(1, child_id, b"one\ntwo\n", 0)  # re-sent from the start: de-duplicated
        engine.result(1, child_id, exit_code=0)
        await engine.settle()
        task = run.batch.children[child_id]
        assert task.status is S.AGENT_UNREACHABLE
        assert task.agent_reported is not None
        assert task.agent_reported.status is S.SUCCESS
        assert (tmp_path / run.id / f"{child_id}.stdout").read_bytes() == b"one\ntwo\n"
        engine.recorder.commit()
        assert engine.sessions[1].command_ids("batch_result_ack") == [child_id]
        assert engine.recorder.children[child_id]["agent_reported"]["status"] == "SUCCESS"


async def test_result_deadline_after_the_timeout_and_slack(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1000):
        run, child_id = await _running(engine, tmp_path, timeout_s=10)
        t0 = trio.current_time()
        await trio.sleep(10 + SLACK - 0.5)
        assert engine.status(run, child_id) is S.EXECUTING
        await trio.sleep(1)
        task = run.batch.children[child_id]
        assert task.status is S.FAILURE
        assert task.completed_at == pytest.approx(t0 + 10 + SLACK)
        assert engine.sessions[1].command_ids(TERMINATE) == [child_id]


async def test_an_unconfirmed_terminate_fails_after_the_confirmation_time(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1000):
        run, child_id = await _running(engine, tmp_path)
        t0 = trio.current_time()
        run.terminate(child_id)
        await engine.settle()
        assert engine.status(run, child_id) is S.TERMINATING
        assert engine.sessions[1].command_ids(TERMINATE) == [child_id]
        await trio.sleep(CONFIRM + 1)
        task = run.batch.children[child_id]
        assert task.status is S.FAILURE
        assert task.completed_at == pytest.approx(t0 + CONFIRM)
        assert "not confirmed by the agent within 15 s" in (task.error_message or "")
        assert run.batch.status is BatchStatus.COMPLETED_WITH_ERRORS


async def test_a_confirmed_terminate_ends_terminated(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1):
        run, child_id = await _running(engine, tmp_path)
        run.terminate()
        await engine.settle()
        engine.result(1, child_id, pb.CommandStatus.TERMINATED, exit_code=-15)
        await engine.settle()
        assert engine.status(run, child_id) is S.TERMINATED
        assert run.batch.status is BatchStatus.TERMINATED


async def test_a_result_racing_the_terminate_wins(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    """The command finished as the terminate went out: its real result is the truth."""
    with trio.fail_after(1):
        run, child_id = await _running(engine, tmp_path)
        run.terminate(child_id)
        engine.result(1, child_id, exit_code=0)
        await engine.settle()
        assert engine.status(run, child_id) is S.SUCCESS
        # The agent answers the terminate too: "no such running command" changes nothing.
        engine.result(1, child_id, pb.CommandStatus.FAILURE, error="no such running command")
        await engine.settle()
        assert engine.status(run, child_id) is S.SUCCESS


async def test_the_confirmation_clock_stops_while_the_agent_is_away(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1000):
        run, child_id = await _running(engine, tmp_path)
        engine.drop(1)
        run.terminate(child_id)
        await trio.sleep(CONFIRM + 5)  # longer than the confirmation, shorter than the grace
        assert engine.status(run, child_id) is S.TERMINATING
        session = engine.connect(1, open_ids=[child_id])
        await engine.settle()
        assert session.command_ids(TERMINATE) == [child_id]  # told again on return
        returned = trio.current_time()
        await trio.sleep(CONFIRM + 1)
        task = run.batch.children[child_id]
        assert task.status is S.FAILURE
        assert task.completed_at == pytest.approx(returned + CONFIRM)


async def test_a_result_just_before_the_deadline_is_the_status(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1000):
        run, child_id = await _running(engine, tmp_path, timeout_s=5)
        await trio.sleep(5 + SLACK - 0.001)
        engine.result(1, child_id)
        await trio.sleep(10)
        assert engine.status(run, child_id) is S.SUCCESS
        assert engine.sessions[1].command_ids(TERMINATE) == []


async def test_shutdown_does_not_wait_for_a_terminate_confirmation(
    tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            engine = Engine(nursery, tmp_path)
            await engine.start()
            run, child_id = await _running(engine, tmp_path)
            run.terminate(child_id)
            await engine.settle()
            t0 = trio.current_time()
            nursery.cancel_scope.cancel(reason="server stopping")
        assert trio.current_time() == t0  # no confirmation wait
        assert engine.status(run, child_id) is S.TERMINATING
