"""Agents coming and going (``Batch.agent_lost``, ``Batch.agent_connected``
reconciliation, and the reconnect-grace rules for a peer that does not list its commands), and
``Batch.resume`` after a server restart."""

from __future__ import annotations

from collections.abc import Callable, Collection

import pytest

from fleet.core import (
    Acked,
    Batch,
    BatchChanged,
    BatchStatus,
    BatchTimers,
    ChildChanged,
    ChildStatus,
    ChildTask,
    Dispatched,
    Effect,
    Finished,
    InvalidTransition,
    SendCommand,
    SendTerminate,
    Started,
    TerminateBatch,
    TerminateChild,
    Tick,
)

from .harness import BatchHarness, snapshot, tasks

B = BatchStatus
S = ChildStatus
TIMERS = BatchTimers(reconnect_grace_s=30, result_slack_s=0, terminate_confirm_s=15)
_FORGOTTEN = (
    "the agent came back without this command (its state was lost); "
    "whether the command ran to the end is unknown"
)
_NEVER_REACHED = "not run: terminated before it reached the agent"
_UNKNOWN = (
    "unknown whether the command reached the agent: the server restarted as it was being sent, "
    "and the agent did not come back within 30 s"
)


def distinct(effects: list[Effect]) -> list[Effect]:
    """The effects without repeats (the owner persists a child once however often it is named)."""
    return list(dict.fromkeys(effects))


# --- a child brought to each live state, on VPS 1 ----------------------------------------------


def _sent(h: BatchHarness) -> None:
    h.dispatch("c1", at=1)


def _accepted(h: BatchHarness) -> None:
    h.send_all([Dispatched("c1"), Acked("c1")], at=1)


def _executing(h: BatchHarness) -> None:
    h.run("c1", at=1)


def _terminating_unstarted(h: BatchHarness) -> None:
    h.send_all([Dispatched("c1"), Acked("c1"), TerminateChild("c1")], at=1)


def _terminating_started(h: BatchHarness) -> None:
    h.run("c1", at=1)
    h.send(TerminateChild("c1"), at=1)


LIVE: dict[str, Callable[[BatchHarness], None]] = {
    "SENT_TO_AGENT": _sent,
    "AGENT_ACCEPTED": _accepted,
    "EXECUTING": _executing,
    "TERMINATING(unstarted)": _terminating_unstarted,
    "TERMINATING(started)": _terminating_started,
}


def live(state: str, *, lost: bool) -> BatchHarness:
    """One child (c1, VPS 1) in ``state``, plus c2 (VPS 2) executing; VPS 1 lost at 10."""
    h = BatchHarness(2, timers=TIMERS)
    h.start()
    h.run("c2", at=0)
    LIVE[state](h)
    if lost:
        h.lose(1, at=10, expect=[ChildChanged("c1")])
    return h


# --- agent_lost ----------------------------------------------------------------------------


def test_agent_lost_waits_only_for_the_children_that_were_sent() -> None:
    batch = Batch(
        "b1",
        [ChildTask("c1", 1), ChildTask("c2", 1), ChildTask("c3", 1), ChildTask("c4", 2)],
        timers=TIMERS,
    )
    assert [t.child_id for t in batch.children_of(1)] == ["c1", "c2", "c3"]
    assert batch.children_of(2) == [batch.children["c4"]]
    assert batch.children_of(99) == []
    batch.start(now=0)
    for cid in ("c1", "c3", "c4"):
        batch.handle(Dispatched(cid), now=1)
    batch.handle(Finished("c3", S.SUCCESS), now=2)
    assert batch.agent_lost(1, now=10) == [ChildChanged("c1")]
    c = batch.children
    assert (c["c1"].lost_since, c["c2"].lost_since, c["c3"].lost_since) == (10, None, None)
    assert c["c4"].lost_since is None
    assert batch.next_deadline() == 40
    assert batch.agent_lost(1, now=20) == []  # still lost since 10
    assert batch.agent_lost(99, now=20) == []  # no child there
    assert c["c1"].lost_since == 10


def test_agent_lost_on_a_final_batch_changes_nothing() -> None:
    h = BatchHarness(1)
    h.start()
    h.send(TerminateBatch(), at=1)
    before = snapshot(h.batch)
    h.lose(1, at=2, expect=[])
    assert vars(h.batch) == before


# --- a peer that does not list its commands (reconnect-grace rules) ---------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("SENT_TO_AGENT", [ChildChanged("c1"), SendCommand("c1", 1)]),  # may not have arrived
        ("AGENT_ACCEPTED", [ChildChanged("c1")]),
        ("EXECUTING", [ChildChanged("c1")]),
        ("TERMINATING(unstarted)", [ChildChanged("c1"), SendTerminate("c1", 1)]),
        ("TERMINATING(started)", [ChildChanged("c1"), SendTerminate("c1", 1)]),
    ],
)
def test_a_legacy_agent_back_within_the_grace(state: str, expected: list[Effect]) -> None:
    h = live(state, lost=True)
    status = h.status("c1")
    h.connect(1, None, at=20, expect=expected)
    c1 = h.child("c1")
    assert (c1.status, c1.lost_since) == (status, None)
    if status is S.TERMINATING:
        assert c1.terminate_requested_at == 20
        assert h.batch.next_deadline() == 35
    else:
        assert h.batch.next_deadline() is None
    assert h.child("c2").status is S.EXECUTING  # another VPS's child is untouched


@pytest.mark.parametrize("state", list(LIVE))
def test_a_legacy_agent_that_was_not_lost_changes_nothing(state: str) -> None:
    h = live(state, lost=False)
    before = snapshot(h.batch)
    h.connect(1, None, at=20, expect=[])
    assert vars(h.batch) == before


def test_a_legacy_agent_leaves_unsent_and_finished_children_alone() -> None:
    h = BatchHarness(2, timers=TIMERS)
    h.start()
    h.run("c2", at=0)
    h.send(Finished("c2", S.SUCCESS), at=1)
    before = snapshot(h.batch)
    h.connect(1, None, at=2, expect=[])  # c1 PENDING, never dispatched: start() asked already
    h.connect(2, None, at=2, expect=[])  # c2 is done
    assert vars(h.batch) == before


# --- reconciliation: an agent that lists every command it holds ----------------------


@pytest.mark.parametrize("lost", [True, False], ids=["lost", "connected"])
@pytest.mark.parametrize(
    ("state", "listed", "status", "expected", "message"),
    [
        ("SENT_TO_AGENT", True, S.SENT_TO_AGENT, [], None),
        ("SENT_TO_AGENT", False, S.SENT_TO_AGENT, [SendCommand("c1", 1)], None),
        ("AGENT_ACCEPTED", True, S.AGENT_ACCEPTED, [], None),
        ("AGENT_ACCEPTED", False, S.FAILURE, [ChildChanged("c1")], _FORGOTTEN),
        ("EXECUTING", True, S.EXECUTING, [], None),
        ("EXECUTING", False, S.FAILURE, [ChildChanged("c1")], _FORGOTTEN),
        ("TERMINATING(started)", True, S.TERMINATING, [SendTerminate("c1", 1)], None),
        ("TERMINATING(started)", False, S.FAILURE, [ChildChanged("c1")], _FORGOTTEN),
        ("TERMINATING(unstarted)", True, S.TERMINATING, [SendTerminate("c1", 1)], None),
        ("TERMINATING(unstarted)", False, S.SKIPPED, [ChildChanged("c1")], _NEVER_REACHED),
    ],
)  # fmt: skip
def test_reconciling_a_live_child(
    state: str,
    listed: bool,
    status: ChildStatus,
    expected: list[Effect],
    message: str | None,
    lost: bool,
) -> None:
    h = live(state, lost=lost)
    before = h.child("c1").error_message
    open_ids = ["c1", "c2"] if listed else ["c2", "other"]
    effects = h.connect(1, open_ids, at=20)
    c1 = h.child("c1")
    if lost:  # the agent is back: the child is no longer waiting for it
        expected = [ChildChanged("c1"), *expected]
    assert distinct(effects) == distinct(expected)
    assert (c1.status, c1.lost_since, c1.maybe_sent) == (status, None, False)
    assert c1.error_message == (message or before)
    if status.is_terminal:
        assert (c1.completed_at, c1.ended_by_server) == (20, True)
        assert SendCommand("c1", 1) not in effects
    if status is S.TERMINATING:
        assert c1.terminate_requested_at == 20
        assert h.batch.next_deadline() == 35
    assert h.child("c2").status is S.EXECUTING
    assert h.batch.status is B.IN_PROGRESS  # c2 still runs


@pytest.mark.parametrize("open_ids", [[], ["c1"], ("c1",), {"c1"}, frozenset()])
def test_reconciling_leaves_unsent_and_finished_children_alone(
    open_ids: Collection[str],
) -> None:
    h = BatchHarness(2, timers=TIMERS)
    h.start()
    h.run("c2", at=0)
    h.send(Finished("c2", S.FAILURE, exit_code=1), at=1)
    before = snapshot(h.batch)
    h.connect(1, open_ids, at=2, expect=[])  # c1 not dispatched yet: nothing to reconcile
    h.connect(2, open_ids, at=2, expect=[])  # c2 is done
    assert vars(h.batch) == before


def test_reconciling_every_child_of_a_vps_at_once() -> None:
    batch = Batch(
        "b1",
        [ChildTask("a", 1), ChildTask("b", 1), ChildTask("c", 1), ChildTask("d", 2)],
        timeout_s=50,
        timers=TIMERS,
    )
    batch.start(now=0)
    for cid in "abcd":
        batch.handle(Dispatched(cid), now=1)
    batch.handle(Started("b"), now=2)
    batch.agent_lost(1, now=5)
    effects = batch.agent_connected(1, {"a"}, now=6)
    assert distinct(effects) == [
        ChildChanged("a"),
        ChildChanged("b"),
        ChildChanged("c"),
        SendCommand("c", 1),
    ]
    assert {cid: t.status for cid, t in batch.children.items()} == {
        "a": S.SENT_TO_AGENT,
        "b": S.FAILURE,
        "c": S.SENT_TO_AGENT,
        "d": S.SENT_TO_AGENT,
    }
    assert batch.next_deadline() == 51  # a, c (and d) wait for their result again
    batch.handle(Dispatched("c"), now=7)  # sent again: its result deadline counts from now
    assert batch.children["c"].sent_at == 7


def test_reconciling_the_last_live_child_ends_the_batch() -> None:
    h = live("EXECUTING", lost=True)
    h.send(Finished("c2", S.SUCCESS), at=15)
    effects = h.connect(1, [], at=20)
    assert distinct(effects) == [ChildChanged("c1"), BatchChanged()]
    assert h.batch.status is B.COMPLETED_WITH_ERRORS
    assert h.batch.completed_at == 20


# --- resume after a restart -------------------------------------------------------------------


def restored(*statuses: ChildStatus, timeout_s: float = 0) -> Batch:
    """A batch whose children the store gave back (``ChildTask.restore``): c1..cN on VPS 1..N."""
    children = [
        ChildTask.restore(f"c{i}", i, f"vps-{i}", status) for i, status in enumerate(statuses, 1)
    ]
    return Batch("b1", children, timeout_s=timeout_s, timers=TIMERS)


def test_resume_gives_every_live_child_the_reconnect_grace() -> None:
    batch = restored(S.PENDING, S.SENT_TO_AGENT, S.EXECUTING, S.SUCCESS, S.TERMINATING)
    effects = batch.resume(now=100)
    assert effects == [
        ChildChanged("c1"),
        ChildChanged("c2"),
        ChildChanged("c3"),
        ChildChanged("c5"),
        BatchChanged(),
    ]
    c = batch.children
    assert (c["c1"].status, c["c1"].maybe_sent, c["c1"].sent_at) == (S.PENDING, True, None)
    assert c["c1"].error_message is None  # never "not sent": nobody knows yet
    for cid in ("c1", "c2", "c3", "c5"):
        assert c[cid].lost_since == 100
    for cid in ("c2", "c3", "c5"):
        assert (c[cid].sent_at, c[cid].maybe_sent) == (100, False)
    assert c["c4"].lost_since is None
    assert c["c5"].terminate_requested_at is None  # counted once its agent is back
    assert batch.status is B.IN_PROGRESS
    assert batch.next_deadline() == 130

    assert batch.agent_connected(3, ["c3"], now=110) == [ChildChanged("c3")]
    batch.handle(Finished("c3", S.SUCCESS, exit_code=0), now=111)
    assert batch.agent_connected(5, ["c5"], now=112) == [ChildChanged("c5"), SendTerminate("c5", 5)]
    assert batch.agent_connected(4, [], now=112) == []  # a finished child is not reconciled
    assert batch.next_deadline() == 127
    assert batch.handle(TerminateChild("c5"), now=113) == []  # already terminating
    assert batch.handle(Finished("c5", S.TERMINATED), now=114) == [ChildChanged("c5")]
    assert batch.next_deadline() == 130
    assert batch.handle(Finished("c2", S.SUCCESS), now=120) == [ChildChanged("c2")]
    assert distinct(batch.handle(Tick(), now=130)) == [ChildChanged("c1"), BatchChanged()]
    assert (c["c1"].status, c["c1"].error_message) == (S.AGENT_UNREACHABLE, _UNKNOWN)
    assert batch.status is B.COMPLETED_WITH_ERRORS


def test_resumed_pending_children_that_never_come_back_are_unknown_not_unsent() -> None:
    batch = restored(S.PENDING, S.PENDING)
    assert batch.resume(now=100) == [ChildChanged("c1"), ChildChanged("c2")]
    assert batch.status is B.PENDING  # nothing is known to have been sent
    assert batch.agent_lost(1, now=105) == []  # already waiting since 100
    assert batch.next_deadline() == 130
    assert batch.handle(Tick(), now=129.5) == []
    assert batch.handle(Tick(), now=130) == [ChildChanged("c1"), ChildChanged("c2"), BatchChanged()]
    for task in batch.children.values():
        assert (task.status, task.error_message) == (S.AGENT_UNREACHABLE, _UNKNOWN)
        assert (task.completed_at, task.ended_by_server) == (130, True)
    assert batch.status is B.FAILED_TO_START  # none is known to have reached its agent


@pytest.mark.parametrize(
    ("open_ids", "expected", "status"),
    [
        (None, [ChildChanged("c1"), SendCommand("c1", 1)], S.PENDING),  # sent again, to be sure
        ([], [ChildChanged("c1"), SendCommand("c1", 1)], S.PENDING),  # known unsent: send now
        (["c1"], [ChildChanged("c1"), BatchChanged()], S.SENT_TO_AGENT),  # it did arrive
    ],
    ids=["legacy", "unlisted", "listed"],
)
def test_a_resumed_pending_child_when_its_agent_comes_back(
    open_ids: list[str] | None, expected: list[Effect], status: ChildStatus
) -> None:
    batch = restored(S.PENDING, timeout_s=10)
    batch.resume(now=100)
    assert batch.agent_connected(1, open_ids, now=110) == expected
    c1 = batch.children["c1"]
    assert (c1.status, c1.maybe_sent, c1.lost_since) == (status, False, None)
    if status is S.SENT_TO_AGENT:
        assert (c1.sent_at, batch.status) == (110, B.IN_PROGRESS)
        assert batch.next_deadline() == 120  # its result deadline, from when it is known sent
    else:
        assert (c1.sent_at, batch.status) == (None, B.PENDING)
        assert batch.next_deadline() is None  # the owner sends it (or finds it unreachable)
        assert batch.handle(Dispatched("c1"), now=111) == [ChildChanged("c1"), BatchChanged()]
        assert batch.next_deadline() == 121
    # The agent connecting again changes nothing more.
    assert batch.agent_connected(1, None, now=112) == []


@pytest.mark.parametrize(
    ("open_ids", "expected", "status", "message"),
    [
        (None, [ChildChanged("c1"), SendTerminate("c1", 1)], S.TERMINATING, None),
        (["c1"], [ChildChanged("c1"), SendTerminate("c1", 1)], S.TERMINATING, None),
        ([], [ChildChanged("c1"), BatchChanged()], S.SKIPPED, _NEVER_REACHED),
    ],
    ids=["legacy", "listed", "unlisted"],
)
def test_terminating_a_resumed_pending_child_waits_for_its_agent(
    open_ids: list[str] | None,
    expected: list[Effect],
    status: ChildStatus,
    message: str | None,
) -> None:
    batch = restored(S.PENDING)
    batch.resume(now=100)
    # It may be running on its agent: terminate it there, do not just skip it.
    assert batch.handle(TerminateBatch(), now=101) == [
        BatchChanged(),
        SendTerminate("c1", 1),
        ChildChanged("c1"),
    ]
    c1 = batch.children["c1"]
    assert (c1.status, c1.terminate_requested_at, c1.lost_since) == (S.TERMINATING, 101, 100)
    assert batch.next_deadline() == 130  # the confirmation waits for the agent to be back
    assert distinct(batch.agent_connected(1, open_ids, now=110)) == expected
    assert (c1.status, c1.error_message) == (status, message)
    if status is S.TERMINATING:
        assert batch.next_deadline() == 125
        batch.handle(Finished("c1", S.TERMINATED), now=111)
    assert batch.status is B.TERMINATED


def test_a_resumed_pending_child_terminated_alone_and_never_back_is_unknown() -> None:
    batch = restored(S.PENDING)
    batch.resume(now=100)
    batch.handle(TerminateChild("c1"), now=101)
    batch.handle(Tick(), now=130)
    c1 = batch.children["c1"]
    assert (c1.status, c1.error_message) == (S.AGENT_UNREACHABLE, _UNKNOWN)
    assert batch.status is B.FAILED_TO_START


def test_a_resumed_terminating_child_is_told_again_when_its_agent_is_back() -> None:
    batch = restored(S.TERMINATING, S.TERMINATED)
    batch.resume(now=10, user_terminated=True)
    assert batch.status is B.TERMINATING
    assert batch.user_terminated
    assert batch.next_deadline() == 40
    assert batch.agent_connected(1, None, now=20) == [ChildChanged("c1"), SendTerminate("c1", 1)]
    assert batch.next_deadline() == 35
    batch.handle(Finished("c1", S.TERMINATED), now=21)
    assert batch.status is B.TERMINATED


@pytest.mark.parametrize("stored", [S.PENDING, S.SENT_TO_AGENT])
@pytest.mark.parametrize("open_ids", [None, []], ids=["legacy", "unlisted"])
def test_a_resumed_terminating_batch_never_sends_a_command(
    open_ids: list[str] | None, stored: ChildStatus
) -> None:
    """The contract: a child not in the agent's list "is dispatched now (or, if its batch is
    terminating, ends SKIPPED)". A store can hold a terminating batch with a child not yet
    terminating (the server stopped between writing the batch's TERMINATING and its
    children's new states)."""
    batch = restored(stored, S.EXECUTING)
    batch.resume(now=100, user_terminated=True)
    effects = batch.agent_connected(1, open_ids, now=110)
    assert SendCommand("c1", 1) not in effects
    if open_ids == []:
        assert batch.children["c1"].status is S.SKIPPED
    else:
        assert batch.children["c1"].status is S.TERMINATING


def test_a_resumed_terminating_batch_stops_a_running_child() -> None:
    """The same half-written store: a child still EXECUTING in a batch the user terminated is
    told to terminate once its agent is back."""
    batch = restored(S.EXECUTING, S.SKIPPED)
    batch.resume(now=100, user_terminated=True)
    effects = batch.agent_connected(1, ["c1"], now=110)
    assert SendTerminate("c1", 1) in effects
    assert batch.children["c1"].status is S.TERMINATING


def test_resume_of_a_batch_whose_children_all_finished() -> None:
    batch = restored(S.SUCCESS, S.SUCCESS)
    assert batch.resume(now=1) == [BatchChanged()]
    assert batch.status is B.COMPLETED_SUCCESSFULLY
    assert batch.completed_at == 1
    assert batch.next_deadline() is None


@pytest.mark.parametrize("statuses", [(S.SKIPPED, S.AGENT_UNREACHABLE), (S.SKIPPED,)])
def test_resume_of_a_batch_that_never_reached_an_agent(statuses: tuple[ChildStatus, ...]) -> None:
    batch = restored(*statuses)
    batch.resume(now=1)
    assert batch.status is B.FAILED_TO_START


def test_resume_of_a_terminated_batch_whose_children_all_finished() -> None:
    batch = restored(S.SKIPPED, S.TERMINATED)
    assert batch.resume(now=1, user_terminated=True) == [BatchChanged()]
    assert batch.status is B.TERMINATED


def test_a_resumed_child_counts_its_result_deadline_from_the_resume() -> None:
    batch = restored(S.EXECUTING, timeout_s=10)
    batch.resume(now=100)
    assert batch.next_deadline() == 130  # the grace first
    batch.agent_connected(1, ["c1"], now=105)
    assert batch.next_deadline() == 110
    assert batch.handle(Tick(), now=110) == [
        SendTerminate("c1", 1),
        ChildChanged("c1"),
        BatchChanged(),
    ]


def test_resume_and_start_are_called_once_between_them() -> None:
    batch = restored(S.EXECUTING)
    batch.resume(now=2)
    for call in (batch.resume, batch.start):
        before = snapshot(batch)
        with pytest.raises(InvalidTransition):
            call(now=3)
        assert vars(batch) == before
    fresh = Batch("b2", tasks(1))
    fresh.start(now=0)
    with pytest.raises(InvalidTransition):
        fresh.resume(now=1)


def test_resume_keeps_a_send_time_the_child_already_has() -> None:
    task = ChildTask("c1", 1, status=S.EXECUTING, sent_at=5.0)
    batch = Batch("b1", [task], timeout_s=10, timers=TIMERS)
    batch.resume(now=100)
    assert (task.sent_at, task.lost_since) == (5.0, 100)
    batch.agent_connected(1, ["c1"], now=101)
    assert batch.next_deadline() == 15  # long past: the result deadline fires at once
    assert batch.handle(Tick(), now=101) == [
        SendTerminate("c1", 1),
        ChildChanged("c1"),
        BatchChanged(),
    ]
