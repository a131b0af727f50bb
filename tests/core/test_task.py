"""The child-task state machine, table-driven over every (state, event) pair (h2's
test_state_machines): legal pairs move to the expected status and record the right data;
illegal pairs raise ``InvalidTransition`` and change nothing; terminal statuses never change (a
late result after the server ended a child is kept beside it, once)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from fleet.core import (
    CHILD_TRANSITIONS,
    Acked,
    AgentAway,
    AgentBack,
    AgentLost,
    AgentReport,
    AgentReturned,
    BatchStatus,
    ChildEvent,
    ChildStatus,
    ChildTask,
    Dispatched,
    Finished,
    FleetError,
    InvalidTransition,
    OutputSeen,
    Reconciled,
    Rejected,
    Skipped,
    Started,
    TerminateChild,
    Unreachable,
)

S = ChildStatus
CID = "c1"

#: Every kind of child event, with the data it carries (Finished, TerminateChild and Reconciled
#: in each flavour).
EVENTS: dict[str, Callable[[], ChildEvent]] = {
    "Dispatched": lambda: Dispatched(CID),
    "Unreachable": lambda: Unreachable(CID, reason="agent is offline"),
    "Acked": lambda: Acked(CID),
    "Rejected": lambda: Rejected(CID, reason="disk full"),
    "Started": lambda: Started(CID, pid=4242),
    "OutputSeen": lambda: OutputSeen(CID),
    "FinishedSuccess": lambda: Finished(CID, S.SUCCESS, exit_code=0),
    "FinishedFailure": lambda: Finished(CID, S.FAILURE, exit_code=-2, error_message="boom"),
    "FinishedTerminated": lambda: Finished(CID, S.TERMINATED, exit_code=-15),
    "TerminateChild": lambda: TerminateChild(CID),
    "TerminateChildByBatch": lambda: TerminateChild(CID, by_batch=True),
    "AgentLost": lambda: AgentLost(CID),
    "AgentReturned": lambda: AgentReturned(CID),
    "ReconciledListed": lambda: Reconciled(CID, listed=True),
    "ReconciledUnlisted": lambda: Reconciled(CID, listed=False),
    "AgentAway": lambda: AgentAway(CID),
    "AgentBack": lambda: AgentBack(CID),
    "Skipped": lambda: Skipped(CID, "not run: error threshold reached"),
}

_FINISHED = {
    "FinishedSuccess": S.SUCCESS,
    "FinishedFailure": S.FAILURE,
    "FinishedTerminated": S.TERMINATED,
}
_TERMINATE = ("TerminateChild", "TerminateChildByBatch")
_RECONCILED = ("ReconciledListed", "ReconciledUnlisted")
_SENT = (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING)
_LIVE = (*_SENT, S.TERMINATING)

#: The expected machine, written out from the contract (independently of CHILD_TRANSITIONS).
#: ``None``: the next status depends on the task (``decided``, below).
EXPECTED: dict[tuple[ChildStatus, str], ChildStatus | None] = {
    (S.PENDING, "Dispatched"): S.SENT_TO_AGENT,
    (S.PENDING, "Unreachable"): S.AGENT_UNREACHABLE,
    (S.PENDING, "TerminateChild"): None,
    (S.PENDING, "TerminateChildByBatch"): None,
    (S.PENDING, "AgentLost"): S.PENDING,
    (S.PENDING, "ReconciledListed"): S.SENT_TO_AGENT,
    (S.PENDING, "ReconciledUnlisted"): S.PENDING,
    # Rollout: waiting for an agent that is away; never dispatched.
    (S.PENDING, "AgentAway"): S.PENDING,
    (S.PENDING, "AgentBack"): S.PENDING,
    (S.PENDING, "Skipped"): S.SKIPPED,
    (S.SENT_TO_AGENT, "Dispatched"): S.SENT_TO_AGENT,
    (S.SENT_TO_AGENT, "Acked"): S.AGENT_ACCEPTED,
    (S.SENT_TO_AGENT, "Rejected"): S.AGENT_REJECTED,
    (S.SENT_TO_AGENT, "Started"): S.EXECUTING,
    (S.SENT_TO_AGENT, "OutputSeen"): S.EXECUTING,
    (S.AGENT_ACCEPTED, "Acked"): S.AGENT_ACCEPTED,
    (S.AGENT_ACCEPTED, "Rejected"): S.AGENT_REJECTED,
    (S.AGENT_ACCEPTED, "Started"): S.EXECUTING,
    (S.AGENT_ACCEPTED, "OutputSeen"): S.EXECUTING,
    (S.EXECUTING, "Acked"): S.EXECUTING,
    (S.EXECUTING, "Started"): S.EXECUTING,
    (S.EXECUTING, "OutputSeen"): S.EXECUTING,
    (S.TERMINATING, "Acked"): S.TERMINATING,
    (S.TERMINATING, "Rejected"): S.AGENT_REJECTED,
    (S.TERMINATING, "Started"): S.TERMINATING,
    (S.TERMINATING, "OutputSeen"): S.TERMINATING,
    **{(s, name): result for s in _LIVE for name, result in _FINISHED.items()},
    **{(s, name): S.TERMINATING for s in _LIVE for name in _TERMINATE},
    **{(s, "AgentLost"): s for s in _LIVE},
    **{(s, "AgentReturned"): s for s in _LIVE},
    **{(s, name): s for s in _LIVE for name in _RECONCILED},
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
    S.TERMINATED: [("Dispatched", 1), ("TerminateChild", 4), ("FinishedTerminated", 5)],
    S.AGENT_UNREACHABLE: [("Unreachable", 1)],
    S.AGENT_REJECTED: [("Dispatched", 1), ("Rejected", 2)],
    S.SKIPPED: [("TerminateChild", 1)],
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


def maybe_sent(*, terminating: bool = False) -> ChildTask:
    """A ``PENDING`` child as ``Batch.resume`` leaves it (maybe on its agent, agent lost);
    ``terminating``: then a user terminated it."""
    task = ChildTask.restore(CID, 7, "web-7", S.PENDING)
    task.maybe_sent = True
    task.handle(AgentLost(CID), now=40)
    if terminating:
        task.handle(TerminateChild(CID), now=45)
        assert task.status is S.TERMINATING
    return task


def server_ended(status: ChildStatus, *, reported: bool = False) -> ChildTask:
    """A child a deadline ended (``expire``); ``reported``: a late result already arrived."""
    task = reach(S.EXECUTING, lost=True)
    task.expire(status, "a deadline passed", now=60)
    if reported:
        task.handle(Finished(CID, S.SUCCESS, exit_code=0), now=70)
    return task


#: Every starting state the machine can be in: (label, builder).
STATES: dict[str, Callable[[], ChildTask]] = {
    **{str(s): functools.partial(reach, s) for s in S},
    **{f"{s}(lost)": functools.partial(reach, s, lost=True) for s in (S.PENDING, *_LIVE)},
    "PENDING(maybe_sent)": maybe_sent,
    "TERMINATING(maybe_sent)": lambda: maybe_sent(terminating=True),
    "FAILURE(by server)": lambda: server_ended(S.FAILURE),
    "SKIPPED(by server)": lambda: server_ended(S.SKIPPED),
    "AGENT_UNREACHABLE(reported)": lambda: server_ended(S.AGENT_UNREACHABLE, reported=True),
}


def decided(before: ChildTask, name: str) -> ChildStatus | None:
    """The next status the spec gives ``name`` in ``before``'s state (``None``: illegal)."""
    if before.status.is_terminal:
        return None
    if (before.status, name) not in EXPECTED:
        return None
    if before.status is S.PENDING and name in _TERMINATE:
        return S.TERMINATING if before.maybe_sent else S.SKIPPED
    target = EXPECTED[(before.status, name)]
    assert target is not None
    return target


def expected_after(before: ChildTask, name: str, status: ChildStatus) -> dict[str, Any]:
    """The task's fields after ``name`` at ``NOW`` took it to ``status`` (the test's oracle)."""
    event = EVENTS[name]()
    after = dataclasses.asdict(before) | {"status": status}
    if name == "Dispatched":
        after |= {"sent_at": NOW, "maybe_sent": False, "waiting_since": None}
    elif name == "AgentAway":
        after["waiting_since"] = NOW
    elif name == "AgentBack":
        after["waiting_since"] = None
    elif name == "Skipped":
        after |= {"error_message": "not run: error threshold reached", "completed_at": NOW}
    elif name == "Unreachable":
        after |= {"error_message": "agent is offline", "completed_at": NOW}
        after["ended_by_server"] = True
    elif name == "Rejected":
        after |= {"error_message": "disk full", "completed_at": NOW}
    elif name == "Started":
        after |= {"pid": 4242, "started_at": before.started_at or NOW}
    elif name == "OutputSeen":
        after |= {"last_output_at": NOW, "started_at": before.started_at or NOW}
    elif isinstance(event, Finished):
        after |= {
            "exit_code": event.exit_code,
            "error_message": event.error_message,
            "completed_at": NOW,
        }
    elif name in _TERMINATE and status is S.SKIPPED:
        after |= {
            "error_message": "not run: batch terminated"
            if name == "TerminateChildByBatch"
            else "not run: terminated before it was sent to the agent",
            "completed_at": NOW,
        }
    elif name in _TERMINATE and before.status is not S.TERMINATING:
        after["terminate_requested_at"] = NOW
    elif name == "AgentLost":
        after["lost_since"] = before.lost_since if before.lost_since is not None else NOW
    elif name == "AgentReturned" or name in _RECONCILED:
        after["lost_since"] = None
        if status is S.TERMINATING:
            after["terminate_requested_at"] = NOW  # told again: the confirmation clock restarts
    if name in _RECONCILED:
        after["maybe_sent"] = False
        if name == "ReconciledListed" and before.sent_at is None:
            after["sent_at"] = NOW
    if status.is_terminal:
        after |= {"lost_since": None, "terminate_requested_at": None, "waiting_since": None}
    visible = (
        "status",
        "exit_code",
        "error_message",
        "started_at",
        "completed_at",
        "waiting_since",
    )
    if any(after[f] != getattr(before, f) for f in visible):
        after["updated_at"] = NOW
    return after


ALL_PAIRS = [(state, name) for state in STATES for name in EVENTS]


@pytest.mark.parametrize(("state", "name"), ALL_PAIRS, ids=[f"{s}-{n}" for s, n in ALL_PAIRS])
def test_every_state_event_pair(state: str, name: str) -> None:
    task = STATES[state]()
    before = copy.deepcopy(task)
    event = EVENTS[name]()
    late = (
        before.is_terminal
        and isinstance(event, Finished)
        and before.ended_by_server
        and before.agent_reported is None
    )
    target = before.status if late else decided(before, name)

    if target is None:
        assert not task.accepts(event)
        with pytest.raises(InvalidTransition) as info:
            task.handle(event, now=NOW)
        assert isinstance(info.value, FleetError)
        assert info.value.state is before.status
        assert info.value.event is event
        assert info.value.http_status == 409
        assert task == before  # exactly unchanged
        return

    assert task.accepts(event)
    changed = task.handle(event, now=NOW)
    assert task.status is target
    if late:  # kept beside the status, which stays
        assert isinstance(event, Finished)
        report = AgentReport(event.status, event.exit_code, NOW)
        assert task == dataclasses.replace(before, agent_reported=report, updated_at=NOW)
        assert changed is True
        return
    expected = expected_after(before, name, target)
    assert dataclasses.asdict(task) == expected
    assert changed == (expected["updated_at"] == NOW)


def test_the_table_matches_the_spec() -> None:
    """CHILD_TRANSITIONS has exactly the pairs the spec allows (event flavours merged)."""
    by_type = {name: type(make()) for name, make in EVENTS.items()}
    allowed = {(status, by_type[name]) for status, name in EXPECTED}
    assert set(CHILD_TRANSITIONS) == allowed
    decided_by_task = {(S.PENDING, TerminateChild), (S.PENDING, Reconciled)}
    for (status, kind), target in CHILD_TRANSITIONS.items():
        assert not status.is_terminal, "a terminal status must never be a key"
        if kind is Finished or (status, kind) in decided_by_task:
            assert target is None  # the result, or a fact of the task, decides
            continue
        for name, t in by_type.items():
            if t is kind:
                assert EXPECTED[(status, name)] is target


@pytest.mark.parametrize("status", [s for s in S if s.is_terminal])
def test_terminal_statuses_never_change(status: ChildStatus) -> None:
    task = reach(status)
    before = copy.deepcopy(task)
    for make in EVENTS.values():
        event = make()
        if task.accepts(event):  # only a late result after the server ended the child
            assert status is S.AGENT_UNREACHABLE
            assert isinstance(event, Finished)
            continue
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
        S.SKIPPED,
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
        "SKIPPED",
    ]
    assert reach(S.SUCCESS).is_terminal
    assert reach(S.SKIPPED).is_terminal
    assert not reach(S.TERMINATING).is_terminal


@pytest.mark.parametrize("status", [*S, *BatchStatus])
def test_a_status_is_its_value_as_text(status: ChildStatus | BatchStatus) -> None:
    assert status == status.value
    assert str(status) == status.value
    assert f"{status}|{status:>20}" == f"{status.value}|{status.value:>20}"
    assert json.dumps({"s": status}) == json.dumps({"s": status.value})
    assert type(status)(status.value) is status


# --- data carried by particular transitions ----------------------------------------------


def test_rejection_without_a_reason_gets_a_default_message() -> None:
    task = reach(S.SENT_TO_AGENT)
    task.handle(Rejected(CID), now=NOW)
    assert task.status is S.AGENT_REJECTED
    assert task.error_message == "the agent rejected the command"
    assert task.completed_at == NOW
    assert not task.ended_by_server  # the agent decided


def test_rejection_is_illegal_once_executing() -> None:
    task = reach(S.EXECUTING)
    with pytest.raises(InvalidTransition):
        task.handle(Rejected(CID, reason="late"), now=NOW)
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
    assert not task.ended_by_server


def test_a_late_result_after_terminate_does_not_overwrite() -> None:
    task = reach(S.TERMINATING)
    task.handle(Finished(CID, S.TERMINATED, exit_code=-15), now=10)
    before = copy.deepcopy(task)
    assert not task.accepts(Finished(CID, S.SUCCESS, exit_code=0))
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


# --- terminate: TERMINATING, or SKIPPED when it never left ---------------------------------


def test_terminating_a_pending_child_alone_skips_it() -> None:
    task = reach(S.PENDING)
    assert task.handle(TerminateChild(CID), now=NOW) is True
    assert task.status is S.SKIPPED
    assert task.error_message == "not run: terminated before it was sent to the agent"
    assert (task.completed_at, task.terminate_requested_at) == (NOW, None)
    assert not task.ended_by_server


def test_terminating_a_pending_child_with_its_batch_skips_it() -> None:
    task = reach(S.PENDING)
    task.handle(TerminateChild(CID, by_batch=True), now=NOW)
    assert task.status is S.SKIPPED
    assert task.error_message == "not run: batch terminated"


@pytest.mark.parametrize("by_batch", [False, True])
def test_terminating_a_child_that_may_be_on_its_agent_waits_for_it(by_batch: bool) -> None:
    task = maybe_sent()
    task.handle(TerminateChild(CID, by_batch=by_batch), now=NOW)
    assert task.status is S.TERMINATING
    assert task.error_message is None
    assert task.terminate_requested_at == NOW
    assert task.lost_since == 40  # still waiting for its agent to say


def test_the_confirmation_clock_starts_once_and_restarts_when_the_agent_is_told_again() -> None:
    task = reach(S.EXECUTING)
    task.handle(TerminateChild(CID), now=10)
    task.handle(TerminateChild(CID, by_batch=True), now=11)
    assert task.terminate_requested_at == 10  # asked twice: still counted from the first
    task.handle(AgentLost(CID), now=12)
    assert task.terminate_requested_at == 10
    task.handle(AgentReturned(CID), now=20)
    assert task.terminate_requested_at == 20
    task.handle(Reconciled(CID, listed=True), now=30)
    assert task.terminate_requested_at == 30
    task.handle(Finished(CID, S.TERMINATED, exit_code=-15), now=31)
    assert task.terminate_requested_at is None


# --- reconciliation ------------------------------------------------------------------------


def test_a_listed_maybe_sent_child_was_sent() -> None:
    task = maybe_sent()
    assert task.handle(Reconciled(CID, listed=True), now=NOW) is True
    assert task.status is S.SENT_TO_AGENT
    assert (task.sent_at, task.maybe_sent, task.lost_since) == (NOW, False, None)


def test_an_unlisted_maybe_sent_child_is_pending_and_known_unsent() -> None:
    task = maybe_sent()
    assert task.handle(Reconciled(CID, listed=False), now=NOW) is False  # nothing shown
    assert task.status is S.PENDING
    assert (task.sent_at, task.maybe_sent, task.lost_since) == (None, False, None)


def test_a_listed_child_keeps_its_first_send_time() -> None:
    task = reach(S.EXECUTING, lost=True)
    task.handle(Reconciled(CID, listed=True), now=NOW)
    assert (task.sent_at, task.lost_since, task.status) == (1, None, S.EXECUTING)


def test_a_child_sent_again_counts_from_the_new_send() -> None:
    task = reach(S.SENT_TO_AGENT)
    task.handle(Reconciled(CID, listed=False), now=10)
    task.handle(Dispatched(CID), now=11)
    assert (task.status, task.sent_at) == (S.SENT_TO_AGENT, 11)


# --- late results: kept beside a status the server decided ---------------------------------


def test_a_late_result_after_unreachable_is_kept_once() -> None:
    task = reach(S.AGENT_UNREACHABLE)
    assert task.ended_by_server
    assert task.handle(Finished(CID, S.FAILURE, exit_code=3, error_message="x"), now=NOW)
    assert task.agent_reported == AgentReport(S.FAILURE, 3, NOW)
    assert (task.status, task.exit_code, task.error_message) == (
        S.AGENT_UNREACHABLE,
        None,
        "agent is offline",
    )
    assert (task.completed_at, task.updated_at) == (1, NOW)
    second = Finished(CID, S.SUCCESS, exit_code=0)
    assert not task.accepts(second)
    before = copy.deepcopy(task)
    with pytest.raises(InvalidTransition):
        task.handle(second, now=NOW + 1)
    assert task == before


@pytest.mark.parametrize("status", [S.FAILURE, S.AGENT_UNREACHABLE, S.SKIPPED])
def test_a_late_result_after_a_deadline_is_kept(status: ChildStatus) -> None:
    task = server_ended(status)
    task.handle(Finished(CID, S.SUCCESS, exit_code=0), now=NOW)
    assert task.status is status
    assert task.agent_reported == AgentReport(S.SUCCESS, 0, NOW)
    assert task.error_message == "a deadline passed"


@pytest.mark.parametrize("status", [S.SUCCESS, S.AGENT_REJECTED, S.SKIPPED, S.TERMINATED])
def test_no_late_result_after_a_status_the_agent_or_user_decided(status: ChildStatus) -> None:
    task = reach(status)
    assert not task.ended_by_server
    assert not task.accepts(Finished(CID, S.SUCCESS, exit_code=0))


# --- expire (the batch's deadline rules) --------------------------------------------------


@pytest.mark.parametrize("status", [S.PENDING, *_LIVE])
def test_expire_ends_a_non_terminal_task(status: ChildStatus) -> None:
    task = reach(status, lost=status in _LIVE)
    task.expire(S.AGENT_UNREACHABLE, "gone", now=NOW)
    assert (task.status, task.error_message) == (S.AGENT_UNREACHABLE, "gone")
    assert (task.completed_at, task.updated_at, task.lost_since) == (NOW, NOW, None)
    assert (task.terminate_requested_at, task.ended_by_server) == (None, True)


def test_invalid_transition_message_names_event_and_state() -> None:
    task = reach(S.SUCCESS)
    with pytest.raises(InvalidTransition, match="Dispatched is not allowed in state SUCCESS"):
        task.handle(Dispatched(CID), now=NOW)


# --- restore ------------------------------------------------------------------------------


def test_restore_keeps_what_the_store_holds() -> None:
    report = AgentReport(S.SUCCESS, 0, 12.0)
    task = ChildTask.restore(
        "c9", 3, "db-3", S.FAILURE, exit_code=2, error_message="bad", agent_reported=report
    )
    assert (task.child_id, task.vps_id, task.vps_name, task.status) == ("c9", 3, "db-3", S.FAILURE)
    assert (task.exit_code, task.error_message, task.agent_reported) == (2, "bad", report)
    assert task.is_terminal
    assert not task.accepts(Finished("c9", S.SUCCESS))  # the late result already came


@pytest.mark.parametrize("status", list(S))
def test_restore_starts_every_clock_afresh(status: ChildStatus) -> None:
    task = ChildTask.restore("c9", 3, "db-3", status)
    assert task.status is status
    blank = ChildTask("c9", 3, "db-3", status)
    # (ended_by_server may follow from the status: AGENT_UNREACHABLE is always the server's)
    assert dataclasses.replace(task, ended_by_server=False) == blank
    assert (task.sent_at, task.lost_since, task.terminate_requested_at) == (None, None, None)
    assert (task.maybe_sent, task.agent_reported) == (False, None)


def test_a_restored_unreachable_child_still_takes_a_late_result() -> None:
    """The contract: a result that arrives after a child ended AGENT_UNREACHABLE is kept as
    ``agent_reported``. AGENT_UNREACHABLE is always the server's decision, so this holds after
    the server restarted too (an agent re-sends finished results when it reconnects)."""
    task = ChildTask.restore("c9", 3, "db-3", S.AGENT_UNREACHABLE, error_message="gone")
    late = Finished("c9", S.SUCCESS, exit_code=0)
    assert task.accepts(late)
    task.handle(late, now=NOW)
    assert task.agent_reported == AgentReport(S.SUCCESS, 0, NOW)
    assert task.status is S.AGENT_UNREACHABLE


# --- events validate themselves ------------------------------------------------------------


@pytest.mark.parametrize("make", sorted({type(m()) for m in EVENTS.values()}, key=str))
@pytest.mark.parametrize("bad_id", ["", None, 7])
def test_events_need_a_child_id(make: type, bad_id: object) -> None:
    extras: dict[type, dict[str, Any]] = {
        Finished: {"status": S.SUCCESS},
        Reconciled: {"listed": True},
        Skipped: {"reason": "not run"},
    }
    extra = extras.get(make, {})
    with pytest.raises(ValueError, match="child_id"):
        make(bad_id, **extra)


def test_event_defaults() -> None:
    assert TerminateChild(CID).by_batch is False
    assert Rejected(CID).reason == ""
    assert Unreachable(CID).reason == "agent is not connected"
    assert Started(CID).pid == 0


def test_started_pid_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="pid"):
        Started(CID, pid=-1)


@pytest.mark.parametrize(
    "status", [S.PENDING, S.EXECUTING, S.AGENT_REJECTED, S.SKIPPED, "NOPE", None]
)
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
