"""Reconnect delays: exponential backoff with jitter."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Reconnect delays: attempt *n* waits ``uniform(0.5, 1) × min(maximum, minimum × 2ⁿ)``.

    The jitter spreads the reconnects of many agents after a server restart.
    """

    def __init__(self, minimum: float, maximum: float, rng: random.Random) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this one)."""
        base = min(self._maximum, self._minimum * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return base * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from ``minimum`` (after a successful handshake)."""
        self._attempt = 0
