"""Rollout options of a batch and the rules that apply them, without I/O.

Theory of operation
-------------------
A batch with rollout options does not fire at every target at once. ``Dispatcher`` keeps the
children that were not dispatched yet in a queue (target order) and decides, after every input
the batch receives (``Batch._settle``), in this order:

R1. **Stop.** Once more children than ``max_errors`` ended in error (``ERROR_STATUSES``: any
    terminal status but ``SUCCESS`` and ``SKIPPED``), dispatching stops for good:
    ``stop_reason`` says why and every child not yet dispatched (queued, or waiting for its
    agent) ends ``SKIPPED`` "not run: error threshold reached". Running children finish.
R2. **Dispatch.** While fewer than ``max_concurrency`` children hold a slot, the next queued
    child is dispatched (``SendCommand``). A child holds a slot from its ``SendCommand`` until
    it is terminal, or until it turns out to be waiting for its agent (R3).
R3. **Away.** A child whose agent is not connected at its turn (the owner reports
    ``Unreachable``) ends ``AGENT_UNREACHABLE`` at once when ``wait_for_agent_s`` is 0.
    Otherwise it waits (still ``PENDING``, holding no slot): when its agent connects it goes
    back to the front of the queue (and so is dispatched the moment a slot is free, which with
    a free slot is at once); when ``wait_for_agent_s`` passes first it ends
    ``AGENT_UNREACHABLE`` "agent did not connect within N s" (a deadline of the batch).

Terminating the batch stops dispatching too (``stop_reason`` "batch terminated", when
something was still undispatched): its undispatched children end ``SKIPPED`` through the child
table ("not run: batch terminated").

A percentage is of the batch's target count, rounded down; ``max_concurrency`` is at least 1.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ._status import ChildStatus

__all__ = [
    "CONCURRENCY_PERCENT_PATTERN",
    "ERRORS_PERCENT_PATTERN",
    "ERROR_STATUSES",
    "MAX_LIMIT",
    "MAX_WAIT_FOR_AGENT_S",
    "Rollout",
    "parse_limit",
    "resolve_limit",
]

S = ChildStatus
#: Terminal statuses that count as an error for ``max_errors``.
ERROR_STATUSES = frozenset(s for s in ChildStatus if s.is_terminal) - {S.SUCCESS, S.SKIPPED}
#: Children that hold a concurrency slot (besides those whose ``SendCommand`` is outstanding).
_HOLDING = (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING, S.TERMINATING)
MAX_WAIT_FOR_AGENT_S = 7 * 24 * 3600
MAX_LIMIT = 10**9
_PERCENT = re.compile(r"([0-9]{1,6})%")
#: The percentages a request may give, exactly (the OpenAPI document states these): 1%-100% for
#: ``max_concurrency``, 0%-100% for ``max_errors``; no spaces, no leading zeros.
CONCURRENCY_PERCENT_PATTERN = "^(100|[1-9][0-9]?)%$"
ERRORS_PERCENT_PATTERN = "^(100|[1-9]?[0-9])%$"

Limit = int | str  # a count, or "N%" of the target count


def parse_limit(value: object, *, minimum: int) -> Limit:
    """``value`` as a limit: an integer ``>= minimum`` or a string ``"N%"`` with N in
    ``minimum..100``.

    Raises:
        ValueError: the reason, ready to show to the user.
    """
    if isinstance(value, bool):
        raise ValueError(f'must be an integer >= {minimum} or a percentage like "10%"')
    if isinstance(value, int):
        if value < minimum or value > MAX_LIMIT:
            raise ValueError(f"must be at least {minimum} (and at most {MAX_LIMIT})")
        return value
    if isinstance(value, str):
        match = _PERCENT.fullmatch(value)
        if match is None:
            raise ValueError(f'must be an integer >= {minimum} or a percentage like "10%"')
        percent = int(match.group(1))
        if not minimum <= percent <= 100:
            raise ValueError(f"a percentage must be between {minimum}% and 100%")
        if value != f"{percent}%":
            raise ValueError(f'write the percentage without leading zeros, like "{percent}%"')
        return value
    raise ValueError(f'must be an integer >= {minimum} or a percentage like "10%"')


def resolve_limit(limit: Limit, total: int, *, minimum: int) -> int:
    """The count a limit stands for in a batch of ``total`` targets."""
    if isinstance(limit, int):
        return limit
    return max(minimum, total * int(limit[:-1]) // 100)


@dataclass(frozen=True)
class Rollout:
    """A batch's rollout options, as requested (``None`` = no limit).

    Raises ``ValueError`` when built with a value the request validation would refuse.
    """

    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    wait_for_agent_s: float = 0

    def __post_init__(self) -> None:
        if self.max_concurrency is not None:
            object.__setattr__(
                self, "max_concurrency", parse_limit(self.max_concurrency, minimum=1)
            )
        if self.max_errors is not None:
            object.__setattr__(self, "max_errors", parse_limit(self.max_errors, minimum=0))
        if not 0 <= self.wait_for_agent_s <= MAX_WAIT_FOR_AGENT_S:
            raise ValueError(f"wait_for_agent_s must be between 0 and {MAX_WAIT_FOR_AGENT_S}")


class Dispatcher:
    """The queue and slots of one batch (rules R1-R3 above); the ``Batch`` owns it.

    It never changes a child itself: it tells the batch which child to send (``next_to_send``)
    and which to skip (through ``skip``), and the batch does it through the child table.

    Args:
        rollout: the options.
        total: the batch's target count (percentages are of it).
    """

    def __init__(self, rollout: Rollout, total: int) -> None:
        self.rollout = rollout
        self.max_running = (
            None
            if rollout.max_concurrency is None
            else resolve_limit(rollout.max_concurrency, total, minimum=1)
        )
        self.max_errors = (
            None
            if rollout.max_errors is None
            else resolve_limit(rollout.max_errors, total, minimum=0)
        )
        self.stop_reason: str | None = None
        self.queue: deque[str] = deque()  # children to dispatch, next first (may hold stale ids)
        self.sending: set[str] = set()  # SendCommand asked, Dispatched/Unreachable not yet seen
        self.waiting: set[str] = set()  # waiting for their agent (R3)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dispatcher) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def holding(self, counts: dict[ChildStatus, int]) -> int:
        """How many children hold a slot now."""
        return sum(counts.get(s, 0) for s in _HOLDING) + len(self.sending)

    def errors(self, counts: dict[ChildStatus, int]) -> int:
        return sum(counts.get(s, 0) for s in ERROR_STATUSES)

    def check_errors(self, counts: dict[ChildStatus, int]) -> bool:
        """R1: whether dispatching stops now (``stop_reason`` is set when it does)."""
        if self.stop_reason is not None or self.max_errors is None:
            return False
        errors = self.errors(counts)
        if errors <= self.max_errors:
            return False
        limit = self.rollout.max_errors
        shown = f"{limit} = {self.max_errors}" if isinstance(limit, str) else str(limit)
        self.stop_reason = (
            f"error threshold reached: {errors} children ended in error (max_errors {shown})"
        )
        return True

    def undispatched(self) -> Iterator[str]:
        """Every child id queued, waiting, or whose ``SendCommand`` the owner has not carried
        out yet (it finds the child ``SKIPPED`` and sends nothing); may include ids that moved
        on since."""
        while self.queue:
            yield self.queue.popleft()
        yield from sorted(self.sending)
        yield from sorted(self.waiting)

    def next_to_send(self, counts: dict[ChildStatus, int]) -> str | None:
        """R2: the next queued child id to send (``None``: no slot, stopped, or nothing left).

        The caller checks the child is still undispatched and calls ``sent`` for it.
        """
        if self.stop_reason is not None or not self.queue:
            return None
        if self.max_running is not None and self.holding(counts) >= self.max_running:
            return None
        return self.queue.popleft()

    def queued(self, pending: int) -> int:
        """How many ``PENDING`` children wait for a slot (not for their agent)."""
        return max(pending - len(self.waiting) - len(self.sending), 0)
