"""The batch: routing child events, terminate rules, final status, the three deadlines and
effects (agents coming and going, and resume, are in test_batch_agents.py)."""

from __future__ import annotations

import pytest

from fleet.core import (
    BATCH_TRANSITIONS,
    Acked,
    AgentLost,
    AgentReport,
    AgentReturned,
    Batch,
    BatchChanged,
    BatchStatus,
    BatchTimers,
    ChildChanged,
    ChildStatus,
    ChildTask,
    Dispatched,
    Finished,
    InvalidTransition,
    OutputSeen,
    Rejected,
    SendCommand,
    SendTerminate,
    Started,
    TerminateBatch,
    TerminateChild,
    Tick,
    Unreachable,
    final_status,
)

from .harness import BatchHarness, snapshot, tasks

B = BatchStatus
S = ChildStatus


# --- construction ------------------------------------------------------------------------


def test_a_new_batch_is_pending() -> None:
    batch = Batch("b1", tasks(3), timeout_s=5)
    assert batch.batch_id == "b1"
    assert batch.status is B.PENDING
    assert not batch.is_final
    assert list(batch.children) == ["c1", "c2", "c3"]
    assert batch.timers == BatchTimers(
        reconnect_grace_s=30.0, result_slack_s=60.0, terminate_confirm_s=15.0
    )
    assert (batch.user_terminated, batch.completed_at, batch.updated_at) == (False, None, None)
    assert batch.next_deadline() is None


def test_a_batch_needs_children() -> None:
    with pytest.raises(ValueError, match="at least one child"):
        Batch("b1", [])


def test_child_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Batch("b1", [ChildTask("c1", 1), ChildTask("c1", 2)])


def test_timeout_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Batch("b1", tasks(1), timeout_s=-1)


@pytest.mark.parametrize(("grace", "slack", "confirm"), [(-1, 0, 0), (0, -0.5, 0), (0, 0, -1)])
def test_timers_must_not_be_negative(grace: float, slack: float, confirm: float) -> None:
    with pytest.raises(ValueError, match="negative"):
        BatchTimers(reconnect_grace_s=grace, result_slack_s=slack, terminate_confirm_s=confirm)


def test_zero_timers_are_allowed() -> None:
    assert BatchTimers(0, 0, 0) == BatchTimers(
        reconnect_grace_s=0, result_slack_s=0, terminate_confirm_s=0
    )


def test_children_may_come_from_a_generator() -> None:
    batch = Batch("b1", (ChildTask(f"c{i}", i) for i in range(1, 4)))
    assert len(batch.children) == 3


# --- start and progress ------------------------------------------------------------------


def test_start_asks_to_send_every_command_once() -> None:
    h = BatchHarness(3)
    assert h.start(at=1) == [SendCommand("c1", 1), SendCommand("c2", 2), SendCommand("c3", 3)]
    assert h.batch.updated_at == 1
    before = snapshot(h.batch)
    with pytest.raises(InvalidTransition) as info:
        h.batch.start(now=2)
    assert info.value.state is B.PENDING
    assert vars(h.batch) == before


def test_start_after_terminate_sends_nothing() -> None:
    h = BatchHarness(2)
    h.send(TerminateBatch(), at=1)
    assert h.batch.status is B.TERMINATED
    assert h.start(at=2) == []


def test_first_dispatch_puts_the_batch_in_progress() -> None:
    h = BatchHarness(2)
    h.start()
    h.send(Dispatched("c1"), at=1, expect=[ChildChanged("c1"), BatchChanged()])
    assert h.batch.status is B.IN_PROGRESS
    assert h.child("c1").sent_at == 1
    assert h.batch.updated_at == 1
    h.send(Dispatched("c2"), at=2, expect=[ChildChanged("c2")])


def test_batch_stays_pending_while_children_wait_to_be_sent() -> None:
    h = BatchHarness(2)
    h.start()
    h.send(Unreachable("c1"), at=1, expect=[ChildChanged("c1")])
    assert h.batch.status is B.PENDING
    assert h.child("c1").error_message == "agent is not connected"
    h.send(Dispatched("c2"), at=2, expect=[ChildChanged("c2"), BatchChanged()])
    assert h.batch.status is B.IN_PROGRESS


def test_all_success_completes_successfully() -> None:
    h = BatchHarness(2)
    h.start()
    h.run("c1", "c2", at=1)
    h.send(Finished("c1", S.SUCCESS, exit_code=0), at=5, expect=[ChildChanged("c1")])
    assert h.batch.status is B.IN_PROGRESS
    h.send(
        Finished("c2", S.SUCCESS, exit_code=0), at=6, expect=[ChildChanged("c2"), BatchChanged()]
    )
    assert h.batch.status is B.COMPLETED_SUCCESSFULLY
    assert h.batch.is_final
    assert (h.batch.completed_at, h.batch.updated_at) == (6, 6)


def test_any_failure_completes_with_errors() -> None:
    h = BatchHarness(3)
    h.start()
    h.run("c1", "c2", at=1)
    h.send(Unreachable("c3"), at=1)
    h.send(Finished("c1", S.SUCCESS, exit_code=0), at=2)
    h.send(Finished("c2", S.FAILURE, exit_code=1), at=3)
    assert h.batch.status is B.COMPLETED_WITH_ERRORS
    assert h.batch.counts() == {"SUCCESS": 1, "FAILURE": 1, "AGENT_UNREACHABLE": 1}


def test_nothing_reachable_fails_to_start() -> None:
    h = BatchHarness(2)
    h.start()
    h.send(Unreachable("c1"), at=1, expect=[ChildChanged("c1")])
    h.send(Unreachable("c2"), at=2, expect=[ChildChanged("c2"), BatchChanged()])
    assert h.batch.status is B.FAILED_TO_START
    assert h.batch.completed_at == 2


def test_a_rejected_command_was_dispatched_so_the_batch_did_start() -> None:
    h = BatchHarness(1)
    h.start()
    h.dispatch("c1", at=1)
    h.send(Rejected("c1", reason="busy"), at=2)
    assert h.status("c1") is S.AGENT_REJECTED
    assert h.batch.status is B.COMPLETED_WITH_ERRORS


def test_unknown_child_is_a_key_error_and_changes_nothing() -> None:
    h = BatchHarness(1)
    before = snapshot(h.batch)
    with pytest.raises(KeyError):
        h.batch.handle(Dispatched("nope"), now=1)
    assert vars(h.batch) == before


def test_illegal_child_event_changes_nothing() -> None:
    h = BatchHarness(2)
    h.start()
    h.dispatch("c1", at=1)
    error = h.illegal(Finished("c2", S.SUCCESS), at=2)
    assert error.state is S.PENDING
    h.send(Finished("c1", S.SUCCESS), at=3)
    h.illegal(OutputSeen("c1"), at=4)


def test_output_moves_a_child_and_repeats_are_quiet() -> None:
    h = BatchHarness(1)
    h.start()
    h.dispatch("c1", at=1)
    h.send(OutputSeen("c1"), at=2, expect=[ChildChanged("c1")])
    h.send(OutputSeen("c1"), at=3, expect=[])
    h.send(Started("c1", pid=5), at=4, expect=[])
    assert h.child("c1").pid == 5


def test_counts_leave_out_empty_statuses() -> None:
    h = BatchHarness(4)
    assert h.batch.counts() == {"PENDING": 4}
    h.start()
    h.run("c1")
    h.dispatch("c2")
    h.send(Unreachable("c3"))
    assert h.batch.counts() == {
        "EXECUTING": 1,
        "SENT_TO_AGENT": 1,
        "AGENT_UNREACHABLE": 1,
        "PENDING": 1,
    }


# --- terminate ------------------------------------------------------------------------------


def test_terminate_batch_treats_each_child_by_its_status() -> None:
    h = BatchHarness(5)
    h.start()
    h.dispatch("c2", at=1)
    h.run("c3", at=1)
    h.run("c4", at=1)
    h.send(Finished("c4", S.SUCCESS, exit_code=0), at=2)
    h.run("c5", at=2)
    h.send(TerminateChild("c5"), at=3, expect=[SendTerminate("c5", 5), ChildChanged("c5")])

    h.send(
        TerminateBatch(),
        at=4,
        expect=[
            BatchChanged(),
            ChildChanged("c1"),  # PENDING: never sent, nothing to tell an agent
            SendTerminate("c2", 2),
            ChildChanged("c2"),
            SendTerminate("c3", 3),
            ChildChanged("c3"),
            # c4 already SUCCESS, c5 already TERMINATING: untouched
        ],
    )
    assert h.batch.status is B.TERMINATING
    assert h.batch.user_terminated
    assert h.statuses() == {
        "c1": S.SKIPPED,
        "c2": S.TERMINATING,
        "c3": S.TERMINATING,
        "c4": S.SUCCESS,
        "c5": S.TERMINATING,
    }
    assert h.child("c1").error_message == "not run: batch terminated"
    assert h.child("c1").completed_at == 4
    assert h.child("c4").updated_at == 2
    assert h.child("c5").terminate_requested_at == 3  # not restarted by the batch's terminate

    # A second terminate sends nothing again.
    h.send(TerminateBatch(), at=5, expect=[])

    h.send(Finished("c2", S.TERMINATED, exit_code=-15), at=6, expect=[ChildChanged("c2")])
    h.send(Finished("c3", S.SUCCESS, exit_code=0), at=6, expect=[ChildChanged("c3")])
    # c5's agent never confirms: 15 s after its terminate it is a FAILURE.
    assert h.batch.next_deadline() == 18
    h.tick(at=17.9, expect=[])
    h.tick(at=18, expect=[ChildChanged("c5"), BatchChanged()])
    assert h.status("c5") is S.FAILURE
    assert h.child("c5").error_message == (
        "termination was not confirmed by the agent within 15 s; the command may still be running"
    )
    assert h.batch.status is B.TERMINATED
    assert h.batch.completed_at == 18


def test_terminating_a_pending_batch_ends_it_at_once() -> None:
    h = BatchHarness(2)
    h.send(
        TerminateBatch(),
        at=1,
        expect=[BatchChanged(), ChildChanged("c1"), ChildChanged("c2")],
    )
    assert h.statuses() == {"c1": S.SKIPPED, "c2": S.SKIPPED}
    assert h.batch.status is B.TERMINATED
    assert h.batch.completed_at == 1
    assert h.batch.next_deadline() is None


@pytest.mark.parametrize(
    "final", [B.COMPLETED_SUCCESSFULLY, B.COMPLETED_WITH_ERRORS, B.FAILED_TO_START, B.TERMINATED]
)
def test_terminating_a_final_batch_is_a_no_op(final: BatchStatus) -> None:
    h = BatchHarness(1)
    h.start()
    if final is B.FAILED_TO_START:
        h.send(Unreachable("c1"), at=1)
    elif final is B.TERMINATED:
        h.send(TerminateBatch(), at=1)
    else:
        h.run("c1", at=1)
        result = S.SUCCESS if final is B.COMPLETED_SUCCESSFULLY else S.FAILURE
        h.send(Finished("c1", result), at=2)
    assert h.batch.status is final
    before = snapshot(h.batch)
    h.send(TerminateBatch(), at=10, expect=[])
    h.tick(at=10**6, expect=[])
    h.connect(1, None, expect=[])
    h.connect(1, [], expect=[])
    h.lose(1, expect=[])
    assert vars(h.batch) == before


def test_terminate_one_child() -> None:
    h = BatchHarness(3)
    h.start()
    h.run("c1", "c2", at=1)
    h.send(TerminateChild("c1"), at=2, expect=[SendTerminate("c1", 1), ChildChanged("c1")])
    h.send(TerminateChild("c1"), at=3, expect=[])  # already terminating: nothing sent twice
    h.send(TerminateChild("c3"), at=3, expect=[ChildChanged("c3")])  # pending: no agent to tell
    assert h.status("c3") is S.SKIPPED
    assert h.child("c3").error_message == "not run: terminated before it was sent to the agent"
    h.illegal(Dispatched("c3"), at=3)  # a skipped child is never sent
    assert h.batch.status is B.IN_PROGRESS
    assert not h.batch.user_terminated
    h.send(Finished("c1", S.TERMINATED, exit_code=-15), at=4)
    h.illegal(TerminateChild("c1"), at=5)  # a finished child cannot be terminated
    h.send(Finished("c2", S.SUCCESS, exit_code=0), at=6)
    # Only children were terminated, not the batch: its outcome is "with errors".
    assert h.batch.status is B.COMPLETED_WITH_ERRORS


def test_user_terminated_wins_even_if_every_child_then_succeeds() -> None:
    h = BatchHarness(1)
    h.start()
    h.run("c1", at=1)
    h.send(TerminateBatch(), at=2)
    h.send(Finished("c1", S.SUCCESS, exit_code=0), at=3)
    assert h.batch.status is B.TERMINATED


def test_an_agent_refusal_while_terminating_ends_the_child() -> None:
    h = BatchHarness(1)
    h.start()
    h.dispatch("c1", at=1)
    h.send(TerminateChild("c1"), at=2)
    h.send(Rejected("c1"), at=3, expect=[ChildChanged("c1"), BatchChanged()])
    assert h.status("c1") is S.AGENT_REJECTED
    assert h.batch.next_deadline() is None


def test_batch_transitions_table() -> None:
    assert set(BATCH_TRANSITIONS) == {(s, TerminateBatch) for s in B}
    for (status, _), target in BATCH_TRANSITIONS.items():
        assert target is (status if status.is_terminal else B.TERMINATING)


# --- final status rules -----------------------------------------------------------------------


def _done(status: ChildStatus, *, sent: bool) -> ChildTask:
    task = ChildTask(f"c-{status}-{sent}", 1, status=status)
    task.sent_at = 1.0 if sent else None
    return task


@pytest.mark.parametrize(
    ("children", "user_terminated", "expected"),
    [
        ([_done(S.SUCCESS, sent=True)] * 3, False, B.COMPLETED_SUCCESSFULLY),
        ([_done(S.SUCCESS, sent=True)] * 3, True, B.TERMINATED),
        ([_done(S.SKIPPED, sent=False)], True, B.TERMINATED),
        ([_done(S.AGENT_UNREACHABLE, sent=False)] * 2, False, B.FAILED_TO_START),
        ([_done(S.SKIPPED, sent=False)], False, B.FAILED_TO_START),
        ([_done(S.SKIPPED, sent=False), _done(S.AGENT_UNREACHABLE, sent=False)], False,
         B.FAILED_TO_START),
        ([_done(S.SKIPPED, sent=False), _done(S.SUCCESS, sent=True)], False,
         B.COMPLETED_WITH_ERRORS),
        ([_done(S.SKIPPED, sent=True)], False, B.COMPLETED_WITH_ERRORS),
        ([_done(S.AGENT_UNREACHABLE, sent=False), _done(S.SUCCESS, sent=True)], False,
         B.COMPLETED_WITH_ERRORS),
        ([_done(S.AGENT_REJECTED, sent=True)], False, B.COMPLETED_WITH_ERRORS),
        ([_done(S.FAILURE, sent=True), _done(S.SUCCESS, sent=True)], False,
         B.COMPLETED_WITH_ERRORS),
        ([_done(S.TERMINATED, sent=True)], False, B.COMPLETED_WITH_ERRORS),
        # Restored after a restart, without sent_at: the status tells it was dispatched.
        ([_done(S.SUCCESS, sent=False)], False, B.COMPLETED_SUCCESSFULLY),
        ([_done(S.AGENT_REJECTED, sent=False)], False, B.COMPLETED_WITH_ERRORS),
        ([_done(S.FAILURE, sent=False), _done(S.AGENT_UNREACHABLE, sent=False)], False,
         B.COMPLETED_WITH_ERRORS),
    ],
)  # fmt: skip
def test_final_status_rules(
    children: list[ChildTask], user_terminated: bool, expected: BatchStatus
) -> None:
    assert final_status(iter(children), user_terminated=user_terminated) is expected


def test_a_restored_terminated_child_did_reach_its_agent() -> None:
    """TERMINATED now only ever comes from an agent's result (a child terminated before it was
    sent is SKIPPED), so a restored TERMINATED child ran: the batch did start."""
    children = [_done(S.TERMINATED, sent=False), _done(S.AGENT_UNREACHABLE, sent=False)]
    assert final_status(children, user_terminated=False) is B.COMPLETED_WITH_ERRORS


# --- deadlines ---------------------------------------------------------------------------------


def test_reconnect_grace() -> None:
    h = BatchHarness(2, timers=BatchTimers(reconnect_grace_s=30))
    h.start()
    h.run("c1", "c2", at=10)
    assert h.batch.next_deadline() is None
    h.send(AgentLost("c1"), at=20, expect=[ChildChanged("c1")])
    assert h.batch.next_deadline() == 50
    h.send(AgentLost("c1"), at=25, expect=[])  # still lost since 20
    assert h.batch.next_deadline() == 50
    h.send(Tick(), at=49.9, expect=[])
    h.send(AgentReturned("c1"), at=49.9, expect=[ChildChanged("c1")])
    assert h.batch.next_deadline() is None
    h.send(AgentReturned("c1"), at=50, expect=[])

    h.send(AgentLost("c1"), at=60)
    h.send(AgentLost("c2"), at=70)
    assert h.batch.next_deadline() == 90
    h.send(Tick(), at=95, expect=[ChildChanged("c1")])
    assert h.status("c1") is S.AGENT_UNREACHABLE
    assert h.child("c1").error_message == (
        "the agent disconnected and did not come back within 30 s"
    )
    assert h.child("c1").lost_since is None
    assert h.child("c1").completed_at == 95
    assert h.batch.next_deadline() == 100
    h.send(Tick(), at=100, expect=[ChildChanged("c2"), BatchChanged()])
    assert h.batch.status is B.COMPLETED_WITH_ERRORS
    assert h.batch.next_deadline() is None


def test_a_lost_agent_that_reports_in_time_is_not_unreachable() -> None:
    h = BatchHarness(1, timers=BatchTimers(reconnect_grace_s=5))
    h.start()
    h.run("c1", at=0)
    h.send(AgentLost("c1"), at=1)
    h.send(Finished("c1", S.SUCCESS, exit_code=0), at=3)
    assert h.child("c1").lost_since is None
    assert h.batch.status is B.COMPLETED_SUCCESSFULLY
    h.send(Tick(), at=100, expect=[])


def test_a_lost_terminating_child_becomes_unreachable() -> None:
    h = BatchHarness(1, timers=BatchTimers(reconnect_grace_s=0))
    h.start()
    h.run("c1", at=0)
    h.send(TerminateBatch(), at=1)
    h.send(AgentLost("c1"), at=2)
    assert h.batch.next_deadline() == 2
    h.send(Tick(), at=2, expect=[ChildChanged("c1"), BatchChanged()])
    assert h.status("c1") is S.AGENT_UNREACHABLE
    assert h.batch.status is B.TERMINATED


def test_result_deadline_with_timeout() -> None:
    h = BatchHarness(2, timeout_s=10, timers=BatchTimers(result_slack_s=5))
    h.start()
    assert h.batch.next_deadline() is None  # nothing sent yet
    h.dispatch("c1", at=100)
    assert h.batch.next_deadline() == 115
    h.dispatch("c2", at=103)
    h.send(Tick(), at=114.5, expect=[])
    h.send(Tick(), at=115, expect=[SendTerminate("c1", 1), ChildChanged("c1")])
    assert h.status("c1") is S.FAILURE
    assert h.child("c1").error_message == "no result from the agent within 10 s timeout (+5 s)"
    assert h.batch.next_deadline() == 118
    h.send(Finished("c2", S.SUCCESS, exit_code=0), at=117, expect=[ChildChanged("c2"),
                                                                  BatchChanged()])  # fmt: skip
    assert h.batch.status is B.COMPLETED_WITH_ERRORS
    assert h.batch.next_deadline() is None


def test_a_lost_agent_deadline_replaces_the_result_deadline() -> None:
    h = BatchHarness(1, timeout_s=100, timers=BatchTimers(reconnect_grace_s=30, result_slack_s=0))
    h.start()
    h.run("c1", at=0)
    assert h.batch.next_deadline() == 100
    h.send(AgentLost("c1"), at=90)
    assert h.batch.next_deadline() == 120
    h.send(Tick(), at=110, expect=[])
    h.send(AgentReturned("c1"), at=111)
    assert h.batch.next_deadline() == 100
    h.send(Tick(), at=111, expect=[SendTerminate("c1", 1), ChildChanged("c1"), BatchChanged()])


def test_next_deadline_is_the_earliest_child() -> None:
    h = BatchHarness(3, timeout_s=50, timers=BatchTimers(reconnect_grace_s=10, result_slack_s=0))
    h.start()
    h.dispatch("c1", at=0)
    h.dispatch("c2", at=5)
    h.send(Unreachable("c3"), at=5)
    assert h.batch.next_deadline() == 50
    h.send(AgentLost("c2"), at=20)
    assert h.batch.next_deadline() == 30


def test_tick_without_deadlines_does_nothing() -> None:
    h = BatchHarness(2)
    h.start()
    h.run("c1", at=1)
    before = snapshot(h.batch)
    h.send(Tick(), at=10**9, expect=[])
    assert vars(h.batch) == before


def test_stale_deadlines_are_skipped_by_tick() -> None:
    h = BatchHarness(2, timeout_s=10, timers=BatchTimers(result_slack_s=0, reconnect_grace_s=5))
    h.start()
    h.run("c1", "c2", at=0)
    h.send(AgentLost("c1"), at=1)  # c1: 10 -> 6
    h.send(AgentReturned("c1"), at=2)  # c1: 6 -> 10 (an entry for 6 stays in the heap)
    h.send(Finished("c2", S.SUCCESS), at=3)  # c2's entry for 10 is stale now
    h.tick(at=9, expect=[])
    assert h.status("c1") is S.EXECUTING
    h.tick(at=10, expect=[SendTerminate("c1", 1), ChildChanged("c1"), BatchChanged()])


# --- terminate confirmation -----------------------------------------------------------------

CONFIRM = BatchTimers(reconnect_grace_s=30, result_slack_s=0, terminate_confirm_s=15)
_NOT_CONFIRMED = (
    "termination was not confirmed by the agent within 15 s; the command may still be running"
)


def test_terminate_confirmation_deadline() -> None:
    h = BatchHarness(1, timers=CONFIRM)
    h.start()
    h.run("c1", at=0)
    h.send(TerminateChild("c1"), at=10, expect=[SendTerminate("c1", 1), ChildChanged("c1")])
    assert h.child("c1").terminate_requested_at == 10
    assert h.batch.next_deadline() == 25
    h.send(OutputSeen("c1"), at=20, expect=[])  # output does not confirm
    h.send(Started("c1"), at=20, expect=[])
    h.send(Acked("c1"), at=20, expect=[])
    h.send(TerminateChild("c1"), at=21, expect=[])  # asking again does not restart the clock
    assert h.batch.next_deadline() == 25
    h.tick(at=24.99, expect=[])
    h.tick(at=25, expect=[ChildChanged("c1"), BatchChanged()])  # no SendTerminate: it was told
    c1 = h.child("c1")
    assert (c1.status, c1.error_message) == (S.FAILURE, _NOT_CONFIRMED)
    assert (c1.completed_at, c1.ended_by_server, c1.terminate_requested_at) == (25, True, None)
    assert h.batch.status is B.COMPLETED_WITH_ERRORS
    assert h.batch.next_deadline() is None


def test_a_zero_confirmation_fires_at_the_terminate() -> None:
    h = BatchHarness(1, timers=BatchTimers(terminate_confirm_s=0))
    h.start()
    h.run("c1", at=0)
    h.send(TerminateBatch(), at=3)
    assert h.batch.next_deadline() == 3
    h.tick(at=3, expect=[ChildChanged("c1"), BatchChanged()])
    assert (h.status("c1"), h.batch.status) == (S.FAILURE, B.TERMINATED)
    assert h.child("c1").error_message == (
        "termination was not confirmed by the agent within 0 s; the command may still be running"
    )


@pytest.mark.parametrize("open_ids", [None, ["c1"]], ids=["legacy", "listed"])
def test_the_confirmation_clock_stops_while_lost_and_restarts_on_return(
    open_ids: list[str] | None,
) -> None:
    h = BatchHarness(1, timers=CONFIRM)
    h.start()
    h.run("c1", at=0)
    h.send(TerminateChild("c1"), at=10)
    h.lose(1, at=20, expect=[ChildChanged("c1")])
    assert h.batch.next_deadline() == 50  # only the grace counts while lost
    h.tick(at=30, expect=[])  # 25 passed: the confirmation clock was not running
    assert h.status("c1") is S.TERMINATING
    h.connect(1, open_ids, at=40, expect=[ChildChanged("c1"), SendTerminate("c1", 1)])
    assert h.child("c1").terminate_requested_at == 40  # told again: counted from now
    assert h.batch.next_deadline() == 55
    h.tick(at=54, expect=[])
    h.tick(at=55, expect=[ChildChanged("c1"), BatchChanged()])
    assert (h.status("c1"), h.child("c1").error_message) == (S.FAILURE, _NOT_CONFIRMED)


def test_a_terminating_child_lost_past_the_grace_is_unreachable() -> None:
    h = BatchHarness(1, timers=CONFIRM)
    h.start()
    h.run("c1", at=0)
    h.send(TerminateChild("c1"), at=10)
    h.lose(1, at=12)
    h.tick(at=42, expect=[ChildChanged("c1"), BatchChanged()])
    assert h.status("c1") is S.AGENT_UNREACHABLE
    assert h.child("c1").error_message == (
        "the agent disconnected and did not come back within 30 s"
    )


@pytest.mark.parametrize(
    ("timeout", "terminate_at", "expected_at", "by_result"),
    [
        (10, 1, 10, True),  # result deadline 10 before confirmation 16
        (100, 0, 15, False),  # confirmation 15 before result deadline 100
        (15, 0, 15, False),  # both at 15: the confirmation rule decides (nothing to send)
    ],
)
def test_confirmation_and_result_deadlines_the_earlier_fires(
    timeout: float, terminate_at: float, expected_at: float, by_result: bool
) -> None:
    h = BatchHarness(1, timeout_s=timeout, timers=CONFIRM)
    h.start()
    h.run("c1", at=0)
    h.send(TerminateChild("c1"), at=terminate_at)
    assert h.batch.next_deadline() == expected_at
    h.tick(at=expected_at - 0.5, expect=[])
    effects = h.tick(at=expected_at)
    message = h.child("c1").error_message or ""
    assert h.status("c1") is S.FAILURE
    if by_result:
        assert effects == [SendTerminate("c1", 1), ChildChanged("c1"), BatchChanged()]
        assert message.startswith("no result from the agent within")
    else:
        assert effects == [ChildChanged("c1"), BatchChanged()]
        assert message == _NOT_CONFIRMED


# --- a result at a deadline -------------------------------------------------------------------


def _at_deadline(kind: str) -> tuple[BatchHarness, float, ChildStatus, ChildStatus]:
    """A running child about to meet ``kind``'s deadline: (harness, deadline, the status the
    deadline gives, the result the agent sends)."""
    h = BatchHarness(1, timeout_s=20 if kind == "result" else 0, timers=CONFIRM)
    h.start()
    h.run("c1", at=0)
    if kind == "grace":
        h.lose(1, at=10)
        return h, 40, S.AGENT_UNREACHABLE, S.SUCCESS
    if kind == "confirm":
        h.send(TerminateChild("c1"), at=10)
        return h, 25, S.FAILURE, S.TERMINATED
    return h, 20, S.FAILURE, S.SUCCESS


@pytest.mark.parametrize("kind", ["grace", "confirm", "result"])
def test_a_result_at_the_deadline_before_the_tick_wins(kind: str) -> None:
    h, deadline, _, result = _at_deadline(kind)
    assert h.batch.next_deadline() == deadline
    h.send(Finished("c1", result), at=deadline, expect=[ChildChanged("c1"), BatchChanged()])
    assert h.status("c1") is result
    assert (h.child("c1").agent_reported, h.child("c1").ended_by_server) == (None, False)
    h.tick(at=deadline, expect=[])
    assert h.batch.next_deadline() is None


@pytest.mark.parametrize("kind", ["grace", "confirm", "result"])
def test_a_result_after_the_deadline_is_kept_as_agent_reported(kind: str) -> None:
    h, deadline, ended, result = _at_deadline(kind)
    h.tick(at=deadline)
    assert h.status("c1") is ended
    assert h.batch.is_final
    final = h.batch.status
    h.send(Finished("c1", result, exit_code=0), at=deadline, expect=[ChildChanged("c1")])
    c1 = h.child("c1")
    assert c1.status is ended  # the status stays
    assert c1.agent_reported == AgentReport(result, 0, deadline)
    assert c1.exit_code is None
    assert h.batch.status is final
    h.illegal(Finished("c1", S.FAILURE, exit_code=1), at=deadline + 1)  # only once
