"""Failed-login throttling: 10 failures for one username or one address within
5 minutes, and further attempts for it are answered 429 until the oldest failure ages out.

Each key (``user:<name>``, ``addr:<ip>``) keeps the times of its recent failures; a success
clears the username's (never the address's: one account's password must not unlock guessing at
the others from the same address). Memory is bounded: at most ``max_keys`` keys, the stalest
dropped first. The clock is injected (``trio.current_time`` in the server), so tests run on a
virtual clock. Per server process: in a cluster, each node counts its own.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    """Counts failed logins per username and per address in a sliding window."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        limit: int = 10,
        window_s: float = 300.0,
        max_keys: int = 100_000,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window_s
        self._max_keys = max_keys
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    @staticmethod
    def _keys(username: str | None, address: str | None) -> list[str]:
        keys = [f"addr:{address or '?'}"]
        if username is not None:
            keys.append(f"user:{username}")
        return keys

    def _recent(self, key: str, now: float) -> collections.deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, username: str | None, address: str | None) -> float | None:
        """Seconds until a login may be tried again, or ``None`` when it may be tried now."""
        now = self._clock()
        waits = []
        for key in self._keys(username, address):
            times = self._recent(key, now)
            if times is not None and len(times) >= self._limit:
                waits.append(times[-self._limit] + self._window - now)
        return max(waits) if waits else None

    def failed(self, username: str | None, address: str | None) -> None:
        now = self._clock()
        for key in self._keys(username, address):
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = collections.deque(maxlen=self._limit)
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        self._failures.pop(f"user:{username}", None)
