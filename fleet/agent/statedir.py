"""The agent's state directory: its lock and the journal file (format: ``fleet.agent.journal``).

:class:`Journal` is synchronous and thread-safe (no trio): the agent calls its fsyncing methods
(``accept``, ``finish``) from a worker thread and the cheap ones (``started``, ``acknowledge``:
one ``write()`` each) from the event loop. Files are created mode 0600 and the directory 0700
(``os.open``/``os.mkdir`` modes, never a later chmod); a directory that group or others can
reach is refused, since whoever can write the journal could make the agent signal processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .journal import (
    COMPACT_SLACK_BYTES,
    JournalState,
    ProcessInfo,
    StoredResult,
    encode,
    process_record,
    replay,
    result_record,
)

__all__ = ["FILE_NAME", "LOCK_NAME", "Journal", "JournalError"]

logger = logging.getLogger(__name__)

FILE_NAME = "journal"
LOCK_NAME = "lock"


class JournalError(Exception):
    """The state directory cannot be used; the message is one line for the operator."""


class Journal:
    """The journal of one agent in its state directory (see the module docstring).

    Resource handling: holds the state directory's lock (``flock`` on ``<dir>/lock``, so two
    agents never share a directory) and an append file descriptor until :meth:`close`.

    Args:
        directory: the state directory; created mode 0700 if missing (its parent must exist).
            None keeps the journal in memory only (``durable`` is False): it still refuses a
            re-delivered id, but a restarted agent remembers nothing, so ``complete`` is False.
        max_results: unacknowledged results kept (see :meth:`finish`).
    """

    def __init__(self, directory: Path | None, *, max_results: int = 1000) -> None:
        self.durable = directory is not None
        self.directory = Path(directory or ".")
        self.path = self.directory / FILE_NAME
        self._max_results = max_results
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._fd = -1
        self._size = 0
        self._snapshot_size = 0
        self._damaged = False
        self.state = JournalState()
        #: A corrupt file set aside while opening (None if there was none).
        self.set_aside: Path | None = None
        #: True if the last record was torn (and ignored) when opening.
        self.torn = False

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> JournalState:
        """Lock the directory, read the journal, compact it; return the state found.

        Raises:
            JournalError: the directory cannot be created, is unsafe (not ours, or accessible
                by group or others), or another agent uses it.
        """
        if not self.durable:
            return self.state
        self._prepare_directory()
        self._take_lock()
        try:
            data = self._read()
            outcome = replay(data)
            self.state = outcome.state
            self.torn = outcome.torn
            if outcome.bad_lines:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                self.set_aside = self.path.with_name(f"{FILE_NAME}.corrupt-{stamp}")
                os.replace(self.path, self.set_aside)
                logger.warning(
                    "journal %s is corrupt (%d bad record(s)); set aside as %s, kept %d "
                    "command(s) that still read correctly",
                    self.path,
                    outcome.bad_lines,
                    self.set_aside,
                    len(self.state.open),
                )
            self._compact()
        except JournalError:
            self.close()
            raise
        except OSError as error:
            self.close()
            raise JournalError(f"cannot use the journal {self.path}: {_reason(error)}") from None
        return self.state

    def close(self) -> None:
        """Close the file and release the directory's lock (idempotent)."""
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._lock_fd = -1

    @property
    def complete(self) -> bool:
        """True if this journal knows every command accepted and not yet acknowledged."""
        return self.durable and self.state.complete

    # -- what the agent records ----------------------------------------------------------------

    def accept(self, command_id: str) -> None:
        """Record an accepted command, durably (call before its process starts). Raises OSError."""
        with self._lock:
            self.state.apply({"t": "a", "id": command_id})
            pending = self._append({"t": "a", "id": command_id}, sync=True)
        _sync(pending)

    def started(self, command_id: str, process: ProcessInfo) -> None:
        """Record the command's process (not fsynced: see the module docstring)."""
        with self._lock:
            record = process_record(command_id, process)
            self.state.apply(record)
            self._append(record, sync=False)

    def finish(self, command_id: str, result: StoredResult) -> list[str]:
        """Record a final result durably; returns ids dropped because of ``max_results``.

        Raises OSError (the result is still kept in memory).
        """
        with self._lock:
            record = result_record(command_id, result)
            self.state.apply(record)
            dropped = self._over_cap()
            for old in dropped:
                self.state.apply({"t": "d", "id": old})
            extra = [{"t": "d", "id": old} for old in dropped]
            pending = self._append(record, sync=True, extra=extra)
        _sync(pending)
        return dropped

    def acknowledge(self, command_id: str) -> None:
        """The server stored the result: forget the command (not fsynced)."""
        with self._lock:
            if command_id not in self.state.open:
                return
            self.state.apply({"t": "k", "id": command_id})
            self._append({"t": "k", "id": command_id}, sync=False)

    def ran(self, command_id: str) -> bool:
        """True if the command was accepted before (open, or forgotten recently)."""
        return command_id in self.state.open or command_id in self.state.done

    def size(self) -> int:
        """Bytes in the journal file now."""
        return self._size

    # -- internals -----------------------------------------------------------------------------

    def _over_cap(self) -> list[str]:
        finished = [i for i, entry in self.state.open.items() if entry.result is not None]
        return finished[: max(0, len(finished) - self._max_results)]

    def _append(
        self, record: dict[str, Any], *, sync: bool, extra: Sequence[dict[str, Any]] = ()
    ) -> int:
        """Append records already applied to the state. Raises OSError.

        Returns a descriptor for the caller to fsync *after* releasing the lock (then close),
        or -1 when nothing is left to sync. Syncing outside the lock lets the fsyncs of
        concurrent commands overlap (the filesystem commits them together); a compaction
        meanwhile is harmless, since the new file holds the record and is fsynced itself.

        After a failed write the file may end in a partial record, so the next append rewrites
        the whole file from the state instead (which also recovers once space returns).
        """
        if not self.durable:
            return -1
        if self._fd < 0:
            raise OSError(errno.EBADF, "the journal is closed")
        if self._damaged:
            self._compact()
            return -1
        data = encode(record) + b"".join(encode(item) for item in extra)
        self._damaged = True
        written = os.write(self._fd, data)
        self._size += written
        if written != len(data):
            raise OSError(errno.ENOSPC, "short write to the journal")
        self._damaged = False
        if self._size > 2 * self._snapshot_size + COMPACT_SLACK_BYTES:
            self._compact()  # fsyncs the new file
        elif sync:
            return os.dup(self._fd)
        return -1

    def _compact(self) -> None:
        data = b"".join(encode(record) for record in self.state.snapshot())
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_directory(self.directory)
        new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = new_fd
        self._size = self._snapshot_size = len(data)
        self._damaged = False

    def _read(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return b""
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise JournalError(f"{self.path} is not a regular file owned by this user")
            return file.read()

    def _prepare_directory(self) -> None:
        directory = self.directory
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise JournalError(
                f"cannot create the state directory {directory}: {_reason(error)}"
            ) from None
        try:
            info = os.stat(directory)
        except OSError as error:
            raise JournalError(
                f"cannot use the state directory {directory}: {_reason(error)}"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise JournalError(f"the state directory {directory} is not a directory")
        if info.st_uid != os.geteuid():
            raise JournalError(f"the state directory {directory} is not owned by this user")
        if info.st_mode & 0o077:
            raise JournalError(
                f"the state directory {directory} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 700 {directory}"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise JournalError(f"the state directory {directory} is not writable")

    def _take_lock(self) -> None:
        lock_path = self.directory / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise JournalError(f"cannot open {lock_path}: {_reason(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise JournalError(
                f"another fleet-agent{who} uses the state directory {self.directory}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd


def _sync(fd: int) -> None:
    """fsync and close a descriptor ``_append`` returned (nothing for -1)."""
    if fd < 0:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
