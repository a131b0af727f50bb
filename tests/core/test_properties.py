"""Hypothesis properties: random event sequences against random batches, and the output and
request helpers against random input.

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
    SendCommand,
    SendTerminate,
    Started,
    StreamCursor,
    TerminateBatch,
    TerminateChild,
    TerminateUnconfirmed,
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
    "Acked": lambda c: Acked(c, accepted=True),
    "Rejected": lambda c: Acked(c, accepted=False, reason="no"),
    "Started": lambda c: Started(c, pid=10),
    "OutputSeen": OutputSeen,
    "FinishedSuccess": lambda c: Finished(c, S.SUCCESS, exit_code=0),
    "FinishedFailure": lambda c: Finished(c, S.FAILURE, exit_code=1),
    "FinishedTerminated": lambda c: Finished(c, S.TERMINATED, exit_code=-9),
    "TerminateChild": TerminateChild,
    "TerminateUnconfirmed": lambda c: TerminateUnconfirmed(c, waited_s=3),
    "AgentLost": AgentLost,
    "AgentReturned": AgentReturned,
}
KIND_NAMES = list(KINDS)
_RANK = {B.PENDING: 0, B.IN_PROGRESS: 1, B.TERMINATING: 2}
_LIVE = {S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING, S.TERMINATING}
#: Events on the way to success (plus a flaky network), to reach COMPLETED_SUCCESSFULLY often.
_HAPPY = ["Dispatched", "Acked", "Started", "OutputSeen", "FinishedSuccess", "AgentLost",
          "AgentReturned"]  # fmt: skip


def steps(*modes: str) -> st.SearchStrategy[tuple[str, int, int, float]]:
    """A step: (how to pick the event, child index, kind index, seconds to wait first)."""
    return st.tuples(
        st.sampled_from(modes),
        st.integers(0, 7),
        st.integers(0, len(KIND_NAMES) - 1),
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 4.0, 6.0, 11.0, 40.0]),
    )


plans = st.one_of(
    # Anything goes, mostly legal events.
    st.lists(steps(*["happy"] * 4, *["legal"] * 4, "any", "any", "terminate", "tick"), max_size=40),
    # Mostly the way to success, so that whole batches succeed too.
    st.lists(steps(*["happy"] * 8, "tick"), max_size=40),
)
batches = st.builds(
    lambda n, timeout, grace, slack: Batch(
        "b",
        [ChildTask(f"c{i}", 100 + i) for i in range(n)],
        timeout_s=timeout,
        timers=BatchTimers(reconnect_grace_s=grace, result_slack_s=slack),
    ),
    st.integers(1, 4),
    st.sampled_from([0, 0, 10]),
    st.sampled_from([0.0, 5.0, 30.0]),
    st.sampled_from([0.0, 5.0]),
)


def pick_event(batch: Batch, how: str, child: int, kind: int) -> Event:
    if how == "terminate":
        return TerminateBatch()
    if how == "tick":
        return Tick()
    ids = list(batch.children)
    cid = ids[child % len(ids)]
    if how == "any":
        return KINDS[KIND_NAMES[kind % len(KIND_NAMES)]](cid)
    task = batch.children[cid]
    names = _HAPPY if how == "happy" else KIND_NAMES
    legal = [e for name in names if task.accepts(e := KINDS[name](cid))]
    return legal[kind % len(legal)] if legal else Tick()


def expected_final(batch: Batch, *, user_terminated: bool, ever_dispatched: bool) -> BatchStatus:
    """SPEC §3's rules, from what the test itself saw happen."""
    if user_terminated:
        return B.TERMINATED
    if not ever_dispatched:
        return B.FAILED_TO_START
    if all(t.status is S.SUCCESS for t in batch.children.values()):
        return B.COMPLETED_SUCCESSFULLY
    return B.COMPLETED_WITH_ERRORS


def has_deadline(batch: Batch, task: ChildTask) -> bool:
    timed = bool(batch.timeout_s) and task.sent_at is not None
    return not task.is_terminal and (task.lost_since is not None or timed)


def check_effects(batch: Batch, before: dict[str, Any], effects: list[Effect]) -> None:
    old_children: dict[str, ChildTask] = before["children"]
    for effect in effects:
        assert not isinstance(effect, SendCommand), "only start() sends commands"
        if isinstance(effect, SendTerminate | ChildChanged):
            assert effect.child_id in batch.children
        if isinstance(effect, SendTerminate):
            assert effect.vps_id == batch.children[effect.child_id].vps_id
            assert old_children[effect.child_id].status in _LIVE
    changed_batch = batch.status is not before["status"]
    assert effects.count(BatchChanged()) == int(changed_batch)
    for cid, task in batch.children.items():
        if task.status is not old_children[cid].status:
            assert ChildChanged(cid) in effects
    assert len([e for e in effects if isinstance(e, SendTerminate)]) == len(
        {e for e in effects if isinstance(e, SendTerminate)}
    ), "a child is told to terminate at most once per event"


def check_deadline(batch: Batch, now: float) -> None:
    deadline = batch.next_deadline()
    assert (deadline is None) == (not any(has_deadline(batch, t) for t in batch.children.values()))
    if deadline is None:
        return
    if deadline > now:  # a Tick before the deadline changes nothing
        early = copy.deepcopy(batch)
        assert early.handle(Tick(), now=now) == []
        assert vars(early) == vars(batch)
    due = copy.deepcopy(batch)  # a Tick at the deadline changes something
    assert due.handle(Tick(), now=max(now, deadline)) != []


#: Restored statuses that prove the command reached the agent (SPEC: "no target reachable").
_NOT_REACHED = {S.PENDING, S.AGENT_UNREACHABLE, S.TERMINATED}


def begin(batch: Batch, restore: list[ChildStatus] | None) -> bool:
    """Start the batch, or resume it with restored statuses; whether anything was dispatched."""
    if restore is None:
        effects = batch.start(now=0.0)
        assert effects == [SendCommand(c.child_id, c.vps_id) for c in batch.children.values()]
        return False
    for task, status in zip(batch.children.values(), restore, strict=False):
        task.status = status  # what a store gives back: the status, no timestamps
    before = snapshot(batch)
    effects = batch.resume(now=0.0)
    check_effects(batch, before, effects)
    assert not any(t.status is S.PENDING for t in batch.children.values())
    return any(status not in _NOT_REACHED for status in restore[: len(batch.children)])


@PROPS
@given(
    batch=batches,
    plan=plans,
    restore=st.none() | st.lists(st.sampled_from(list(S)), min_size=4, max_size=4),
)
def test_random_event_sequences(
    batch: Batch, plan: list[tuple[str, int, int, float]], restore: list[ChildStatus] | None
) -> None:
    now = 0.0
    ever_dispatched = begin(batch, restore)
    user_terminated = False
    check_invariants(batch, user_terminated=False, ever_dispatched=ever_dispatched)

    for how, child, kind, wait in plan:
        now += wait
        event = pick_event(batch, how, child, kind)
        before = snapshot(batch)
        was_final = batch.is_final
        error: InvalidTransition | None = None
        try:
            effects = batch.handle(event, now=now)
        except InvalidTransition as caught:
            error = caught
        if error is not None:
            assert not isinstance(event, TerminateBatch | Tick)
            assert not batch.children[event.child_id].accepts(event)
            assert error.event is event
            assert vars(batch) == before, "an illegal event changed the batch"
            continue
        if isinstance(event, Dispatched):
            ever_dispatched = True
        if isinstance(event, TerminateBatch) and not was_final:
            user_terminated = True

        # Terminal is final: a finished child, and a final batch, never change again.
        for cid, old in before["children"].items():
            if old.status.is_terminal:
                assert dataclasses.asdict(batch.children[cid]) == dataclasses.asdict(old)
        if was_final:
            assert effects == []
            assert vars(batch) == before

        if not batch.is_final:
            assert _RANK[batch.status] >= _RANK[before["status"]], "the batch went backwards"
        check_invariants(batch, user_terminated=user_terminated, ever_dispatched=ever_dispatched)
        check_effects(batch, before, effects)
        check_deadline(batch, now)


def check_invariants(batch: Batch, *, user_terminated: bool, ever_dispatched: bool) -> None:
    # The incremental bookkeeping agrees with a scan of every child.
    tasks = batch.children.values()
    scanned: dict[str, int] = {}
    for t in tasks:
        scanned[t.status.value] = scanned.get(t.status.value, 0) + 1
    assert batch.counts() == scanned
    deadlines = [d for t in tasks if (d := batch._deadline(t)) is not None]
    assert batch.next_deadline() == min(deadlines, default=None)
    # The batch is final exactly when every child is, and then with the right status.
    assert batch.is_final == all(t.is_terminal for t in batch.children.values())
    if batch.is_final:
        assert batch.status is expected_final(
            batch, user_terminated=user_terminated, ever_dispatched=ever_dispatched
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
