"""Hypothesis properties: random event sequences against random batches (agents coming and
going, time passing), and the output and request helpers against random input.

Every test is derandomized (the same examples on every run) and has no deadline, so the suite is
deterministic and not sensitive to a slow machine.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.core import (
    Acked,
    AgentLost,
    AgentReturned,
    Batch,
    BatchChanged,
    BatchRequest,
    BatchStatus,
    BatchTimers,
    ChildChanged,
    ChildEvent,
    ChildStatus,
    ChildTask,
    Dispatched,
    Effect,
    Event,
    Finished,
    InvalidTransition,
    OutputSeen,
    OutputSummary,
    Reconciled,
    Rejected,
    SendCommand,
    SendTerminate,
    Started,
    StreamCursor,
    TerminateBatch,
    TerminateChild,
    Tick,
    Unreachable,
    ValidationError,
    validate_batch_request,
)

from .harness import snapshot

B = BatchStatus
S = ChildStatus
PROPS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KINDS: dict[str, Callable[[str], ChildEvent]] = {
    "Dispatched": Dispatched,
    "Unreachable": Unreachable,
    "Acked": Acked,
    "Rejected": lambda c: Rejected(c, reason="no"),
    "Started": lambda c: Started(c, pid=10),
    "OutputSeen": OutputSeen,
    "FinishedSuccess": lambda c: Finished(c, S.SUCCESS, exit_code=0),
    "FinishedFailure": lambda c: Finished(c, S.FAILURE, exit_code=1),
    "FinishedTerminated": lambda c: Finished(c, S.TERMINATED, exit_code=-9),
    "TerminateChild": TerminateChild,
    "TerminateChildByBatch": lambda c: TerminateChild(c, by_batch=True),
    "AgentLost": AgentLost,
    "AgentReturned": AgentReturned,
    "ReconciledListed": lambda c: Reconciled(c, listed=True),
    "ReconciledUnlisted": lambda c: Reconciled(c, listed=False),
}
KIND_NAMES = list(KINDS)
_RANK = {B.PENDING: 0, B.IN_PROGRESS: 1, B.TERMINATING: 2}
_LIVE = {S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING, S.TERMINATING}
#: Events on the way to success, to reach COMPLETED_SUCCESSFULLY often (agents come and go
#: through the "connect" and "lose" steps).
_HAPPY = ["Dispatched", "Acked", "Started", "OutputSeen", "FinishedSuccess"]
#: Statuses that prove the command reached its agent.
_REACHED = {S.AGENT_ACCEPTED, S.EXECUTING, S.SUCCESS, S.FAILURE, S.AGENT_REJECTED}
_WAITS = [0.0, 0.0, 0.5, 1.0, 4.0, 6.0, 11.0, 15.0, 40.0]

Step = tuple[str, int, int, float, int]


def steps(*modes: str) -> st.SearchStrategy[Step]:
    """A step: (what to do, child index, kind index, seconds to wait first, a bit mask choosing
    which of a VPS's commands its agent lists on connecting)."""
    return st.tuples(
        st.sampled_from(modes),
        st.integers(0, 7),
        st.integers(0, len(KIND_NAMES) - 1),
        st.sampled_from(_WAITS),
        st.integers(0, 31),
    )


_AGENTS = ["connect", "connect", "lose", "lose", "legacy"]
plans = st.one_of(
    # Anything goes, mostly legal events, agents coming and going, time passing.
    st.lists(
        steps(*["happy"] * 4, *["legal"] * 4, "any", "any", "terminate", "tick", "deadline",
              *_AGENTS),
        max_size=60,
    ),
    # Mostly the way to success, so that whole batches succeed too.
    st.lists(steps(*["happy"] * 8, "tick", "connect", "lose"), max_size=60),
)  # fmt: skip
batches = st.builds(
    lambda n, vpses, timeout, grace, slack, confirm: Batch(
        "b",
        [ChildTask(f"c{i}", 100 + i % vpses) for i in range(n)],
        timeout_s=timeout,
        timers=BatchTimers(
            reconnect_grace_s=grace, result_slack_s=slack, terminate_confirm_s=confirm
        ),
    ),
    st.integers(1, 4),
    st.integers(1, 4),  # how many VPSes the children share
    st.sampled_from([0, 0, 10]),
    st.sampled_from([0.0, 5.0, 30.0]),
    st.sampled_from([0.0, 5.0]),
    st.sampled_from([0.0, 3.0, 15.0]),
)


def pick_event(batch: Batch, how: str, child: int, kind: int) -> Event:
    if how == "terminate":
        return TerminateBatch()
    if how in ("tick", "deadline"):
        return Tick()
    ids = list(batch.children)
    cid = ids[child % len(ids)]
    if how == "any":
        return KINDS[KIND_NAMES[kind % len(KIND_NAMES)]](cid)
    task = batch.children[cid]
    names = _HAPPY if how == "happy" else KIND_NAMES
    legal = [e for name in names if task.accepts(e := KINDS[name](cid))]
    return legal[kind % len(legal)] if legal else Tick()


def open_ids(batch: Batch, vps_id: int, mask: int) -> list[str]:
    """The commands an agent lists: a subset of its VPS's children (and one it alone knows)."""
    mine = [t.child_id for t in batch.children_of(vps_id)]
    listed = [cid for i, cid in enumerate(mine) if mask >> i & 1]
    return [*listed, "from-another-batch"] if mask & 16 else listed


def model_deadline(batch: Batch, task: ChildTask) -> float | None:
    """The child's deadline as the module docstring states it (written independently)."""
    if task.is_terminal:
        return None
    timers = batch.timers
    if task.lost_since is not None:  # lost: only the grace runs
        return task.lost_since + timers.reconnect_grace_s
    candidates = []
    if task.status is S.TERMINATING and task.terminate_requested_at is not None:
        candidates.append(task.terminate_requested_at + timers.terminate_confirm_s)
    if batch.timeout_s and task.sent_at is not None:
        candidates.append(task.sent_at + batch.timeout_s + timers.result_slack_s)
    return min(candidates, default=None)


def expected_final(batch: Batch, *, user_terminated: bool, reached: bool) -> set[BatchStatus]:
    """The batch's status rules, from what the test itself saw happen."""
    if user_terminated:
        return {B.TERMINATED}
    tasks = batch.children.values()
    if not reached and not any(t.status in _REACHED for t in tasks):
        if any(t.status is S.TERMINATED for t in tasks):
            # A restored TERMINATED child ran (see test_batch's
            # test_a_restored_terminated_child_did_reach_its_agent); either answer is allowed
            # here so that this property checks the rest.
            return {B.FAILED_TO_START, B.COMPLETED_WITH_ERRORS}
        return {B.FAILED_TO_START}
    if all(t.status is S.SUCCESS for t in tasks):
        return {B.COMPLETED_SUCCESSFULLY}
    return {B.COMPLETED_WITH_ERRORS}


def check_effects(
    batch: Batch,
    before: dict[str, Any],
    effects: list[Effect],
    *,
    connected: tuple[int, list[str] | None] | None = None,
) -> None:
    """``connected``: the step was ``agent_connected(vps_id, open_ids)``."""
    old_children: dict[str, ChildTask] = before["children"]
    for effect in effects:
        if isinstance(effect, SendCommand | SendTerminate | ChildChanged):
            assert effect.child_id in batch.children
        if isinstance(effect, SendCommand | SendTerminate):
            task = batch.children[effect.child_id]
            assert effect.vps_id == task.vps_id
        if isinstance(effect, SendCommand):
            # Only start() and an agent coming back ask for a command to be sent.
            assert connected is not None, "SendCommand outside agent_connected"
            vps_id, listed = connected
            assert task.vps_id == vps_id
            assert task.status in (S.PENDING, S.SENT_TO_AGENT)
            assert not batch.user_terminated, "a command sent for a terminated batch"
            assert listed is None or task.child_id not in listed
        if isinstance(effect, SendTerminate):
            old = old_children[effect.child_id]
            assert old.status in _LIVE or (old.status is S.PENDING and old.maybe_sent)
            assert task.status is S.TERMINATING or (
                task.status is S.FAILURE and task.ended_by_server
            )
    changed_batch = batch.status is not before["status"]
    assert effects.count(BatchChanged()) == int(changed_batch)
    for cid, task in batch.children.items():
        old = old_children[cid]
        shown = ("status", "exit_code", "error_message", "agent_reported", "lost_since")
        if any(getattr(task, f) != getattr(old, f) for f in shown):
            assert ChildChanged(cid) in effects
    terminates = [e for e in effects if isinstance(e, SendTerminate)]
    assert len(terminates) == len(set(terminates)), "a child is told to terminate at most once"
    sends = [e for e in effects if isinstance(e, SendCommand)]
    assert len(sends) == len(set(sends)), "a command is asked for at most once per call"


def check_settled(batch: Batch, now: float) -> None:
    """``_settle``'s claim: one pass reaches the fixed point (a second changes nothing)."""
    again = copy.deepcopy(batch)
    effects: list[Effect] = []
    again._settle(now, effects)
    assert effects == []
    assert vars(again) == vars(batch)


def check_deadline(batch: Batch, now: float) -> None:
    deadline = batch.next_deadline()
    if deadline is None:
        return
    if deadline > now:  # a Tick before the deadline changes nothing
        early = copy.deepcopy(batch)
        assert early.handle(Tick(), now=now) == []
        assert vars(early) == vars(batch)
    due = copy.deepcopy(batch)  # a Tick at the deadline changes something
    assert due.handle(Tick(), now=max(now, deadline)) != []


#: Restored statuses that prove the command was sent (resume gives live ones a ``sent_at``).
_RESTORED_SENT = _REACHED | {S.SENT_TO_AGENT, S.TERMINATING}

restores = st.none() | st.tuples(
    st.lists(st.sampled_from(list(S)), min_size=4, max_size=4), st.booleans()
)


def begin(batch: Batch, restore: tuple[list[ChildStatus], bool] | None) -> tuple[bool, bool]:
    """Start the batch, or resume it with children restored from a store; returns (whether
    anything was sent, whether the user terminated it)."""
    if restore is None:
        effects = batch.start(now=0.0)
        assert effects == [SendCommand(c.child_id, c.vps_id) for c in batch.children.values()]
        return False, False
    statuses, terminating = restore
    statuses = statuses[: len(batch.children)]
    # A store whose batch is terminating holds only terminating or finished children (that is
    # what terminating a batch leaves); test_batch_agents' test_a_resumed_terminating_batch_*
    # cover a store caught half-way.
    terminating = terminating and all(s.is_terminal or s is S.TERMINATING for s in statuses)
    fresh = Batch(
        batch.batch_id,
        [
            ChildTask.restore(t.child_id, t.vps_id, t.vps_name, status)
            for t, status in zip(batch.children.values(), statuses, strict=True)
        ],
        timeout_s=batch.timeout_s,
        timers=batch.timers,
    )
    batch.__dict__.update(vars(fresh))
    before = snapshot(batch)
    if terminating:  # the store held the batch as TERMINATING already: no change to publish
        before["status"] = B.TERMINATING
    effects = batch.resume(now=0.0, user_terminated=terminating)
    check_effects(batch, before, effects)
    for task in batch.children.values():
        if not task.is_terminal:  # every live child waits for its agent to come back
            assert task.lost_since == 0.0
            assert task.maybe_sent == (task.status is S.PENDING)
    assert batch.status is not B.PENDING or all(
        t.status is S.PENDING for t in batch.children.values() if not t.is_terminal
    )
    return any(s in _RESTORED_SENT for s in statuses), terminating


def apply(
    batch: Batch, how: str, child: int, kind: int, mask: int, now: float
) -> tuple[Event | None, list[Effect], tuple[int, list[str] | None] | None]:
    """Carry out one step: (the event handled, if any; its effects; agent_connected's args)."""
    vpses = sorted({t.vps_id for t in batch.children.values()})
    vps_id = vpses[child % len(vpses)]
    if how == "lose":
        return None, batch.agent_lost(vps_id, now=now), None
    if how in ("connect", "legacy"):
        listed = None if how == "legacy" else open_ids(batch, vps_id, mask)
        return None, batch.agent_connected(vps_id, listed, now=now), (vps_id, listed)
    event = pick_event(batch, how, child, kind)
    return event, batch.handle(event, now=now), None


def track_terminates(
    batch: Batch,
    before: dict[str, Any],
    event: Event | None,
    effects: list[Effect],
    now: float,
    told: dict[str, float | None],
) -> dict[str, float | None]:
    """The confirmation clock counts from the last time the child was told to terminate (a
    ``SendTerminate``, or its agent coming back while it terminates)."""
    told = dict(told)
    for cid, task in batch.children.items():
        if task.status is not S.TERMINATING:
            told.pop(cid, None)
            continue
        back = isinstance(event, AgentReturned | Reconciled) and event.child_id == cid
        if SendTerminate(cid, task.vps_id) in effects or back:
            told[cid] = now
        assert task.terminate_requested_at == told.get(cid), cid
    return told


def check_agents(
    batch: Batch,
    before: dict[str, Any],
    how: str,
    child: int,
    effects: list[Effect],
    connected: tuple[int, list[str] | None] | None,
) -> None:
    """What an agent going or coming back does to its VPS's children."""
    old_children: dict[str, ChildTask] = before["children"]
    for cid, task in batch.children.items():
        old = old_children[cid]
        if task.status is S.SKIPPED and old.status is S.PENDING:
            assert not old.maybe_sent, "a child that may be on its agent is never 'not run'"
    if how == "lose":
        vpses = sorted({t.vps_id for t in batch.children.values()})
        for task in batch.children_of(vpses[child % len(vpses)]):
            if not task.is_terminal and (task.sent_at is not None or task.maybe_sent):
                assert task.lost_since is not None
    if connected is None:
        return
    vps_id, listed = connected
    for task in batch.children_of(vps_id):
        old = old_children[task.child_id]
        cid = task.child_id
        if old.is_terminal or (old.status is S.PENDING and not old.maybe_sent):
            assert task == old  # nothing to reconcile
            continue
        if listed is None and old.lost_since is None and old.status is not S.PENDING:
            assert task == old  # a legacy agent: only children that waited for it
            continue
        if not task.is_terminal:
            assert task.lost_since is None
        resend = listed is None or cid not in listed
        if resend and task.status in (S.PENDING, S.SENT_TO_AGENT):
            assert SendCommand(cid, vps_id) in effects
        elif listed is not None and cid not in listed:
            # Not on the agent: never sent now, or it lost it.
            assert task.status in (S.SKIPPED, S.FAILURE)
            assert task.ended_by_server
        else:
            assert not task.is_terminal
        if task.status is S.TERMINATING:
            assert SendTerminate(cid, vps_id) in effects
            assert task.terminate_requested_at is not None


@settings(PROPS, max_examples=600)
@given(batch=batches, plan=plans, restore=restores)
def test_random_event_sequences(
    batch: Batch, plan: list[Step], restore: tuple[list[ChildStatus], bool] | None
) -> None:
    now = 0.0
    reached, user_terminated = begin(batch, restore)
    told: dict[str, float | None] = {}  # when each child was last told to terminate
    check_invariants(batch, user_terminated=user_terminated, reached=reached)

    for how, child, kind, wait, mask in plan:
        now += wait
        if how == "deadline":  # exactly at the next deadline
            now = max(now, batch.next_deadline() or now)
        before = snapshot(batch)
        was_final = batch.is_final
        try:
            event, effects, connected = apply(batch, how, child, kind, mask, now)
        except InvalidTransition as error:
            event = error.event
            assert isinstance(event, ChildEvent)
            assert not batch.children[event.child_id].accepts(event)
            assert vars(batch) == before, "an illegal event changed the batch"
            continue
        if isinstance(event, TerminateBatch) and not was_final:
            user_terminated = True
        told = track_terminates(batch, before, event, effects, now, told)
        check_agents(batch, before, how, child, effects, connected)
        reached = reached or any(t.sent_at is not None for t in batch.children.values())

        # Terminal is final: a finished child never changes status, and records at most one
        # late result (only when the server had ended it).
        for cid, old in before["children"].items():
            if not old.status.is_terminal:
                continue
            new = batch.children[cid]
            assert new.status is old.status
            if new.agent_reported != old.agent_reported:
                assert old.agent_reported is None
                assert old.ended_by_server
                assert isinstance(event, Finished)
                assert new.agent_reported is not None
                assert new.agent_reported.at == now
            same = dataclasses.replace(new, agent_reported=old.agent_reported)
            assert dataclasses.replace(same, updated_at=old.updated_at) == old
        if was_final:
            assert batch.status is before["status"]
            assert all(isinstance(e, ChildChanged) for e in effects)
            assert vars(batch) == before or isinstance(event, Finished)

        if not batch.is_final:
            assert _RANK[batch.status] >= _RANK[before["status"]], "the batch went backwards"
        check_invariants(batch, user_terminated=user_terminated, reached=reached)
        check_effects(batch, before, effects, connected=connected)
        check_deadline(batch, now)
        check_settled(batch, now)

    # Every child ends within a known bound once its agent is gone for good: the owner finds
    # every agent gone, answers each command still to send "unreachable", and time passes.
    for vps_id in sorted({t.vps_id for t in batch.children.values()}):
        batch.agent_lost(vps_id, now=now)
    for task in list(batch.children.values()):
        if task.status is S.PENDING and not task.maybe_sent:
            batch.handle(Unreachable(task.child_id), now=now)
    timers = batch.timers
    bound = timers.reconnect_grace_s + timers.terminate_confirm_s + timers.result_slack_s
    batch.handle(Tick(), now=now + bound + batch.timeout_s)
    assert all(t.is_terminal for t in batch.children.values()), batch.counts()
    assert batch.next_deadline() is None
    check_invariants(batch, user_terminated=user_terminated, reached=reached)


def check_invariants(batch: Batch, *, user_terminated: bool, reached: bool) -> None:
    # The incremental bookkeeping agrees with a scan of every child.
    tasks = batch.children.values()
    scanned: dict[str, int] = {}
    for t in tasks:
        scanned[t.status.value] = scanned.get(t.status.value, 0) + 1
    assert batch.counts() == scanned
    deadlines = [d for t in tasks if (d := model_deadline(batch, t)) is not None]
    assert batch.next_deadline() == min(deadlines, default=None)
    for t in tasks:
        assert t.lost_since is None or not t.is_terminal
        assert t.terminate_requested_at is None or t.status is S.TERMINATING
        assert not t.maybe_sent or t.status in (S.PENDING, S.TERMINATING) or t.is_terminal
        assert t.agent_reported is None or (t.is_terminal and t.ended_by_server)
    # The batch is final exactly when every child is, and then with the right status.
    assert batch.is_final == all(t.is_terminal for t in tasks)
    if batch.is_final:
        assert batch.status in expected_final(
            batch, user_terminated=user_terminated, reached=reached
        )
        assert batch.completed_at is not None
    assert batch.user_terminated == user_terminated
    assert sum(batch.counts().values()) == len(batch.children)


# --- StreamCursor --------------------------------------------------------------------------------

chunks = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 25)), max_size=25)


@PROPS
@given(stream=st.binary(min_size=90, max_size=90), plan=chunks, cap=st.integers(0, 80))
def test_cursor_rebuilds_the_stream_from_any_chunk_order(
    stream: bytes, plan: list[tuple[int, int]], cap: int
) -> None:
    cursor = StreamCursor(cap=cap)
    log = bytearray()
    covered = 0  # the model: how far the stream is known
    expected = bytearray()
    gaps = reported_gaps = truncations = 0
    for offset, size in plan:
        data = stream[offset : offset + size]
        got = cursor.accept(data, offset=offset)
        if offset + len(data) > covered:
            gaps += max(offset - covered, 0)
            expected += stream[max(offset, covered) : offset + len(data)]
            covered = offset + len(data)
        log += got.data
        truncations += got.truncated
        reported_gaps += got.gap
        assert cursor.stored == len(log) <= cap
        assert cursor.position == covered
    assert bytes(log) == bytes(expected[:cap])
    assert truncations == int(len(expected) > cap) == int(cursor.truncated)
    assert reported_gaps == gaps == covered - len(expected)


@PROPS
@given(stream=st.binary(max_size=60), cuts=st.lists(st.integers(0, 60)), cap=st.integers(0, 70),
       split=st.integers(0, 20), resend=st.integers(0, 10))  # fmt: skip
def test_cursor_resumes_where_it_left_off(
    stream: bytes, cuts: list[int], cap: int, split: int, resend: int
) -> None:
    """Contiguous chunks; after a restart from ``position`` the agent re-sends some of them."""
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    pieces = [(a, stream[a:b]) for a, b in itertools.pairwise(bounds)]
    first = StreamCursor(cap=cap)
    log = b"".join(first.accept(data, offset=o).data for o, data in pieces[:split])
    second = StreamCursor(cap=cap, position=first.position)
    assert (second.stored, second.truncated) == (first.stored, first.truncated)
    replay = pieces[max(split - resend, 0) :]
    log += b"".join(second.accept(data, offset=o).data for o, data in replay)
    assert log == stream[:cap]


# --- OutputSummary --------------------------------------------------------------------------------

_ALPHABET = ["a", "b", "é", "☃", "𝄞", "\n", "\n", "\r", " "]
texts = st.lists(st.sampled_from(_ALPHABET), max_size=80).map("".join)
bounds = st.tuples(st.integers(1, 4), st.integers(1, 9))


def _cut(line: str, limit: int) -> str:
    """The model: the longest whole-character prefix within ``limit`` bytes, then an ellipsis."""
    if len(line.encode()) <= limit:
        return line.rstrip("\r")
    keep = ""
    for char in line:
        if len((keep + char).encode()) > limit:
            break
        keep += char
    return keep + "…"


def _check_bounded(summary: OutputSummary) -> None:
    assert len(summary._lines) <= summary.max_lines
    assert all(len(line) <= summary.max_line_bytes + 3 for line in summary._lines)
    assert len(summary._partial) <= summary.max_line_bytes


def _feed_in_pieces(summary: OutputSummary, data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        summary.feed(data[a:b])
        _check_bounded(summary)


@PROPS
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=12), limits=bounds)
def test_summary_of_utf8_text_matches_the_model(
    text: str, cuts: list[int], limits: tuple[int, int]
) -> None:
    max_lines, max_line_bytes = limits
    summary = OutputSummary(max_lines=max_lines, max_line_bytes=max_line_bytes)
    _feed_in_pieces(summary, text.encode(), cuts)
    *complete, last = text.split("\n")
    lines = complete + ([last] if last else [])
    assert summary.lines() == [_cut(line, max_line_bytes) for line in lines][-max_lines:]
    # Kept lines survive a restart unchanged.
    restored = OutputSummary.of(summary.lines(), max_lines=max_lines, max_line_bytes=max_line_bytes)
    assert restored.lines() == summary.lines()
    _check_bounded(restored)


@PROPS
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=12),
       limits=bounds)  # fmt: skip
def test_summary_memory_is_bounded_for_any_bytes(
    data: bytes, cuts: list[int], limits: tuple[int, int]
) -> None:
    max_lines, max_line_bytes = limits
    summary = OutputSummary(max_lines=max_lines, max_line_bytes=max_line_bytes)
    _feed_in_pieces(summary, data, cuts)
    lines = summary.lines()
    assert len(lines) <= max_lines
    assert all("\n" not in line for line in lines)


# --- validate_batch_request -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
_KEYS = ["command_content", "script_id", "working_directory", "target_vps_ids",
         "execution_alias", "timeout_seconds", "other"]  # fmt: skip


@PROPS
@given(body=json_values | st.dictionaries(st.sampled_from(_KEYS), json_values))
def test_any_json_body_is_a_request_or_a_validation_error(body: object) -> None:
    try:
        request: BatchRequest | ValidationError = validate_batch_request(body)
    except ValidationError as error:
        request = error
    if isinstance(request, ValidationError):
        assert request.errors
        assert all(set(e) >= {"field", "reason"} for e in request.errors)
    else:
        assert (request.command_content is None) != (request.script_id is None)
        assert request.target_vps_ids
        assert len(set(request.target_vps_ids)) == len(request.target_vps_ids)


ids = st.integers(1, 2**31 - 1)


@PROPS
@given(targets=st.lists(ids | ids.map(str), min_size=1, max_size=30))
def test_valid_targets_are_normalised_in_order(targets: list[int | str]) -> None:
    request = validate_batch_request({"command_content": "true", "target_vps_ids": targets})
    assert request.target_vps_ids == tuple(dict.fromkeys(int(t) for t in targets))
