"""Rollout: concurrency slots, the error threshold, waiting for agents; unit tests and
Hypothesis properties over random batches, options and event sequences."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.core import (
    Acked,
    AgentAway,
    AgentBack,
    Batch,
    BatchChanged,
    BatchStatus,
    ChildChanged,
    ChildStatus,
    ChildTask,
    Dispatched,
    Effect,
    Event,
    Finished,
    InvalidTransition,
    Rollout,
    SendCommand,
    SendTerminate,
    Skipped,
    Started,
    TerminateBatch,
    TerminateChild,
    Tick,
    Unreachable,
    parse_limit,
    resolve_limit,
)
from fleet.core._rollout import ERROR_STATUSES

B = BatchStatus
S = ChildStatus
PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def tasks(n: int) -> list[ChildTask]:
    return [ChildTask(f"c{i}", i, vps_name=f"vps-{i}") for i in range(1, n + 1)]


def sent(effects: list[Effect]) -> list[str]:
    return [e.child_id for e in effects if isinstance(e, SendCommand)]


@dataclass
class Owner:
    """Carries out a batch's effects like ``BatchRun``: a command to an online agent is
    ``Dispatched``, to an offline one ``Unreachable``; effects are applied in order, never
    recursively (nested effects join the queue)."""

    batch: Batch
    online: set[int] = field(default_factory=set)
    now: float = 0.0
    dispatched: list[str] = field(default_factory=list)
    dispatched_after_stop: list[str] = field(default_factory=list)
    peak: int = 0
    _effects: deque[Effect] = field(default_factory=deque)

    def apply(self, effects: list[Effect]) -> None:
        self._effects.extend(effects)
        while self._effects:
            effect = self._effects.popleft()
            if isinstance(effect, SendCommand):
                task = self.batch.children[effect.child_id]
                if task.is_terminal:
                    continue
                if effect.vps_id in self.online:
                    if task.status is S.PENDING:
                        assert self.batch.stop_reason is None or self.batch.user_terminated
                        if self.batch.stop_reason is not None:
                            self.dispatched_after_stop.append(effect.child_id)
                        self.dispatched.append(effect.child_id)
                    self.handle(Dispatched(effect.child_id))
                elif task.status is S.PENDING:
                    self.handle(Unreachable(effect.child_id))
            self.peak = max(self.peak, running(self.batch))

    def handle(self, event: Event) -> None:
        self._effects.extend(self.batch.handle(event, now=self.now))

    def start(self) -> None:
        self.apply(self.batch.start(now=self.now))

    def send(self, event: Event) -> None:
        try:
            effects = self.batch.handle(event, now=self.now)
        except InvalidTransition:
            return
        self.apply(effects)

    def connect(self, vps_id: int) -> None:
        self.online.add(vps_id)
        self.apply(self.batch.agent_connected(vps_id, None, now=self.now))

    def lose(self, vps_id: int) -> None:
        self.online.discard(vps_id)
        self.apply(self.batch.agent_lost(vps_id, now=self.now))


def running(batch: Batch) -> int:
    """Children between dispatch and a terminal status."""
    return sum(1 for t in batch.children.values() if t.sent_at is not None and not t.is_terminal)


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [(1, 1, 1), (0, 0, 0), ("10%", 1, "10%"), ("100%", 1, "100%"), ("0%", 0, "0%")],
)
def test_limits_parse(value: object, minimum: int, expected: object) -> None:
    assert parse_limit(value, minimum=minimum) == expected


@pytest.mark.parametrize(
    ("value", "minimum", "message"),
    [
        (0, 1, "at least 1"),
        (-1, 0, "at least 0"),
        (10**10, 0, "at least 0"),
        (True, 0, "integer"),
        ("0%", 1, "between 1% and 100%"),
        ("101%", 0, "between 0% and 100%"),
        ("1000%", 0, "between"),
        ("ten%", 0, "percentage"),
        (" 10%", 0, "percentage"),
        ("010%", 0, 'without leading zeros, like "10%"'),
        ("5", 0, "percentage"),
        ("-5%", 0, "percentage"),
        (1.5, 0, "integer"),
        (None, 0, "integer"),
    ],
)
def test_bad_limits_are_refused(value: object, minimum: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limit(value, minimum=minimum)


def test_percentages_round_down_with_a_floor() -> None:
    assert resolve_limit("10%", 1000, minimum=1) == 100
    assert resolve_limit("10%", 5, minimum=1) == 1  # 0.5 → at least one at a time
    assert resolve_limit("10%", 5, minimum=0) == 0
    assert resolve_limit("100%", 7, minimum=1) == 7
    assert resolve_limit(3, 7, minimum=1) == 3


def test_rollout_validates() -> None:
    assert Rollout(max_concurrency="5%").max_concurrency == "5%"
    with pytest.raises(ValueError, match="at least 1"):
        Rollout(max_concurrency=0)
    with pytest.raises(ValueError, match="wait_for_agent_s"):
        Rollout(wait_for_agent_s=-1)
    with pytest.raises(ValueError, match="wait_for_agent_s"):
        Rollout(wait_for_agent_s=7 * 24 * 3600 + 1)


def test_events_validate() -> None:
    with pytest.raises(ValueError, match="reason"):
        Skipped("c1", "")
    with pytest.raises(ValueError):
        AgentAway("")
    with pytest.raises(ValueError):
        AgentBack("")


# --- concurrency -------------------------------------------------------------------------


def test_start_sends_only_what_the_slots_allow() -> None:
    batch = Batch("b", tasks(5), rollout=Rollout(max_concurrency=2))
    assert sent(batch.start(now=0)) == ["c1", "c2"]
    assert batch.rollout_counts() == {"queued": 3, "waiting_for_agent": 0}
    # Dispatching holds the slot; only a terminal child frees it.
    assert sent(batch.handle(Dispatched("c1"), now=1)) == []
    assert sent(batch.handle(Dispatched("c2"), now=1)) == []
    assert sent(batch.handle(Acked("c1"), now=2)) == []
    assert sent(batch.handle(Finished("c1", S.SUCCESS, 0), now=3)) == ["c3"]
    assert batch.rollout_counts() == {"queued": 2, "waiting_for_agent": 0}


def test_a_percentage_of_the_targets() -> None:
    batch = Batch("b", tasks(10), rollout=Rollout(max_concurrency="30%"))
    assert sent(batch.start(now=0)) == ["c1", "c2", "c3"]


def test_without_options_everything_is_sent_at_once() -> None:
    batch = Batch("b", tasks(4))
    assert sent(batch.start(now=0)) == ["c1", "c2", "c3", "c4"]
    assert batch.stop_reason is None


def test_an_unreachable_child_frees_its_slot_at_once() -> None:
    owner = Owner(Batch("b", tasks(3), rollout=Rollout(max_concurrency=1)), online={2, 3})
    owner.start()
    statuses = {cid: t.status for cid, t in owner.batch.children.items()}
    assert statuses == {"c1": S.AGENT_UNREACHABLE, "c2": S.SENT_TO_AGENT, "c3": S.PENDING}


def test_a_long_chain_of_unreachable_children_needs_no_recursion() -> None:
    owner = Owner(Batch("b", tasks(3000), rollout=Rollout(max_concurrency=1)))
    owner.start()
    assert owner.batch.counts() == {"AGENT_UNREACHABLE": 3000}
    assert owner.batch.status is B.FAILED_TO_START


def test_terminating_a_queued_child_skips_it_and_it_is_never_sent() -> None:
    batch = Batch("b", tasks(3), rollout=Rollout(max_concurrency=1))
    assert sent(batch.start(now=0)) == ["c1"]
    batch.handle(TerminateChild("c2"), now=1)
    assert batch.children["c2"].status is S.SKIPPED
    batch.handle(Dispatched("c1"), now=1)
    assert sent(batch.handle(Finished("c1", S.SUCCESS, 0), now=2)) == ["c3"]


def test_terminating_the_batch_skips_the_queue_and_says_why() -> None:
    batch = Batch("b", tasks(3), rollout=Rollout(max_concurrency=1))
    batch.start(now=0)
    batch.handle(Dispatched("c1"), now=0)
    effects = batch.handle(TerminateBatch(), now=1)
    assert SendTerminate("c1", 1) in effects
    assert batch.stop_reason == "batch terminated"
    for cid in ("c2", "c3"):
        assert batch.children[cid].status is S.SKIPPED
        assert batch.children[cid].error_message == "not run: batch terminated"
    assert sent(batch.handle(Finished("c1", S.TERMINATED, -15), now=2)) == []
    assert batch.status is B.TERMINATED


def test_terminating_a_batch_with_nothing_queued_sets_no_stop_reason() -> None:
    batch = Batch("b", tasks(2), rollout=Rollout(max_concurrency=2))
    batch.start(now=0)
    batch.handle(Dispatched("c1"), now=0)
    batch.handle(Dispatched("c2"), now=0)
    batch.handle(TerminateBatch(), now=1)
    assert batch.stop_reason is None


# --- error threshold ---------------------------------------------------------------------


def test_max_errors_zero_stops_after_the_first_error() -> None:
    batch = Batch("b", tasks(5), rollout=Rollout(max_concurrency=2, max_errors=0))
    batch.start(now=0)
    batch.handle(Dispatched("c1"), now=0)
    batch.handle(Dispatched("c2"), now=0)
    effects = batch.handle(Finished("c1", S.FAILURE, 1), now=1)
    assert sent(effects) == []
    assert BatchChanged() in effects
    assert ChildChanged("c3") in effects
    assert batch.stop_reason == "error threshold reached: 1 children ended in error (max_errors 0)"
    for cid in ("c3", "c4", "c5"):
        assert batch.children[cid].status is S.SKIPPED
        assert batch.children[cid].error_message == "not run: error threshold reached"
    # Running children finish.
    assert batch.children["c2"].status is S.SENT_TO_AGENT
    batch.handle(Finished("c2", S.SUCCESS, 0), now=2)
    assert batch.status is B.COMPLETED_WITH_ERRORS
    assert batch.counts() == {"FAILURE": 1, "SUCCESS": 1, "SKIPPED": 3}


def test_errors_up_to_the_threshold_are_tolerated() -> None:
    batch = Batch("b", tasks(10), rollout=Rollout(max_concurrency=1, max_errors="20%"))
    assert sent(batch.start(now=0)) == ["c1"]
    for i in (1, 2):
        batch.handle(Dispatched(f"c{i}"), now=i)
        effects = batch.handle(Finished(f"c{i}", S.FAILURE, 1), now=i)
        assert sent(effects) == [f"c{i + 1}"]
    batch.handle(Dispatched("c3"), now=3)
    assert sent(batch.handle(Finished("c3", S.FAILURE, 1), now=3)) == []
    assert batch.stop_reason == (
        "error threshold reached: 3 children ended in error (max_errors 20% = 2)"
    )


def test_skipped_and_success_are_not_errors() -> None:
    assert S.SKIPPED not in ERROR_STATUSES
    assert S.SUCCESS not in ERROR_STATUSES
    assert S.AGENT_UNREACHABLE in ERROR_STATUSES
    assert S.TERMINATED in ERROR_STATUSES


# --- waiting for an agent ----------------------------------------------------------------


def test_a_child_waits_for_its_agent_holding_no_slot() -> None:
    owner = Owner(
        Batch("b", tasks(3), rollout=Rollout(max_concurrency=1, wait_for_agent_s=60)),
        online={2, 3},
    )
    owner.start()
    batch = owner.batch
    c1 = batch.children["c1"]
    assert (c1.status, c1.waiting_since) == (S.PENDING, 0)
    assert batch.wait_deadline(c1) == 60
    assert batch.wait_deadline(batch.children["c2"]) is None
    assert batch.children["c2"].status is S.SENT_TO_AGENT
    assert batch.rollout_counts() == {"queued": 1, "waiting_for_agent": 1}
    assert batch.next_deadline() == 60
    # Its agent connects while c2 holds the only slot: c1 goes first when the slot frees.
    owner.now = 10
    owner.connect(1)
    assert c1.waiting_since is None
    assert c1.status is S.PENDING
    owner.send(Finished("c2", S.SUCCESS, 0))
    assert c1.status is S.SENT_TO_AGENT
    assert batch.children["c3"].status is S.PENDING


def test_a_waiting_child_is_sent_the_moment_its_agent_connects() -> None:
    owner = Owner(Batch("b", tasks(2), rollout=Rollout(wait_for_agent_s=60)), online={2})
    owner.start()
    owner.now = 5
    owner.connect(1)
    assert owner.batch.children["c1"].status is S.SENT_TO_AGENT
    assert owner.dispatched == ["c2", "c1"]
    # Connecting again never sends it twice.
    owner.connect(1)
    assert owner.dispatched == ["c2", "c1"]


def test_a_waiting_child_gives_up_after_the_wait() -> None:
    owner = Owner(Batch("b", tasks(1), rollout=Rollout(wait_for_agent_s=90)))
    owner.start()
    owner.now = 89
    owner.send(Tick())
    assert owner.batch.children["c1"].status is S.PENDING
    owner.now = 90
    owner.send(Tick())
    c1 = owner.batch.children["c1"]
    assert c1.status is S.AGENT_UNREACHABLE
    assert c1.error_message == "agent did not connect within 90 s"
    assert owner.batch.status is B.FAILED_TO_START


def test_the_threshold_skips_waiting_children() -> None:
    owner = Owner(
        Batch("b", tasks(3), rollout=Rollout(max_errors=0, wait_for_agent_s=60)), online={2}
    )
    owner.start()
    assert owner.batch.rollout_counts()["waiting_for_agent"] == 2
    owner.send(Finished("c2", S.FAILURE, 3))
    assert owner.batch.children["c1"].status is S.SKIPPED
    assert owner.batch.children["c3"].status is S.SKIPPED
    assert owner.batch.rollout_counts() == {"queued": 0, "waiting_for_agent": 0}
    assert owner.batch.next_deadline() is None


def test_terminating_a_waiting_child() -> None:
    owner = Owner(Batch("b", tasks(1), rollout=Rollout(wait_for_agent_s=60)))
    owner.start()
    owner.send(TerminateChild("c1"))
    assert owner.batch.children["c1"].status is S.SKIPPED
    assert owner.batch.next_deadline() is None


def test_a_child_restored_after_a_restart_goes_back_to_the_queue() -> None:
    """Reconciliation: an unlisted ``maybe_sent`` child never reached its agent; it is sent
    when a slot is free, not at once, and never twice."""
    children = [ChildTask.restore(f"c{i}", i, f"v{i}", S.PENDING) for i in (1, 2, 3)]
    batch = Batch("b", children, rollout=Rollout(max_concurrency=1))
    batch.resume(now=0)
    first = batch.agent_connected(1, frozenset(), now=1)
    assert sent(first) == ["c1"]
    batch.handle(Dispatched("c1"), now=1)
    assert sent(batch.agent_connected(2, frozenset(), now=2)) == []  # c1 holds the slot
    assert sent(batch.agent_connected(3, None, now=2)) == []
    # In the order their agents said they never got them.
    assert sent(batch.handle(Finished("c1", S.SUCCESS, 0), now=3)) == ["c2"]
    batch.handle(Dispatched("c2"), now=3)
    assert sent(batch.handle(Finished("c2", S.SUCCESS, 0), now=4)) == ["c3"]


# --- properties --------------------------------------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("finish"), st.integers(1, 12), st.sampled_from([S.SUCCESS, S.FAILURE])),
    st.tuples(st.just("run"), st.integers(1, 12)),
    st.tuples(st.just("connect"), st.integers(1, 12)),
    st.tuples(st.just("lose"), st.integers(1, 12)),
    st.tuples(st.just("wait"), st.integers(1, 40)),
    st.tuples(st.just("terminate_child"), st.integers(1, 12)),
    st.tuples(st.just("terminate_batch")),
)
LIMIT = st.one_of(st.none(), st.integers(1, 14), st.integers(1, 100).map(lambda p: f"{p}%"))
ERRORS = st.one_of(st.none(), st.integers(0, 6), st.integers(0, 100).map(lambda p: f"{p}%"))


@PROPS
@given(
    n=st.integers(1, 12),
    concurrency=LIMIT,
    max_errors=ERRORS,
    wait=st.sampled_from([0, 30]),
    online=st.sets(st.integers(1, 12)),
    steps=st.lists(STEP, max_size=40),
)
def test_rollout_properties(
    n: int,
    concurrency: int | str | None,
    max_errors: int | str | None,
    wait: int,
    online: set[int],
    steps: list[tuple[object, ...]],
) -> None:
    rollout = Rollout(max_concurrency=concurrency, max_errors=max_errors, wait_for_agent_s=wait)
    batch = Batch("b", tasks(n), rollout=rollout)
    limit = n if concurrency is None else resolve_limit(concurrency, n, minimum=1)
    owner = Owner(batch, online={v for v in online if v <= n})
    owner.start()
    stopped_at: int | None = None

    def check() -> None:
        nonlocal stopped_at
        # Never more than max_concurrency children between dispatch and terminal.
        assert owner.peak <= limit
        if batch.stop_reason is not None and not batch.user_terminated and stopped_at is None:
            stopped_at = len(owner.dispatched)
        # Nothing dispatched after the threshold was crossed.
        if stopped_at is not None:
            assert len(owner.dispatched) == stopped_at
        assert not owner.dispatched_after_stop
        assert len(owner.dispatched) == len(set(owner.dispatched))  # never twice

    for step in steps:
        kind = step[0]
        if kind == "finish" or kind == "run":
            cid = f"c{min(int(step[1]), n)}"  # type: ignore[call-overload]
            task = batch.children[cid]
            if task.status in (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING, S.TERMINATING):
                if kind == "run":
                    owner.send(Started(cid, pid=1))
                else:
                    status = step[2] if task.status is not S.TERMINATING else S.TERMINATED
                    owner.send(Finished(cid, status, 0))  # type: ignore[arg-type]
        elif kind == "connect":
            owner.connect(min(int(step[1]), n))  # type: ignore[call-overload]
        elif kind == "lose":
            owner.lose(min(int(step[1]), n))  # type: ignore[call-overload]
        elif kind == "wait":
            owner.now += int(step[1])  # type: ignore[call-overload]
            owner.send(Tick())
        elif kind == "terminate_child":
            owner.send(TerminateChild(f"c{min(int(step[1]), n)}"))  # type: ignore[call-overload]
        else:
            owner.send(TerminateBatch())
        check()

    # Drain: every agent online, every running command finishes, time passes.
    for vps_id in range(1, n + 1):
        owner.connect(vps_id)
        check()
    for _ in range(n + 1):
        for cid, task in batch.children.items():
            if not task.is_terminal and task.sent_at is not None:
                status = S.TERMINATED if task.status is S.TERMINATING else S.SUCCESS
                owner.send(Finished(cid, status, 0))
                check()
    owner.now += 10_000
    owner.send(Tick())
    check()
    # Every child terminal at the end; the batch final.
    assert all(t.is_terminal for t in batch.children.values()), batch.counts()
    assert batch.is_final
    if batch.stop_reason is not None and batch.stop_reason.startswith("error threshold"):
        errors = sum(1 for t in batch.children.values() if t.status in ERROR_STATUSES)
        assert rollout.max_errors is not None
        assert errors > resolve_limit(rollout.max_errors, n, minimum=0)


def test_a_resumed_batch_whose_dispatching_had_stopped_skips_what_was_never_sent() -> None:
    children = [ChildTask.restore("c1", 1, "v1", S.FAILURE, exit_code=1)] + [
        ChildTask.restore(f"c{i}", i, f"v{i}", S.PENDING) for i in (2, 3)
    ]
    batch = Batch("b", children, rollout=Rollout(max_concurrency=1, max_errors=0))
    reason = "error threshold reached: 1 children ended in error (max_errors 0)"
    batch.resume(now=0, stop_reason=reason)
    assert batch.stop_reason == reason
    assert sent(batch.agent_connected(2, frozenset(), now=1)) == []
    assert batch.children["c2"].status is S.SKIPPED
    assert sent(batch.agent_connected(3, frozenset({"c3"}), now=1)) == []
    assert batch.children["c3"].status is S.SENT_TO_AGENT  # it did reach its agent: it runs
