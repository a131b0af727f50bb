"""The cluster bus: one OS thread with its own PostgreSQL connection, LISTENing and writing.

psycopg2 is synchronous, so, like the DB thread, a dedicated thread owns the connection. It
sleeps in ``select()`` on the connection and a wake-up pipe; each time it wakes it

1. writes what the trio thread queued (presence, dispatch rows, feed events, output chunks,
   rows handled) in one transaction, and NOTIFYs: one commit per wake, however much was queued;
2. runs queued calls (``Bus.call``: lease, adoption, reads for the API);
3. reads what notifications announced (its dispatch rows, presence rows, feed events) and hands
   it to the trio thread in one ``Inbound`` through the trio token.

Reports from agents held here are addressed to their batch's owner in this thread: command id
→ (VPS, batch, owner) read in bulk and cached until a node's batches are adopted.

Any database error stops the bus and is raised in the trio thread (``Bus.run``): the node stops,
its lease lapses and another node adopts its batches (the same path as a crash).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import outcome
import trio

from . import sql

__all__ = ["Bus", "ClusterError", "Inbound", "LeaseLost", "Report"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_CACHE_MAX = 200_000
#: After a write, the next waits this long for what else arrives: a burst shares one commit and
#: one notification instead of a transaction per message (the first after a quiet spell goes at
#: once).
GATHER_S = 0.005


class ClusterError(Exception):
    """This node cannot stay in the cluster."""


class LeaseLost(ClusterError):
    """This node's lease was taken over: it was declared dead and must stop."""


@dataclasses.dataclass(frozen=True)
class Report:
    """An agent's report received here: ``payload`` is a serialized ``MessageToServer``."""

    vps_id: int
    command_id: str
    payload: bytes
    is_result: bool


@dataclasses.dataclass
class Inbound:
    """What arrived for this node since the last hand-over."""

    dispatch: list[sql.Dispatch] = dataclasses.field(default_factory=list)
    presence: list[sql.Presence] = dataclasses.field(default_factory=list)
    feed: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    #: Reports no other node owns (unknown commands, or batches this node owns).
    unrouted: list[Report] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dispatch or self.presence or self.feed or self.unrouted)


class Bus:
    """The node's link to the cluster; start it with ``open`` and run ``run`` in a nursery.

    The ``post_*`` methods never block (the trio thread queues; the bus thread writes).
    """

    def __init__(self, connect_args: dict[str, Any], name: str) -> None:
        self._args = connect_args
        self.name = name
        self._channel = sql.channel(name)
        self._calls: collections.deque[tuple[Callable[[Any], Any], Callable[..., None]]] = (
            collections.deque()
        )
        self._presence: collections.deque[tuple[int, frozenset[str] | None, bool]] = (
            collections.deque()
        )
        self._messages: collections.deque[tuple[str, str, int, str | None, bytes]] = (
            collections.deque()
        )
        self._reports: collections.deque[Report] = collections.deque()
        self._feed: collections.deque[tuple[str, str]] = collections.deque()
        self._chunks: collections.deque[tuple[str, str, int, bytes]] = collections.deque()
        self._handled: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._owners: dict[str, tuple[int, str, str | None]] = {}
        self._handed: set[int] = set()  # dispatch ids given to trio, not yet deleted
        self._failed = trio.Event()
        self._exited = trio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._deliver: Callable[[Inbound], None] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._lease: tuple[str, float] | None = None
        self._renew_at = 0.0

    # --- trio side ---------------------------------------------------------------------------

    async def open(self, deliver: Callable[[Inbound], None]) -> None:
        """Connect, create the tables, LISTEN; then hand every ``Inbound`` to ``deliver`` (on
        the trio thread). Raises the connection error, if any."""
        self._deliver = deliver
        self._token = trio.lowlevel.current_trio_token()
        opened = trio.Event()
        result: list[outcome.Outcome[None]] = []

        def on_open(value: outcome.Outcome[None]) -> None:
            result.append(value)
            opened.set()

        self._thread = threading.Thread(
            target=self._main, args=(on_open,), name="fleet-cluster-bus", daemon=True
        )
        self._thread.start()
        with trio.CancelScope(shield=True):
            await opened.wait()
        result[0].unwrap()

    async def run(self) -> None:
        """Wait until the bus fails (raise its error) or is cancelled (stop the thread)."""
        try:
            await self._failed.wait()
            assert self._error is not None
            raise self._error
        finally:
            self._stopping = True
            self._wake()
            # The pipe is closed once the thread is done with it (never under its feet).
            with trio.move_on_after(10, shield=True):
                await self._exited.wait()
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    async def call_once(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(cursor, *args)`` on a connection of its own, in a worker thread (for when the
        bus thread is gone: the node stops). Raises the database's error."""

        def run() -> T:
            import psycopg2  # type: ignore[import-untyped,unused-ignore]

            conn = psycopg2.connect(**self._args)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    return fn(cur, *args)
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(cursor, *args)`` in the bus thread (after what is queued) and return."""
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []
        token = trio.lowlevel.current_trio_token()

        def deliver(value: outcome.Outcome[T]) -> None:
            box.append(value)
            done.set()

        self._calls.append(
            (lambda cur: fn(cur, *args), lambda value: token.run_sync_soon(deliver, value))
        )
        self._wake()
        await done.wait()
        return box[0].unwrap()

    def post_presence(self, vps_id: int, open_ids: frozenset[str] | None, connected: bool) -> None:
        self._presence.append((vps_id, open_ids, connected))
        self._wake()

    def post_message(
        self, node: str, kind: str, vps_id: int, batch_id: str | None, payload: bytes
    ) -> None:
        self._messages.append((node, kind, vps_id, batch_id, payload))
        self._wake()

    def post_report(self, report: Report) -> None:
        self._reports.append(report)
        self._wake()

    def post_feed(self, batch_id: str, event: str) -> None:
        self._feed.append((batch_id, event))
        self._wake()

    def post_chunk(self, child_id: str, stream: str, offset: int, data: bytes) -> None:
        self._chunks.append((child_id, stream, offset, data))
        self._wake()

    def post_handled(self, ids: list[int]) -> None:
        self._handled.extend(ids)
        self._wake()

    def _wake(self) -> None:
        if self._closed:
            return
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the thread is awake anyway

    # --- the bus thread ----------------------------------------------------------------------

    def _main(self, on_open: Callable[[outcome.Outcome[None]], None]) -> None:
        import psycopg2  # type: ignore[import-untyped,unused-ignore]

        token = self._token
        assert token is not None
        try:
            conn = psycopg2.connect(**self._args)
            conn.autocommit = True
            cur = conn.cursor()
            sql.ensure_schema(cur)
            for chan in (
                self._channel,
                sql.PRESENCE_CHANNEL,
                sql.FEED_CHANNEL,
                sql.ADOPTED_CHANNEL,
            ):
                cur.execute(f'LISTEN "{chan}"')
        except BaseException as exc:
            token.run_sync_soon(on_open, outcome.Error(exc))
            return
        token.run_sync_soon(on_open, outcome.Value(None))
        try:
            self._loop(conn, cur, token)
        except BaseException as exc:
            if isinstance(exc, LeaseLost):
                logger.error("%s", exc)
            else:
                logger.exception("cluster bus failed")
            self._error = exc
            try:
                token.run_sync_soon(self._failed.set)
            except trio.RunFinishedError:  # pragma: no cover - the server is gone already
                pass
        finally:
            conn.close()
            try:
                token.run_sync_soon(self._exited.set)
            except trio.RunFinishedError:  # pragma: no cover - the server is gone already
                pass

    def keep_lease(self, incarnation: str, lease_s: float) -> None:
        """Renew this node's lease from now on, every quarter lease, in the bus thread (a busy
        trio thread never loses it); losing it (the node was declared dead) stops the bus."""
        self._lease = (incarnation, lease_s)
        self._wake()

    def _renew(self, cur: Any) -> None:
        if self._lease is None or time.monotonic() < self._renew_at:
            return
        incarnation, lease_s = self._lease
        if not sql.renew(cur, self.name, incarnation, lease_s):
            raise LeaseLost(
                f"node {self.name}: its lease lapsed and its batches were adopted; stopping"
            )
        self._renew_at = time.monotonic() + lease_s / 4

    def _loop(self, conn: Any, cur: Any, token: trio.lowlevel.TrioToken) -> None:
        dispatch_pending = True  # rows may wait from before this start
        pushed_at = -math.inf
        while True:
            self._renew(cur)
            if not conn.notifies and not self._queued() and not dispatch_pending:
                if self._stopping:
                    return
                wait = max(0.0, self._renew_at - time.monotonic()) if self._lease else 5.0
                select.select([conn, self._wake_r], [], [], min(wait, 5.0))
            if (gather := pushed_at + GATHER_S - time.monotonic()) > 0 and not self._stopping:
                time.sleep(gather)
            pushed_at = time.monotonic()
            try:
                os.read(self._wake_r, 65536)
            except BlockingIOError:
                pass  # nothing to drain
            conn.poll()
            inbound = Inbound()
            self._push(cur, inbound)
            while self._calls:
                fn, reply = self._calls.popleft()
                reply(outcome.capture(fn, cur))
            conn.poll()
            notes = list(conn.notifies)
            conn.notifies.clear()
            presence: set[int] = set()
            for note in notes:
                if note.channel == self._channel:
                    dispatch_pending = True
                elif note.channel == sql.PRESENCE_CHANNEL:
                    presence.update(int(part) for part in note.payload.split(",") if part)
                elif note.channel == sql.FEED_CHANNEL:
                    first, _, last = note.payload.partition(":")
                    inbound.feed.extend(sql.fetch_feed(cur, self.name, int(first), int(last)))
                elif note.channel == sql.ADOPTED_CHANNEL:
                    self._owners.clear()
            if presence:
                inbound.presence = sql.fetch_presence(cur, sorted(presence))
            if dispatch_pending:
                dispatch_pending = False
                rows = sql.fetch_dispatch(cur, self.name, list(self._handed))
                self._handed.update(row.id for row in rows)
                inbound.dispatch = rows
            if inbound and self._deliver is not None:
                token.run_sync_soon(self._deliver, inbound)

    def _queued(self) -> bool:
        return bool(
            self._calls
            or self._presence
            or self._messages
            or self._reports
            or self._feed
            or self._chunks
            or self._handled
        )

    def _push(self, cur: Any, inbound: Inbound) -> None:
        """Write everything queued in one transaction (reports addressed to their owner)."""
        presence = _drain(self._presence)
        messages = _drain(self._messages)
        reports = _drain(self._reports)
        feed = _drain(self._feed)
        chunks = _drain(self._chunks)
        handled = _drain(self._handled)
        if reports:
            missing = sorted({r.command_id for r in reports if r.command_id not in self._owners})
            if missing:
                if len(self._owners) > _CACHE_MAX:
                    self._owners.clear()
                self._owners.update(sql.owners(cur, missing))
            for report in reports:
                owner = self._owners.get(report.command_id)
                if owner is not None and owner[0] != report.vps_id:
                    logger.warning(
                        "vps=%s reported on command %s of another VPS: dropped",
                        report.vps_id,
                        report.command_id,
                    )
                elif owner is None or owner[2] is None or owner[2] == self.name:
                    inbound.unrouted.append(report)
                else:
                    messages.append((owner[2], "report", report.vps_id, owner[1], report.payload))
        self._handed.difference_update(handled)
        if presence or messages or feed or chunks or handled:
            sql.push(
                cur,
                self.name,
                presence=presence,
                messages=messages,
                feed=feed,
                chunks=chunks,
                handled=handled,
            )


def _drain(queue: collections.deque[T]) -> list[T]:
    out = []
    while queue:
        out.append(queue.popleft())
    return out
