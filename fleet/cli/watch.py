"""Following one batch's live feed: the sans-I/O ``BatchWatch`` and the ``follow`` loop.

* ``BatchWatch`` is the state of one batch as the feed describes it. It decides which output is
  new, which is a duplicate, and which bytes were missed (``Gap``) and must be fetched from the
  byte-exact log.
* ``follow`` connects it to the WebSocket (trio-websocket) and reconnects when the server drops a
  slow client (close code 1013) or the connection breaks.

Like ``fleet.cli.client``, it never imports ``fleet.server``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
)

from fleet.core import STREAMS, BatchStatus, ChildStatus

from .client import (
    ApiError,
    BadResponse,
    FleetClient,
    TokenRefused,
    Unreachable,
    connection_problem,
    feed_path,
)
from .feedsocket import open_feed

__all__ = [
    "FINAL_BATCH",
    "TERMINAL_CHILD",
    "BatchWatch",
    "Chunk",
    "Ended",
    "Gap",
    "Item",
    "WatchedChild",
    "fill_gaps",
    "follow",
]

#: The batch statuses after which nothing changes (the feed's statuses are plain strings).
FINAL_BATCH = frozenset(status.value for status in BatchStatus if status.is_terminal)
#: The task statuses after which a task's output is complete.
TERMINAL_CHILD = frozenset(status.value for status in ChildStatus if status.is_terminal)
#: The feed gives up after this many consecutive failed (re)connections.
FEED_ATTEMPTS = 6
CLOSE_TRY_AGAIN = 1013  # the server dropped us for falling behind: reconnect at once
CLOSE_POLICY = 1008  # the server refused the subscription (no such batch)


@dataclass(frozen=True)
class Chunk:
    """Output to show: ``text`` of one task's stream."""

    child_id: str
    stream: str
    text: str


@dataclass(frozen=True)
class Gap:
    """Bytes ``[start, end)`` of a stream that the feed did not carry; fetch them from the log."""

    child_id: str
    stream: str
    start: int
    end: int


@dataclass(frozen=True)
class Ended:
    """The task reached a terminal status: all of its output has been shown."""

    child_id: str


Item = Chunk | Gap | Ended


@dataclass
class WatchedChild:
    """One task as the client knows it."""

    child_id: str
    vps_id: int
    name: str
    status: str = "PENDING"
    exit_code: int | None = None
    error_message: str | None = None
    #: ``{status, exit_code, at}``: what the agent reported after the server ended the child.
    agent_reported: dict[str, Any] | None = None
    started_at: str | None = None
    completed_at: str | None = None
    ended: bool = False
    #: Bytes of each stream shown so far. Exact after a ``Gap`` is filled; otherwise
    #: ``offset + len(text.encode())`` of the last chunk, which overshoots a little where the
    #: output was not UTF-8 (so a resync may skip a few bytes, but never repeats any).
    shown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    #: Per connection: output below these offsets came with the snapshot, so it is not new.
    floor: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_CHILD

    def update(self, fields: dict[str, Any]) -> None:
        self.status = str(fields.get("status", self.status))
        self.exit_code = fields.get("exit_code", self.exit_code)
        self.error_message = fields.get("error_message", self.error_message)
        self.agent_reported = fields.get("agent_reported", self.agent_reported)
        self.started_at = fields.get("agent_started_at", self.started_at)
        self.completed_at = fields.get("agent_completed_at", self.completed_at)


class BatchWatch:
    """The state of one batch as the live feed tells it; no I/O.

    Feed every message to ``on_message``; it returns what to show: ``Chunk`` output, ``Gap``
    (bytes to fetch from the log and pass to ``fill``, which returns the ``Chunk``), and
    ``Ended`` when a task is over. A ``SNAPSHOT`` (the first message of each connection) starts
    the connection over: output produced before it, or while disconnected, comes back as gaps,
    so nothing is lost and nothing is shown twice.

    Args:
        batch_id: the batch to watch.
        output: False to track statuses only (no chunks, no gaps).
    """

    def __init__(self, batch_id: str, *, output: bool = True) -> None:
        self.batch_id = batch_id
        self.output = output
        self.status: str | None = None
        self.children: dict[str, WatchedChild] = {}

    @property
    def final(self) -> bool:
        return self.status in FINAL_BATCH

    def counts(self) -> tuple[int, int, int]:
        """``(done, failed, running)`` task counts."""
        done = failed = 0
        for child in self.children.values():
            if child.terminal:
                done += 1
                failed += child.status != ChildStatus.SUCCESS
        return done, failed, len(self.children) - done

    def waiting(self) -> tuple[int, int]:
        """``(queued, skipped)``: tasks not dispatched yet (rollout), and never dispatched."""
        queued = sum(1 for c in self.children.values() if c.status == ChildStatus.PENDING)
        skipped = sum(1 for c in self.children.values() if c.status == ChildStatus.SKIPPED)
        return queued, skipped

    def on_message(self, message: dict[str, Any]) -> list[Item]:
        kind = message.get("type")
        if kind == "SNAPSHOT":
            return self.on_snapshot(message.get("batch") or {})
        if kind == "BATCH_TASK_UPDATE":
            self.status = str(message.get("overall_status", self.status))
            return []
        if kind == "CHILD_TASK_UPDATE":
            child = self.children.get(str(message.get("child_command_id")))
            if child is None:
                return []
            child.update(message)
            return self._ended(child)
        if kind == "NEW_LOG_OUTPUT":
            return self._log(message)
        return []  # an event this client does not know: ignore it

    def on_snapshot(self, batch: dict[str, Any]) -> list[Item]:
        """Start over from the batch's full state (also fine with a final ``GET`` body)."""
        self.status = str(batch.get("overall_status", self.status))
        items: list[Item] = []
        for task in batch.get("tasks", []):
            child_id = str(task["child_command_id"])
            child = self.children.get(child_id)
            if child is None:
                child = WatchedChild(child_id, int(task["vps_id"]), str(task["vps_name"]))
                self.children[child_id] = child
            child.update(task)
            for stream in STREAMS:
                size = int(task.get(f"{stream}_bytes") or 0)
                child.floor[stream] = size
                if self.output and size > child.shown[stream]:
                    items.append(Gap(child_id, stream, child.shown[stream], size))
                child.shown[stream] = min(child.shown[stream], size)
        for child in self.children.values():
            items += self._ended(child)
        return items

    def fill(self, gap: Gap, data: bytes) -> Chunk:
        """The output of ``gap`` once its bytes were fetched (at most ``gap.end - gap.start``)."""
        data = data[: gap.end - gap.start]
        child = self.children[gap.child_id]
        child.shown[gap.stream] = max(child.shown[gap.stream], gap.start + len(data))
        return Chunk(gap.child_id, gap.stream, data.decode("utf-8", "replace"))

    def _log(self, message: dict[str, Any]) -> list[Item]:
        child = self.children.get(str(message.get("child_command_id")))
        stream = message.get("stream")
        if not self.output or child is None or stream not in STREAMS:
            return []
        text = str(message.get("data", ""))
        offset = int(message.get("offset") or 0)
        encoded = text.encode("utf-8", "surrogatepass")
        below = child.floor[stream] - offset
        if below >= len(encoded):
            return []  # already part of this connection's snapshot
        if below > 0:
            text = encoded[below:].decode("utf-8", "replace")
        child.shown[stream] = max(child.shown[stream], offset + len(encoded))
        return [Chunk(child.child_id, stream, text)] if text else []

    def _ended(self, child: WatchedChild) -> list[Item]:
        if child.terminal and not child.ended:
            child.ended = True
            return [Ended(child.child_id)]
        return []


async def follow(
    client: FleetClient,
    watch: BatchWatch,
    show: Callable[[Iterable[Item]], None],
) -> None:
    """Follow the batch's live feed until its status is final.

    Every message's items go to ``show`` (gaps already filled). A connection the server closes
    with 1013 is reopened at once; other failures are retried with a growing delay and give up
    after ``FEED_ATTEMPTS`` in a row. Cancelling closes the WebSocket.

    Raises:
        TokenRefused, ApiError (404: no such batch), Unreachable, BadResponse.
    """
    url = client.ws_url(feed_path(watch.batch_id))
    failures = 0
    while not watch.final:
        try:
            async with open_feed(
                url,
                client.ws_ssl,
                extra_headers=client.ws_headers,
                connect_timeout=30,
                disconnect_timeout=5,
            ) as ws:
                while not watch.final:
                    raw = await ws.get_message()
                    try:
                        message = json.loads(raw)
                    except ValueError as exc:
                        raise BadResponse("the live feed sent something that is not JSON") from exc
                    items = watch.on_message(message)
                    failures = 0
                    show(await fill_gaps(client, watch, items))
            return
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason is not None else None
            if code == CLOSE_POLICY:
                raise ApiError(404, "not_found", f"no batch with id {watch.batch_id}") from None
            if code == CLOSE_TRY_AGAIN:
                continue
            failures += 1
            why = f"closed with code {code}"
        except ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise TokenRefused() from None
            if 400 <= exc.status_code < 500:
                raise ApiError(
                    exc.status_code, "rejected", f"the live feed refused: {url}"
                ) from None
            failures += 1
            why = f"HTTP {exc.status_code}"
        except HandshakeError as exc:  # no connection (trio-websocket wraps the OSError)
            failures += 1
            why = connection_problem(exc.__cause__ or exc)
        if watch.final:  # the socket failed while closing, after the end: nothing is missing
            return
        if failures >= FEED_ATTEMPTS:
            raise Unreachable(f"lost the live feed from {client.url} ({why})")
        await trio.sleep(min(0.25 * 2**failures, 5.0))


async def fill_gaps(client: FleetClient, watch: BatchWatch, items: list[Item]) -> list[Item]:
    """``items`` with every ``Gap`` fetched from its log and turned into a ``Chunk``."""
    filled: list[Item] = []
    for item in items:
        if isinstance(item, Gap):
            data = await client.output(watch.batch_id, item.child_id, item.stream, start=item.start)
            filled.append(watch.fill(item, data))
        else:
            filled.append(item)
    return filled
