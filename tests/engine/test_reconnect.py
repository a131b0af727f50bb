"""Agents leaving and coming back at every step of a child's life, and a server restart,
on trio's virtual clock: reconciliation and the reconnect-grace rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fleet.core import BatchStatus, ChildStatus
from fleet.proto import agent_service as pb
from fleet.server.agents import PeerViolation

from .harness import GRACE, Engine, make_batch

S = ChildStatus
COMMAND = "batch_agent_command_request"
TERMINATE = "batch_terminate_command_request"

#: How far a child got before its agent left: the reports its agent had sent.
STEPS = {
    "sent": [],
    "accepted": ["ack"],
    "executing": ["ack", "started"],
    "with output": ["ack", "started", "output"],
}


def _advance(engine: Engine, child_id: str, steps: list[str]) -> None:
    for step in steps:
        if step == "ack":
            engine.ack(1, child_id)
        elif step == "started":
            engine.started(1, child_id)
        else:
            engine.output(1, child_id, b"part one\n", 0)


async def _batch_at(engine: Engine, tmp_path: Path, steps: list[str]) -> tuple[object, str]:
    engine.connect(1)
    run = engine.submit(make_batch(tmp_path, [1]))
    await engine.settle()
    (child_id,) = run.batch.children
    _advance(engine, child_id, steps)
    return run, child_id


@pytest.mark.parametrize("step", list(STEPS))
async def test_an_agent_that_lists_the_command_finishes_it(
    engine: Engine, tmp_path: Path, autojump_clock: object, step: str
) -> None:
    with trio.fail_after(GRACE):
        run, child_id = await _batch_at(engine, tmp_path, STEPS[step])
        engine.drop(1)
        await trio.sleep(GRACE / 2)
        session = engine.connect(1, open_ids=[child_id])
        await engine.settle()
        assert session.command_ids(COMMAND) == []  # it has it: never sent twice
        engine.output(1, child_id, b"part one\npart two\n", 0)
        engine.result(1, child_id)
        await engine.settle()
        assert engine.status(run, child_id) is S.SUCCESS
        log = tmp_path / run.id / f"{child_id}.stdout"
        assert log.read_bytes() == b"part one\npart two\n"  # every byte exactly once


async def test_a_command_lost_on_the_way_is_sent_again(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE):
        run, child_id = await _batch_at(engine, tmp_path, STEPS["sent"])
        engine.drop(1)
        session = engine.connect(1, open_ids=[])
        await engine.settle()
        assert session.command_ids(COMMAND) == [child_id]
        assert engine.status(run, child_id) is S.SENT_TO_AGENT


@pytest.mark.parametrize("step", ["accepted", "executing", "with output"])
async def test_an_agent_that_forgot_an_accepted_command_fails_it_truthfully(
    engine: Engine, tmp_path: Path, autojump_clock: object, step: str
) -> None:
    with trio.fail_after(GRACE):
        run, child_id = await _batch_at(engine, tmp_path, STEPS[step])
        engine.drop(1)
        session = engine.connect(1, open_ids=[])
        await engine.settle()
        task = run.batch.children[child_id]
        assert task.status is S.FAILURE
        assert "came back without this command" in (task.error_message or "")
        assert session.command_ids(COMMAND) == []  # never run twice


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_legacy_agent_gets_the_grace_rules(
    engine: Engine, tmp_path: Path, autojump_clock: object, step: str
) -> None:
    with trio.fail_after(GRACE * 2):
        run, child_id = await _batch_at(engine, tmp_path, STEPS[step])
        engine.drop(1)
        session = engine.connect(1, open_ids=None)
        await engine.settle()
        # Only a command that may not have arrived is sent again (the agent ignores ids it has).
        expected = [child_id] if step == "sent" else []
        assert session.command_ids(COMMAND) == expected
        engine.result(1, child_id)
        await engine.settle()
        assert engine.status(run, child_id) is S.SUCCESS


async def test_a_terminating_child_is_told_again_and_an_unknown_one_is_skipped(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE):
        engine.connect(1)
        engine.connect(2)
        run = engine.submit(make_batch(tmp_path, [1, 2]))
        await engine.settle()
        c1, c2 = run.batch.children
        engine.ack(1, c1)
        engine.drop(1)
        engine.drop(2)
        run.terminate()
        await engine.settle()
        s1 = engine.connect(1, open_ids=[c1])
        s2 = engine.connect(2, open_ids=[])
        await engine.settle()
        assert s1.command_ids(TERMINATE) == [c1]
        assert engine.status(run, c2) is S.SKIPPED
        assert s2.command_ids(COMMAND) == []
        engine.result(1, c1, pb.CommandStatus.TERMINATED, exit_code=-15)
        await engine.settle()
        assert run.batch.status is BatchStatus.TERMINATED


async def test_resume_after_a_restart_dispatches_only_what_never_arrived(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    """The server died right after creating the batch: children are stored PENDING, though
    the command reached VPS 1 (and ran) and not VPS 2."""
    with trio.fail_after(GRACE):
        record = make_batch(tmp_path, [1, 2])
        run = engine.submit(record, resumed=True)
        await engine.settle()
        c1, c2 = run.batch.children
        assert run.batch.children[c1].status is S.PENDING  # never "not sent": unknown yet
        s1 = engine.connect(1, open_ids=[c1])
        s2 = engine.connect(2, open_ids=[])
        await engine.settle()
        assert s1.command_ids(COMMAND) == []
        assert s2.command_ids(COMMAND) == [c2]
        engine.result(1, c1)
        engine.result(2, c2, pb.CommandStatus.FAILURE, exit_code=3)
        await engine.settle()
        assert engine.status(run, c1) is S.SUCCESS
        assert engine.status(run, c2) is S.FAILURE
        assert run.batch.status is BatchStatus.COMPLETED_WITH_ERRORS


async def test_resume_with_an_agent_that_never_returns_says_it_is_unknown(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE * 2):
        run = engine.submit(make_batch(tmp_path, [1]), resumed=True)
        await trio.sleep(GRACE + 1)
        (task,) = run.batch.children.values()
        assert task.status is S.AGENT_UNREACHABLE
        assert "unknown whether the command reached the agent" in (task.error_message or "")


async def test_resume_of_a_terminating_batch_asks_the_agent_again(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(GRACE):
        record = make_batch(
            tmp_path,
            [1],
            status=BatchStatus.TERMINATING,
            children=[(S.TERMINATING, None)],
        )
        run = engine.submit(record, resumed=True)
        await engine.settle()
        (child_id,) = run.batch.children
        session = engine.connect(1, open_ids=[child_id])
        await engine.settle()
        assert session.command_ids(TERMINATE) == [child_id]
        engine.result(1, child_id, pb.CommandStatus.TERMINATED, exit_code=-15)
        await engine.settle()
        assert run.batch.status is BatchStatus.TERMINATED


async def test_a_report_on_another_vps_command_is_a_peer_violation(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    with trio.fail_after(1):
        engine.connect(2)
        run, child_id = await _batch_at(engine, tmp_path, STEPS["sent"])
        for spoof in (
            lambda: engine.output(2, child_id, b"spoofed", 0),
            lambda: engine.result(2, child_id),
        ):
            with pytest.raises(PeerViolation):
                spoof()
        await engine.settle()
        assert engine.status(run, child_id) is S.SENT_TO_AGENT
        assert not (tmp_path / run.id / f"{child_id}.stdout").exists()


async def test_presence_is_recorded_and_published(
    engine: Engine, tmp_path: Path, autojump_clock: object
) -> None:
    engine.connect(1)
    engine.drop(1)
    events = [e for topic, e in engine.feed.events if topic == "vps"]
    assert [e["vps"]["online"] for e in events] == [True, False]
    assert events[0]["vps"]["hostname"] == "h"
    assert 1 in engine.recorder.infos
    assert 1 in engine.recorder.seen
