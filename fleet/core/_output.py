"""Output bookkeeping without I/O: de-duplication by offset, the log cap, and summaries.

``StreamCursor`` decides which bytes of an incoming chunk belong in a stream's log: chunks that
carry an ``offset`` are trimmed to the part not seen yet (duplicates re-sent after a reconnect
vanish), a gap is reported, and the log stops at its cap. Chunks without an offset come from a
peer that predates the extension and are appended in arrival order.

``OutputSummary`` keeps the last lines of a stream for the API: bytes in, bounded memory, text
out (decoded with replacement for display only; the byte-exact log is the download).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["STREAMS", "Accepted", "OutputSummary", "StreamCursor"]

STREAMS: Final = ("stdout", "stderr")
"""A command's two output streams, by the names the logs, the API and the feed give them."""


@dataclass(frozen=True)
class Accepted:
    """What to do with one chunk: append ``data``; ``gap`` bytes were never received;
    ``truncated`` is true when this chunk reached the cap (the rest was cut)."""

    data: bytes
    gap: int = 0
    truncated: bool = False


_ELLIPSIS = "…".encode()
_MAX_UTF8_TAIL = 3  # continuation bytes after a UTF-8 lead byte


def _char_boundary(data: bytes, limit: int) -> int:
    """Where to cut ``data`` (longer than ``limit``) at most ``limit`` bytes in, without
    splitting a UTF-8 sequence; bytes that are not UTF-8 are cut at ``limit``."""
    cut = limit
    while cut > 0 and limit - cut < _MAX_UTF8_TAIL and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else limit


class StreamCursor:
    """Tracks one output stream's position and cap.

    Args:
        cap: the most bytes the log may hold; later bytes are counted but not kept.
        position: bytes of the stream already accounted for (to resume after a restart).
    """

    def __init__(self, *, cap: int, position: int = 0) -> None:
        if cap < 0 or position < 0:
            raise ValueError("cap and position must not be negative")
        self.cap = cap
        self.position = position  # end of the stream as far as we know it
        self.stored = min(position, cap)
        self.truncated = position > cap

    def accept(self, data: bytes, offset: int | None = None) -> Accepted:
        """Account for a chunk and return the part to append to the log."""
        gap = 0
        if offset is not None:
            if offset + len(data) <= self.position:
                return Accepted(b"")  # wholly a duplicate
            if offset > self.position:
                gap = offset - self.position
                self.position = offset
            else:
                data = data[self.position - offset :]
        self.position += len(data)
        room = max(self.cap - self.stored, 0)
        was_truncated = self.truncated
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.stored += len(data)
        return Accepted(data, gap=gap, truncated=self.truncated and not was_truncated)


class OutputSummary:
    """The last ``max_lines`` lines of a stream, each cut at ``max_line_bytes``.

    Memory stays bounded however long a line or the stream is.
    """

    def __init__(self, *, max_lines: int = 20, max_line_bytes: int = 512) -> None:
        if max_lines < 1 or max_line_bytes < 1:
            raise ValueError("max_lines and max_line_bytes must be positive")
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self._lines: deque[bytes] = deque(maxlen=max_lines)
        self._partial = bytearray()
        self._partial_cut = False

    def feed(self, data: bytes) -> None:
        """Add bytes from the stream.

        Only the tail that can still be kept is looked at: when ``data`` ends more than
        ``max_lines`` lines, everything before its last ``max_lines`` complete lines would be
        pushed out anyway (a 256 KiB chunk of short lines is one ``rindex`` per kept line,
        not a loop over thousands of lines).
        """
        newlines = data.count(b"\n")
        if not newlines:  # part of one line: no split (which copies the chunk)
            self._extend_partial(data)
            return
        if newlines > self.max_lines:
            cut = len(data)
            for _ in range(self.max_lines + 1):
                cut = data.rindex(b"\n", 0, cut)
            data = data[cut + 1 :]
            self._partial.clear()
            self._partial_cut = False
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._extend_partial(piece)
            self._lines.append(self._take_partial())
        self._extend_partial(rest)

    def lines(self) -> list[str]:
        """The kept lines as text (an unfinished last line included)."""
        out = [self._decode(line) for line in self._lines]
        if self._partial or self._partial_cut:
            out.append(self._decode(bytes(self._partial) + (_ELLIPSIS * self._partial_cut)))
        return out[-self.max_lines :]

    @classmethod
    def of(cls, lines: list[str], **kwargs: int) -> OutputSummary:
        """A summary that starts from previously kept ``lines`` (after a restart).

        A line longer than ``max_line_bytes`` is cut the way ``feed`` cuts it; a line this
        summary already cut (ending in the ellipsis) is kept as it is.
        """
        summary = cls(**kwargs)
        limit = summary.max_line_bytes
        for line in lines:
            raw = line.encode("utf-8", "replace")
            already_cut = raw.endswith(_ELLIPSIS) and len(raw) <= limit + len(_ELLIPSIS)
            if len(raw) > limit and not already_cut:
                raw = raw[: _char_boundary(raw, limit)] + _ELLIPSIS
            summary._lines.append(raw)
        return summary

    def _extend_partial(self, piece: bytes) -> None:
        if self._partial_cut:
            return  # the rest of a cut line is dropped
        room = self.max_line_bytes - len(self._partial)
        if len(piece) <= room:
            self._partial += piece
            return
        # Cut, but not inside a UTF-8 sequence (the byte after the cut tells).
        line = bytes(self._partial) + piece[: room + 1]
        self._partial[:] = line[: _char_boundary(line, self.max_line_bytes)]
        self._partial_cut = True

    def _take_partial(self) -> bytes:
        line = bytes(self._partial) + (_ELLIPSIS * self._partial_cut)
        self._partial.clear()
        self._partial_cut = False
        return line

    @staticmethod
    def _decode(line: bytes) -> str:
        return line.rstrip(b"\r").decode("utf-8", "replace")
