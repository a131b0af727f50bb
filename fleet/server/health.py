"""Whether the store can take writes, and why not: disk full, a read-only or lost database, a
store file deleted or replaced under the running server.

A storage fault never crashes the server and never makes a request answer 500: requests that
must write answer 503 ``storage_unavailable`` while the store cannot write, the write-behind
queue keeps its changes (and the agents keep their unacknowledged results) and retries with a
back-off, and everything recovers by itself once the fault is gone. A store file that was deleted
or replaced is different: writing on would put data where no restart finds it, so the server
stops taking writes until it is restarted, and says why.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

import trio

__all__ = ["StorageUnavailable", "StoreHealth", "storage_fault", "watch_store_file"]

logger = logging.getLogger(__name__)

_OS_FAULTS = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EACCES})
_SQLITE_FAULTS = (
    "database or disk is full",
    "disk i/o error",
    "readonly database",
    "unable to open database file",
    "database disk image is malformed",
    "no such table",
)


class StorageUnavailable(Exception):
    """The store cannot take this write now (the HTTP layer answers 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def storage_fault(exc: BaseException) -> str | None:
    """Why ``exc`` means the storage is failing (not the request), or ``None``.

    Pony wraps driver errors (``original_exc``; a failed commit lists them in ``exceptions``,
    e.g. ``CommitException: OperationalError: database or disk is full``); SQLite reports
    faults as ``OperationalError`` text; PostgreSQL through psycopg2 as
    ``OperationalError``/``InterfaceError`` (connection lost, server restarting, disk full on
    its side).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable):
            return current.reason
        if isinstance(current, OSError) and current.errno in _OS_FAULTS:
            return current.strerror or str(current)
        if isinstance(current, sqlite3.Error):
            text = str(current).lower()
            if any(fault in text for fault in _SQLITE_FAULTS):
                return str(current)
        module = type(current).__module__ or ""
        if module.startswith("psycopg2") and type(current).__name__ in (
            "OperationalError",
            "InterfaceError",
            "DiskFull",
        ):
            return (
                str(current).strip().splitlines()[0] if str(current).strip() else "connection lost"
            )
        original = getattr(current, "original_exc", None)
        if not isinstance(original, BaseException):
            # Pony's CommitException/RollbackException (a failed commit) carry what failed as
            # ``exceptions``, a list of (type, value, traceback), and no cause.
            failed = getattr(current, "exceptions", None)
            if isinstance(failed, list) and failed and isinstance(failed[0], tuple):
                original = failed[0][1]
        current = original if isinstance(original, BaseException) else current.__cause__
    return None


class StoreHealth:
    """The store's write health, shared by the write-behind queue and the HTTP layer."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.lost = False  # the store file was deleted or replaced: only a restart helps
        self.failures = 0

    @property
    def ok(self) -> bool:
        return self.reason is None

    def failed(self, reason: str) -> None:
        if self.reason is None:
            logger.error("store: writes are failing: %s (retrying)", reason)
        self.reason = reason if not self.lost else self.reason
        self.failures += 1

    def recovered(self) -> None:
        if self.reason is not None and not self.lost:
            logger.warning("store: writes work again after %d failed attempt(s)", self.failures)
            self.reason = None
            self.failures = 0

    def store_lost(self, reason: str) -> None:
        if not self.lost:
            logger.error("store: %s; no more writes until the server is restarted", reason)
        self.lost = True
        self.reason = reason

    def check_writable(self) -> None:
        """Raise ``StorageUnavailable`` when a write must not even be tried."""
        if self.lost:
            assert self.reason is not None
            raise StorageUnavailable(self.reason)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


async def watch_store_file(path: Path, health: StoreHealth, *, interval_s: float = 2.0) -> None:
    """Notice the SQLite file being deleted or replaced under the running server; returns once
    it was (``os.stat`` of a local file is cheap enough for the trio thread)."""
    opened = _identity(path)
    if opened is None:
        return  # not a file store (PostgreSQL) or not created yet: nothing to watch
    while not health.lost:
        await trio.sleep(interval_s)
        now = _identity(path)
        if now is None:
            health.store_lost(f"the store file {path} was deleted under the running server")
        elif now != opened:
            health.store_lost(f"the store file {path} was replaced under the running server")
