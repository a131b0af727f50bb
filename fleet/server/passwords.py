"""Password hashing with argon2id (``argon2-cffi``), off the trio thread.

Hashing is deliberately slow and memory-hard (64 MiB, 3 passes by default), so it runs in a
worker thread, at most ``concurrency`` at once: a flood of logins queues instead of exhausting
memory. Verifying a login for a user that does not exist (or has no password) still costs one
verification against a dummy hash, so the answer's timing does not tell which usernames exist.
"""

from __future__ import annotations

import trio
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["Passwords"]


class Passwords:
    """argon2id hashing and verification (async; each call runs in a worker thread)."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536, concurrency: int = 2):
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        self._limiter = trio.CapacityLimiter(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (``None``: no password; always ``False``)."""
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash("not a password of anyone")
            await trio.to_thread.run_sync(self._check, self._dummy, password, limiter=self._limiter)
            return False
        return await trio.to_thread.run_sync(self._check, stored, password, limiter=self._limiter)

    def needs_rehash(self, stored: str) -> bool:
        """The hash was made with other parameters than today's (re-hash after a login)."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return True

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
