"""Output logs: byte-exact files per child stream, with de-duplication, a cap and a summary.

``<data-dir>/logs/<batch>/<child>.stdout|.stderr``. Writes are small appends to the page cache
made on the trio thread (the agent coalesces output into chunks of up to 256 KiB, so a chunk is
one ``write`` system call); the file is opened on first output and closed when the child ends.
Directories are created mode 0700 and files 0600.
"""

from __future__ import annotations

import codecs
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleet.core import STREAMS, OutputSummary, StreamCursor

# STREAMS is fleet.core's, re-exported for fleet.server.batchrun.
__all__ = ["STREAMS", "LogSink", "Written"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What a chunk added to a log: its bytes at ``offset`` (``truncated``: it hit the cap)."""

    offset: int
    data: bytes
    truncated: bool


class LogSink:
    """One stream of one child: where its bytes go and what the API shows of them."""

    def __init__(
        self,
        path: Path,
        *,
        cap: int,
        summary_lines: int,
        summary: list[str] | None = None,
    ) -> None:
        self.path = path
        position = path.stat().st_size if path.exists() else 0
        self.cursor = StreamCursor(cap=cap, position=position)
        self.summary = (
            OutputSummary.of(summary, max_lines=summary_lines)
            if summary
            else OutputSummary(max_lines=summary_lines)
        )
        self._file: BinaryIO | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stored = position
        self.error: str | None = None  # set when writing the file failed

    @property
    def size(self) -> int:
        """Bytes of the stream seen so far (kept or cut by the cap)."""
        return self.cursor.position

    @property
    def stored(self) -> int:
        """Bytes of the stream that are in the log file (what a download returns)."""
        return self._stored

    @property
    def truncated(self) -> bool:
        return self.cursor.truncated

    def write(self, chunk: bytes, offset: int | None) -> Written | None:
        """Append the new part of ``chunk``; return what was new (``None``: nothing)."""
        start = self.cursor.position
        accepted = self.cursor.accept(chunk, offset)
        if accepted.gap:
            logger.warning(
                "log=%s %s bytes missing before offset %s", self.path, accepted.gap, offset
            )
            start += accepted.gap
        if not accepted.data and not accepted.truncated:
            return None
        if accepted.data:
            self._append(accepted.data)
            self.summary.feed(accepted.data)
        return Written(start, accepted.data, accepted.truncated)

    def _append(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            if self._file is None:
                # Private from creation (SPEC §6): output may hold secrets.
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
                self._file = os.fdopen(fd, "ab", buffering=0)
            written = self._file.write(data)
            self._stored += written or 0
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:  # disk full, permissions: keep serving, say so once
            self.error = (
                f"output from byte {self._stored} on was lost: the log could not be written "
                f"({exc.strerror or exc})"
            )
            logger.error("log=%s %s", self.path, self.error)
            self.close()

    def text(self, written: Written) -> str:
        """``written`` as text for the live feed (UTF-8 with replacement, split characters
        joined across chunks). Call for every chunk while someone watches, else ``skip``."""
        text = self._decoder.decode(written.data)
        if written.truncated:
            text += f"\n[fleet: output beyond {self.cursor.cap} bytes is not kept]\n"
        return text

    def skip(self) -> None:
        """Nobody watches: decoding is saved; a later watcher starts on a fresh decoder."""
        self._decoder.reset()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
