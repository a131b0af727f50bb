"""The child-task state machine, table-driven over every (status, event) pair (h2's
test_state_machines): legal pairs move to the expected status and record the right data;
illegal pairs raise ``InvalidTransition`` and change nothing; terminal statuses never change."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from fleet.core import (
    CHILD_TRANSITIONS,
    Acked,
    AgentLost,
    AgentReturned,
    ChildEvent,
    ChildStatus,
    ChildTask,
    Dispatched,
    Finished,
    FleetError,
    InvalidTransition,
    OutputSeen,
    Started,
    TerminateChild,
    TerminateUnconfirmed,
    Unreachable,
)

S = ChildStatus
CID = "c1"

#: Every kind of child event, with the data it carries (Acked and Finished in each flavour).
EVENTS: dict[str, Callable[[], ChildEvent]] = {
    "Dispatched": lambda: Dispatched(CID),
    "Unreachable": lambda: Unreachable(CID, reason="agent is offline"),
    "Acked": lambda: Acked(CID, accepted=True),
    "Rejected": lambda: Acked(CID, accepted=False, reason="disk full"),
    "Started": lambda: Started(CID, pid=4242),
    "OutputSeen": lambda: OutputSeen(CID),
    "FinishedSuccess": lambda: Finished(CID, S.SUCCESS, exit_code=0),
    "FinishedFailure": lambda: Finished(CID, S.FAILURE, exit_code=-2, error_message="boom"),
    "FinishedTerminated": lambda: Finished(CID, S.TERMINATED, exit_code=-15),
    "TerminateChild": lambda: TerminateChild(CID),
    "TerminateUnconfirmed": lambda: TerminateUnconfirmed(CID, waited_s=5),
    "AgentLost": lambda: AgentLost(CID),
    "AgentReturned": lambda: AgentReturned(CID),
}

_FINISHED = {
    "FinishedSuccess": S.SUCCESS,
    "FinishedFailure": S.FAILURE,
    "FinishedTerminated": S.TERMINATED,
}
_LIVE = (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING, S.TERMINATING)

#: The expected machine, written out from SPEC §3 (independently of CHILD_TRANSITIONS).
EXPECTED: dict[tuple[ChildStatus, str], ChildStatus] = {
    (S.PENDING, "Dispatched"): S.SENT_TO_AGENT,
    (S.PENDING, "Unreachable"): S.AGENT_UNREACHABLE,
    (S.PENDING, "TerminateChild"): S.TERMINATED,
    (S.SENT_TO_AGENT, "Acked"): S.AGENT_ACCEPTED,
    (S.SENT_TO_AGENT, "Rejected"): S.AGENT_REJECTED,
    (S.SENT_TO_AGENT, "Started"): S.EXECUTING,
    (S.SENT_TO_AGENT, "OutputSeen"): S.EXECUTING,
    (S.SENT_TO_AGENT, "TerminateChild"): S.TERMINATING,
    (S.AGENT_ACCEPTED, "Acked"): S.AGENT_ACCEPTED,
    (S.AGENT_ACCEPTED, "Rejected"): S.AGENT_REJECTED,
    (S.AGENT_ACCEPTED, "Started"): S.EXECUTING,
    (S.AGENT_ACCEPTED, "OutputSeen"): S.EXECUTING,
    (S.AGENT_ACCEPTED, "TerminateChild"): S.TERMINATING,
    (S.EXECUTING, "Acked"): S.EXECUTING,
    (S.EXECUTING, "Started"): S.EXECUTING,
    (S.EXECUTING, "OutputSeen"): S.EXECUTING,
    (S.EXECUTING, "TerminateChild"): S.TERMINATING,
    (S.TERMINATING, "Acked"): S.TERMINATING,
    (S.TERMINATING, "Rejected"): S.AGENT_REJECTED,
    (S.TERMINATING, "Started"): S.TERMINATING,
    (S.TERMINATING, "OutputSeen"): S.TERMINATING,
    (S.TERMINATING, "TerminateChild"): S.TERMINATING,
    (S.TERMINATING, "TerminateUnconfirmed"): S.FAILURE,
    **{(s, name): result for s in _LIVE for name, result in _FINISHED.items()},
    **{(s, "AgentLost"): s for s in _LIVE},
    **{(s, "AgentReturned"): s for s in _LIVE},
}

#: How to reach each status with legal events: (event name, time) steps from PENDING.
PATHS: dict[ChildStatus, list[tuple[str, float]]] = {
    S.PENDING: [],
    S.SENT_TO_AGENT: [("Dispatched", 1)],
    S.AGENT_ACCEPTED: [("Dispatched", 1), ("Acked", 2)],
    S.EXECUTING: [("Dispatched", 1), ("Acked", 2), ("Started", 3)],
    S.TERMINATING: [("Dispatched", 1), ("Acked", 2), ("Started", 3), ("TerminateChild", 4)],
    S.SUCCESS: [("Dispatched", 1), ("Started", 3), ("FinishedSuccess", 5)],
    S.FAILURE: [("Dispatched", 1), ("Started", 3), ("FinishedFailure", 5)],
    S.TERMINATED: [("TerminateChild", 1)],
    S.AGENT_UNREACHABLE: [("Unreachable", 1)],
    S.AGENT_REJECTED: [("Dispatched", 1), ("Rejected", 2)],
}
NOW = 100.0


def reach(status: ChildStatus, *, lost: bool = False) -> ChildTask:
    task = ChildTask(CID, 7, vps_name="web-7")
    for name, at in PATHS[status]:
        task.handle(EVENTS[name](), now=at)
    if lost:
        task.handle(AgentLost(CID), now=50)
    assert task.status is status
    return task


def expected_after(before: ChildTask, name: str, status: ChildStatus) -> dict[str, Any]:
    """The task's fields after ``name`` at ``NOW`` took it to ``status`` (the test's oracle)."""
    after = dataclasses.asdict(before) | {"status": status}
    if name == "Dispatched":
        after["sent_at"] = NOW
    elif name == "Unreachable":
        after |= {"error_message": "agent is offline", "completed_at": NOW}
    elif name == "Rejected":
        after |= {"error_message": "disk full", "completed_at": NOW}
    elif name == "Started":
        after |= {"pid": 4242, "started_at": before.started_at or NOW}
    elif name == "OutputSeen":
        after |= {"last_output_at": NOW, "started_at": before.started_at or NOW}
    elif name in _FINISHED:
        event = EVENTS[name]()
        assert isinstance(event, Finished)
        after |= {
            "exit_code": event.exit_code,
            "error_message": event.error_message,
            "completed_at": NOW,
        }
    elif name == "TerminateChild" and status is S.TERMINATED:
        after |= {
            "error_message": "terminated before it was sent to the agent",
            "completed_at": NOW,
        }
    elif name == "TerminateUnconfirmed":
        after |= {
            "error_message": "termination was not confirmed by the agent within 5 s; "
            "the command may still be running",
            "completed_at": NOW,
        }
    elif name == "AgentLost":
        after["lost_since"] = before.lost_since if before.lost_since is not None else NOW
    elif name == "AgentReturned":
        after["lost_since"] = None
    if status.is_terminal:
        after["lost_since"] = None
    visible = ("status", "exit_code", "error_message", "started_at", "completed_at")
    if any(after[f] != getattr(before, f) for f in visible):
        after["updated_at"] = NOW
    return after


# Every pair, and again for each live status whose agent is currently lost.
ALL_PAIRS = [(s, name, False) for s in S for name in EVENTS] + [
    (s, name, True) for s in _LIVE for name in EVENTS
]


@pytest.mark.parametrize(
    ("status", "name", "lost"),
    ALL_PAIRS,
    ids=[f"{s}{'(lost)' if lost else ''}-{n}" for s, n, lost in ALL_PAIRS],
)
def test_every_status_event_pair(status: ChildStatus, name: str, lost: bool) -> None:
    task = reach(status, lost=lost)
    before = copy.deepcopy(task)
    event = EVENTS[name]()
    target = EXPECTED.get((status, name))

    if target is None:
        assert not task.accepts(event)
        with pytest.raises(InvalidTransition) as info:
            task.handle(event, now=NOW)
        assert isinstance(info.value, FleetError)
        assert info.value.state is status
        assert info.value.event is event
        assert info.value.http_status == 409
        assert task == before  # exactly unchanged
        return

    assert task.accepts(event)
    changed = task.handle(event, now=NOW)
    assert task.status is target
    expected = expected_after(before, name, target)
    assert dataclasses.asdict(task) == expected
    assert changed == (expected["updated_at"] == NOW)


def test_the_table_matches_the_spec() -> None:
    """CHILD_TRANSITIONS has exactly the pairs the spec allows (Acked/Finished flavours merged)."""
    by_type = {name: type(make()) for name, make in EVENTS.items()}
    allowed = {(status, by_type[name]) for status, name in EXPECTED}
    assert set(CHILD_TRANSITIONS) == allowed
    for (status, kind), target in CHILD_TRANSITIONS.items():
        assert not status.is_terminal, "a terminal status must never be a key"
        if kind is Finished:
            assert target is None  # the result carries the status
        elif target is not None:
            name = next(n for n, t in by_type.items() if t is kind and n != "Rejected")
            assert EXPECTED[(status, name)] is target


@pytest.mark.parametrize("status", [s for s in S if s.is_terminal])
def test_terminal_statuses_never_change(status: ChildStatus) -> None:
    task = reach(status)
    before = copy.deepcopy(task)
    for make in EVENTS.values():
        event = make()
        with pytest.raises(InvalidTransition):
            task.handle(event, now=NOW)
        with pytest.raises(InvalidTransition):
            task.expire(S.FAILURE, "too late", now=NOW)
    assert task == before


def test_statuses_and_terminality() -> None:
    terminal = {s for s in S if s.is_terminal}
    assert terminal == {
        S.SUCCESS,
        S.FAILURE,
        S.TERMINATED,
        S.AGENT_UNREACHABLE,
        S.AGENT_REJECTED,
    }
    assert [s.value for s in S] == [
        "PENDING",
        "SENT_TO_AGENT",
        "AGENT_ACCEPTED",
        "EXECUTING",
        "TERMINATING",
        "SUCCESS",
        "FAILURE",
        "TERMINATED",
        "AGENT_UNREACHABLE",
        "AGENT_REJECTED",
    ]
    assert reach(S.SUCCESS).is_terminal
    assert not reach(S.TERMINATING).is_terminal


# --- data carried by particular transitions ----------------------------------------------


def test_rejection_without_a_reason_gets_a_default_message() -> None:
    task = reach(S.SENT_TO_AGENT)
    task.handle(Acked(CID, accepted=False), now=NOW)
    assert task.status is S.AGENT_REJECTED
    assert task.error_message == "the agent rejected the command"
    assert task.completed_at == NOW


def test_rejection_is_illegal_once_executing() -> None:
    task = reach(S.EXECUTING)
    with pytest.raises(InvalidTransition):
        task.handle(Acked(CID, accepted=False, reason="late"), now=NOW)
    assert task.status is S.EXECUTING


def test_started_without_pid_keeps_the_known_pid_and_first_start_time() -> None:
    task = reach(S.EXECUTING)
    assert (task.pid, task.started_at) == (4242, 3)
    assert task.handle(Started(CID), now=NOW) is False  # a repeat: nothing visible changes
    assert (task.pid, task.started_at, task.updated_at) == (4242, 3, 3)


def test_output_first_then_started_keeps_the_output_time_as_start() -> None:
    """A peer without the extensions: the first output moves the child to EXECUTING."""
    task = reach(S.SENT_TO_AGENT)
    assert task.handle(OutputSeen(CID), now=10) is True
    assert (task.status, task.started_at, task.last_output_at) == (S.EXECUTING, 10, 10)
    task.handle(OutputSeen(CID), now=11)
    assert (task.started_at, task.last_output_at, task.updated_at) == (10, 11, 10)
    task.handle(Started(CID, pid=9), now=12)
    assert (task.started_at, task.pid) == (10, 9)


def test_result_without_the_extensions_goes_straight_from_sent() -> None:
    task = reach(S.SENT_TO_AGENT)
    task.handle(Finished(CID, S.SUCCESS, exit_code=0, error_message=""), now=NOW)
    assert (task.status, task.exit_code, task.error_message) == (S.SUCCESS, 0, None)
    assert task.started_at is None
    assert task.completed_at == NOW


def test_a_late_result_after_terminate_does_not_overwrite() -> None:
    task = reach(S.TERMINATING)
    task.handle(Finished(CID, S.TERMINATED, exit_code=-15), now=10)
    before = copy.deepcopy(task)
    with pytest.raises(InvalidTransition):
        task.handle(Finished(CID, S.SUCCESS, exit_code=0), now=11)
    assert task == before


def test_agent_lost_keeps_the_first_loss_time_and_returned_clears_it() -> None:
    task = reach(S.EXECUTING)
    assert task.handle(AgentLost(CID), now=10) is False  # not visible, but recorded
    assert task.lost_since == 10
    task.handle(AgentLost(CID), now=20)
    assert task.lost_since == 10
    task.handle(AgentReturned(CID), now=30)
    assert task.lost_since is None
    assert task.status is S.EXECUTING


@pytest.mark.parametrize("name", [*_FINISHED, "Rejected"])
def test_ending_while_lost_clears_lost_since(name: str) -> None:
    task = reach(S.AGENT_ACCEPTED, lost=True)
    task.handle(EVENTS[name](), now=NOW)
    assert task.is_terminal
    assert task.lost_since is None


def test_terminate_unconfirmed_message_formats_the_wait() -> None:
    task = reach(S.TERMINATING)
    task.handle(TerminateUnconfirmed(CID, waited_s=2.5), now=NOW)
    assert task.status is S.FAILURE
    assert task.error_message is not None
    assert "within 2.5 s" in task.error_message


@pytest.mark.parametrize("status", [S.PENDING, *_LIVE])
def test_expire_ends_a_non_terminal_task(status: ChildStatus) -> None:
    task = reach(status, lost=status in _LIVE)
    task.expire(S.AGENT_UNREACHABLE, "gone", now=NOW)
    assert (task.status, task.error_message) == (S.AGENT_UNREACHABLE, "gone")
    assert (task.completed_at, task.updated_at, task.lost_since) == (NOW, NOW, None)


def test_invalid_transition_message_names_event_and_state() -> None:
    task = reach(S.SUCCESS)
    with pytest.raises(InvalidTransition, match="Dispatched is not allowed in state SUCCESS"):
        task.handle(Dispatched(CID), now=NOW)


# --- events validate themselves ------------------------------------------------------------


@pytest.mark.parametrize("make", [type(m()) for m in EVENTS.values()])
@pytest.mark.parametrize("bad_id", ["", None, 7])
def test_events_need_a_child_id(make: type, bad_id: object) -> None:
    extra: dict[str, Any] = {
        Acked: {"accepted": True},
        Finished: {"status": S.SUCCESS},
        TerminateUnconfirmed: {"waited_s": 1},
    }.get(make, {})
    with pytest.raises(ValueError, match="child_id"):
        make(bad_id, **extra)


def test_started_pid_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="pid"):
        Started(CID, pid=-1)


@pytest.mark.parametrize("status", [S.PENDING, S.EXECUTING, S.AGENT_REJECTED, "NOPE", None])
def test_finished_only_carries_a_result_status(status: Any) -> None:
    with pytest.raises(ValueError, match="an agent result cannot be"):
        Finished(CID, status)


def test_finished_accepts_the_status_as_a_plain_string() -> None:
    event = Finished(CID, "FAILURE", exit_code=3)  # type: ignore[arg-type]
    assert event.status is S.FAILURE
    task = reach(S.EXECUTING)
    task.handle(event, now=NOW)
    assert task.status is S.FAILURE
    assert task.is_terminal


def test_events_are_frozen() -> None:
    event = Dispatched(CID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.child_id = "c2"  # type: ignore[misc]
