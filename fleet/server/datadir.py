"""The data directory: created private, and locked for the server's whole life.

One server per data directory: :func:`lock_data_dir` takes ``flock`` on ``<data-dir>/server.lock``
(released by the kernel however the server ends, even SIGKILL) and writes who holds it (pid,
then the listeners once they are bound), so a second ``fleet-server`` on the same directory
can name the running one and exit 2 instead of resuming and finishing the first one's batches.

Everything the server creates in the directory is private: the directory 0700 and every file
0600 (the command texts and their output are in there), by creation mode (``os.open``/``mkdir``
modes and, in ``fleet-server``, a ``0077`` umask), never by a later chmod.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

__all__ = ["LOCK_NAME", "DataDirError", "DataDirLock", "lock_data_dir", "private_file"]

logger = logging.getLogger(__name__)

LOCK_NAME = "server.lock"


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line for the operator."""


class DataDirLock:
    """The held lock of one data directory (see :func:`lock_data_dir`)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd = fd

    def describe(self, text: str) -> None:
        """Say who holds the lock (shown to a second server); best effort."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            data = f"{text}\n".encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Release the lock (idempotent); the file stays, empty."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1


def lock_data_dir(directory: Path) -> DataDirLock:
    """Create ``directory`` (mode 0700) if needed and lock it for this server.

    Raises:
        DataDirError: it cannot be created or opened (missing parent, read-only, not a
            directory, no permission), or another server holds it.
    """
    directory = Path(directory)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise DataDirError(_cannot(directory, error)) from None
    try:
        info = os.stat(directory)
    except OSError as error:
        raise DataDirError(_cannot(directory, error)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"cannot open the data directory {directory}: not a directory")
    lock_path = directory / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise DataDirError(_cannot(directory, error)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirError(_cannot(directory, error)) from None
        who = f" ({holder.splitlines()[0]})" if holder else ""
        raise DataDirError(
            f"another fleet-server{who} is using the data directory {directory}"
        ) from None
    if not os.access(directory, os.W_OK):
        os.close(fd)
        raise DataDirError(f"cannot open the data directory {directory}: it is not writable")
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning(
            "the data directory %s can be read by other users (mode %04o): run chmod 700 %s",
            directory,
            stat.S_IMODE(info.st_mode),
            directory,
        )
    lock = DataDirLock(directory, fd)
    lock.describe(f"pid {os.getpid()}")
    return lock


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (before a library creates it)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _cannot(directory: Path, error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT and not directory.parent.exists():
        reason = f"its parent {directory.parent} does not exist"
    return f"cannot open the data directory {directory}: {reason}"
