"""The live feed hub: bounded per-subscriber queues, never blocking the publisher.

Each subscriber gets a queue bounded in bytes. ``publish`` is synchronous and O(subscribers):
when a subscriber's queue is full, the subscriber is marked *overrun* and receives nothing
more; its WebSocket handler then closes the socket with code 1013 ("try again later") so the
client reconnects and starts over from a fresh snapshot. A stuck client therefore costs at most
its bound, and never slows a batch.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

__all__ = ["FeedHub", "Overrun", "Subscription", "encode"]


def encode(event: dict[str, Any]) -> str:
    """An event as its WebSocket message (compact JSON)."""
    return json.dumps(event, separators=(",", ":"))


class Overrun(Exception):
    """The subscriber fell too far behind; resynchronise from a new snapshot."""


class Subscription:
    """One subscriber's queue of encoded events."""

    def __init__(
        self, limit_bytes: int, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        self.accept = accept
        self._items: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._limit = limit_bytes
        self._event = trio.Event()
        self.overrun = False

    def put(self, text: str) -> None:
        if self.overrun:
            return
        if self._bytes + len(text) > self._limit and self._items:
            self.overrun = True
            self._items.clear()
            self._bytes = 0
        else:
            self._items.append(text)
            self._bytes += len(text)
        self._event.set()

    async def get(self) -> list[str]:
        """Wait for events; return everything queued (raises ``Overrun`` when overrun)."""
        while not self._items and not self.overrun:
            await self._event.wait()
            self._event = trio.Event()
        if self.overrun:
            raise Overrun()
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        return items

    @property
    def queued_bytes(self) -> int:
        return self._bytes


class FeedHub:
    """Topic (a batch id, or ``"vps"``) → subscribers. Implements the supervisor's Publisher."""

    def __init__(self, *, limit_bytes: int = 4 * 1024 * 1024) -> None:
        self._topics: dict[str, set[Subscription]] = {}
        self._limit = limit_bytes

    @contextmanager
    def subscribe(
        self, topic: str, *, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> Iterator[Subscription]:
        """A subscription to ``topic``; ``accept`` (if given) picks the events it receives."""
        sub = Subscription(self._limit, accept)
        self._topics.setdefault(topic, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._topics.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._topics[topic]

    def has_subscribers(self, topic: str) -> bool:
        return topic in self._topics

    def subscriber_count(self) -> int:
        """Subscribers of every topic (for the metrics)."""
        return sum(len(subs) for subs in self._topics.values())

    def publish(self, topic: str, event: dict[str, Any], *, text: str | None = None) -> None:
        """Queue ``event`` for ``topic``'s subscribers; ``text``: its ``encode``, if the caller
        has it already."""
        subs = self._topics.get(topic)
        if not subs:
            return
        if text is None:
            text = encode(event)
        for sub in subs:
            if sub.accept is None or sub.accept(event):
                sub.put(text)
