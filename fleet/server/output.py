"""A batch's output: one ``LogSink`` per child stream, what changed since the last flush, and
the output facts the API shows (summaries, byte counts, truncation, lost output).

Sinks are opened at a stream's first chunk and closed when the child ends; a chunk that arrives
after the end (re-sent by an agent that was away) opens the sink again, so the log is complete.
Everything here is synchronous and runs on the trio thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fleet.core import STREAMS

from .logs import LogSink, Written
from .store import ChildRecord

__all__ = ["BatchOutput"]


class BatchOutput:
    """The logs of one batch's children.

    Args:
        records: the children as stored (log paths, and what an earlier run already stored).
        cap: bytes kept per stream (the rest is counted and cut).
        summary_lines: lines kept in each stream's summary.
    """

    def __init__(self, records: Iterable[ChildRecord], *, cap: int, summary_lines: int) -> None:
        self._records = {r.id: r for r in records}
        self._cap = cap
        self._summary_lines = summary_lines
        self._sinks: dict[tuple[str, str], LogSink] = {}
        self._dirty: set[str] = set()  # children whose output facts are not yet recorded

    def write(self, child_id: str, stream: str, chunk: bytes, offset: int | None) -> Written | None:
        """Append a chunk to its log (duplicates dropped by offset); what was new, or ``None``."""
        sink = self._sink(child_id, stream)
        written = sink.write(chunk, offset)
        if written is not None or sink.error:
            self._dirty.add(child_id)
        return written

    def text(self, child_id: str, stream: str, written: Written) -> str:
        """A written chunk as text for live watchers (call for every chunk while watched)."""
        return self._sinks[(child_id, stream)].text(written)

    def unwatched(self, child_id: str, stream: str) -> None:
        """Nobody watched this chunk: the text decoder starts afresh for a later watcher."""
        self._sinks[(child_id, stream)].skip()

    def fields(self, child_id: str, *, summaries: bool = True) -> dict[str, Any]:
        """The child's output facts: from its open logs, else as stored (``summaries=False``
        keeps the stored summaries, which saves decoding lines nobody will read)."""
        record = self._records[child_id]
        fields: dict[str, Any] = {
            "stdout_summary": record.stdout_summary,
            "stderr_summary": record.stderr_summary,
            "stdout_bytes": record.stdout_bytes,
            "stderr_bytes": record.stderr_bytes,
            "truncated": record.truncated,
        }
        for stream in STREAMS:
            sink = self._sinks.get((child_id, stream))
            if sink is not None:
                if summaries:
                    fields[f"{stream}_summary"] = tuple(sink.summary.lines())
                # Bytes the agent produced (the cap cuts the log, the count goes on), but only
                # what is in the log once writing it failed: a count never claims lost bytes.
                fields[f"{stream}_bytes"] = sink.stored if sink.error else sink.size
                fields["truncated"] = fields["truncated"] or sink.truncated or bool(sink.error)
        return fields

    def loss(self, child_id: str) -> str | None:
        """Why output of this child was lost (a log that could not be written), or ``None``."""
        errors = [
            f"{stream}: {sink.error}"
            for stream in STREAMS
            if (sink := self._sinks.get((child_id, stream))) is not None and sink.error
        ]
        return "; ".join(errors) or None

    def is_dirty(self, child_id: str) -> bool:
        return child_id in self._dirty

    def take(self, child_id: str) -> dict[str, Any]:
        """The child's output facts to record now (it is clean afterwards)."""
        self._dirty.discard(child_id)
        return self.fields(child_id)

    def dirty(self) -> list[str]:
        return list(self._dirty)

    def close(self, child_id: str) -> None:
        """The child ended: close its logs (a late chunk opens them again)."""
        for stream in STREAMS:
            sink = self._sinks.get((child_id, stream))
            if sink is not None:
                sink.close()

    def close_all(self) -> None:
        for sink in self._sinks.values():
            sink.close()

    def _sink(self, child_id: str, stream: str) -> LogSink:
        sink = self._sinks.get((child_id, stream))
        if sink is None:
            record = self._records[child_id]
            path = record.stdout_log_path if stream == "stdout" else record.stderr_log_path
            summary = record.stdout_summary if stream == "stdout" else record.stderr_summary
            assert path is not None
            sink = self._sinks[(child_id, stream)] = LogSink(
                Path(path),
                cap=self._cap,
                summary_lines=self._summary_lines,
                summary=list(summary),
            )
        return sink
