"""What the ``fleet`` CLI prints: tables, colours, times, the progress line and live output.

Everything here writes to a stream it is given (or stdout/stderr); it makes no requests.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, TextIO

import trio

from fleet.core import STREAMS, BatchStatus, ChildStatus

from .watch import BatchWatch, Chunk, Ended, Gap, WatchedChild

__all__ = [
    "LiveOutput",
    "Progress",
    "ago",
    "batches_table",
    "colour",
    "duration",
    "isatty",
    "paint_status",
    "parse_time",
    "print_agent_setup",
    "print_batch",
    "print_error",
    "print_json",
    "print_outcome",
    "scripts_table",
    "secret_file",
    "summary_table",
    "table",
    "use_colour",
    "vps_table",
]


def print_error(message: str) -> None:
    sys.stdout.flush()
    print(f"fleet: {message}", file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# --- tables, colours and times ----------------------------------------------------------------


def colour(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text


def use_colour(stream: TextIO) -> bool:
    return "NO_COLOR" not in os.environ and isatty(stream)


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """Rows in aligned columns (colour codes take no room; the last column is not padded)."""
    rows = [headers, *rows]
    widths = [max(_width(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    for row in rows:
        cells = [c + " " * (widths[i] - _width(c)) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _width(cell: str) -> int:
    return len(_ANSI.sub("", cell))


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(start: str | None, end: str | None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return "-"
    seconds = max((b - a).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def ago(text: str | None) -> str:
    when = parse_time(text)
    if when is None:
        return "never"
    seconds = int((datetime.now(timezone.utc) - when).total_seconds())
    if seconds < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return "just now"  # pragma: no cover - a clock ahead of the server's


_GOOD = frozenset(s.value for s in (ChildStatus.SUCCESS, BatchStatus.COMPLETED_SUCCESSFULLY))
_BAD = frozenset(
    s.value
    for s in (
        ChildStatus.FAILURE,
        ChildStatus.AGENT_UNREACHABLE,
        ChildStatus.AGENT_REJECTED,
        BatchStatus.COMPLETED_WITH_ERRORS,
        BatchStatus.FAILED_TO_START,
    )
)


def paint_status(status: str, enabled: bool) -> str:
    """Green for success, red for failure, yellow for terminated, cyan while running."""
    code = (
        "32"
        if status in _GOOD
        else "31"
        if status in _BAD
        else "33"
        if "TERMINAT" in status
        else "36"
    )
    return colour(status, code, enabled)


def _error_line(child: WatchedChild) -> str:
    """The first line of the child's error, and what its agent reported after the server
    ended it (its status stays)."""
    text = child.error_message.splitlines()[0] if child.error_message else ""
    reported = child.agent_reported
    if reported:
        late = f"agent later reported {reported.get('status')}"
        if reported.get("exit_code") is not None:
            late += f" (exit {reported['exit_code']})"
        text = f"{text}; {late}" if text else late
    return text


def summary_table(children: Iterable[WatchedChild], *, paint: bool) -> str:
    rows = []
    for child in children:
        rows.append(
            [
                child.name,
                paint_status(child.status, paint),
                "-" if child.exit_code is None else str(child.exit_code),
                duration(child.started_at, child.completed_at),
                _error_line(child),
            ]
        )
    return table(["VPS", "STATUS", "EXIT", "TIME", "ERROR"], rows)


class Progress:
    """The line ``3/10 done · 2 failed · 5 running · 12s`` on a terminal's stderr, rewritten.

    ``draw`` is throttled; ``tick`` redraws it regularly so it never stays stale.
    """

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._shown = False
        self._last = 0.0
        self._start = time.monotonic()

    def draw(self, watch: BatchWatch, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or not watch.children or (not force and now - self._last < 0.1):
            return
        self._last = now
        done, failed, running = watch.counts()
        queued, skipped = watch.waiting()
        total = len(watch.children)
        elapsed = int(now - self._start)
        text = f"{done}/{total} done · {failed - skipped} failed · {running - queued} running"
        if queued:
            text += f" · {queued} queued"
        if skipped:
            text += f" · {skipped} skipped"
        text += f" · {elapsed}s"
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True

    async def tick(self, watch: BatchWatch) -> None:
        """Redraw every half second until cancelled."""
        while self.enabled:
            self.draw(watch, force=True)
            await trio.sleep(0.5)

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


MAX_LINE = 64 * 1024
_PALETTE = ("36", "35", "34", "33", "32", "96", "95", "94", "93", "92")


class LiveOutput:
    """Prints chunks of output as whole lines, each prefixed by its VPS's name."""

    def __init__(self, watch: BatchWatch, out: TextIO, progress: Progress, *, show: bool) -> None:
        self._watch = watch
        self._out = out
        self._progress = progress
        self._show = show
        self._paint = use_colour(out)
        self._partial: dict[tuple[str, str], str] = {}
        self._prefix: dict[str, tuple[str, str]] = {}

    def _prefixes(self, child_id: str) -> tuple[str, str]:
        if child_id not in self._prefix:
            children = list(self._watch.children.values())
            width = min(max((len(c.name) for c in children), default=0), 24)
            for index, child in enumerate(children):
                name = colour(child.name.ljust(width), _PALETTE[index % len(_PALETTE)], self._paint)
                self._prefix[child.child_id] = (
                    f"{name} | ",
                    f"{name} {colour('!', '31', self._paint)} ",
                )
        return self._prefix[child_id]

    def __call__(self, items: Iterable[Chunk | Gap | Ended]) -> None:
        for item in items:
            if isinstance(item, Chunk) and self._show:
                self._chunk(item)
            elif isinstance(item, Ended):
                self._flush(item.child_id)
        self._out.flush()
        self._progress.draw(self._watch)

    def _chunk(self, chunk: Chunk) -> None:
        key = (chunk.child_id, chunk.stream)
        lines = (self._partial.pop(key, "") + chunk.text).split("\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:  # output without newlines: show it in pieces, keep memory flat
            lines.append(rest)
        elif rest:
            self._partial[key] = rest
        self._write(chunk.child_id, chunk.stream, lines)

    def _flush(self, child_id: str) -> None:
        for stream in STREAMS:
            rest = self._partial.pop((child_id, stream), "")
            if rest:
                self._write(child_id, stream, [rest])

    def flush_all(self) -> None:
        for child_id in list(self._watch.children):
            self._flush(child_id)
        self._out.flush()

    def _write(self, child_id: str, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        self._progress.clear()
        prefix = self._prefixes(child_id)[stream == "stderr"]
        self._out.write("".join(f"{prefix}{line}\n" for line in lines))


def print_outcome(final: dict[str, Any], watch: BatchWatch, err: TextIO) -> None:
    paint = use_colour(err)
    err.write(summary_table(watch.children.values(), paint=paint) + "\n")
    done, failed, _ = watch.counts()
    _, skipped = watch.waiting()
    status = str(final.get("overall_status"))
    status = paint_status(status, paint)
    not_run = f" ({skipped} skipped)" if skipped else ""
    err.write(
        f"{status}: {done - failed} succeeded, {failed} did not{not_run} ({watch.batch_id})\n"
    )
    if final.get("stop_reason"):
        err.write(f"dispatching stopped: {final['stop_reason']}\n")
    err.flush()


# --- fleet vps / scripts / batches ----------------------------------------------------------


DEFAULT_SECRET_FILE = "/etc/fleet-agent/secret"
"""Where the README (and the server's ``agent_command``) keep an agent's secret."""


def secret_file(agent_command: str) -> str:
    """The ``--secret-file`` of the server's agent command line (else the README's path)."""
    try:
        words = shlex.split(agent_command)
    except ValueError:
        return DEFAULT_SECRET_FILE
    for index, word in enumerate(words):
        if word == "--secret-file" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--secret-file="):
            return word.partition("=")[2]
    return DEFAULT_SECRET_FILE


def print_agent_setup(secret: str, agent_command: str, agent_install: str | None = None) -> None:
    """The secret; how to install the agent, store the secret where the agent command reads it,
    and start it."""
    path = secret_file(agent_command)
    folder = posixpath.dirname(path) or "."
    print(f"Agent secret (shown only this once): {secret}")
    print("On the VPS, install the agent, store the secret in a root-only file, start the agent:")
    if agent_install:
        print(f"  {agent_install}")
    print(
        f"  sudo install -d -m 0700 {shlex.quote(folder)} && printf '%s\\n' "
        f"{shlex.quote(secret)} | sudo install -m 0600 /dev/stdin {shlex.quote(path)}"
    )
    print(f"  {agent_command}")


def vps_table(vpses: list[dict[str, Any]], *, paint: bool) -> str:
    rows = [
        [
            str(v["id"]),
            v["name"],
            ",".join(v.get("tags") or []) or "-",
            colour("yes", "32", paint) if v.get("online") else colour("no", "31", paint),
            v.get("hostname") or "-",
            v.get("agent_version") or "-",
            "now" if v.get("online") else ago(v.get("last_seen_at")),
        ]
        for v in vpses
    ]
    return table(["ID", "NAME", "TAGS", "ONLINE", "HOSTNAME", "AGENT", "LAST SEEN"], rows)


def scripts_table(scripts: list[dict[str, Any]]) -> str:
    rows = [
        [str(s["id"]), s["name"], ago(s.get("updated_at")), (s.get("description") or "")[:60]]
        for s in scripts
    ]
    return table(["ID", "NAME", "UPDATED", "DESCRIPTION"], rows)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "-"


def _what(batch: dict[str, Any]) -> str:
    text = batch.get("execution_alias") or (batch.get("command_content") or "").strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > 50:
        return first[:47] + "..."
    return first + " ..." if "\n" in text else first


def batches_table(batches: list[dict[str, Any]]) -> str:
    rows = [
        [
            b["batch_command_id"],
            b["overall_status"],
            str(b.get("target_count", "")),
            _counts(b.get("counts") or {}),
            ago(b.get("created_at")),
            _what(b),
        ]
        for b in batches
    ]
    return table(["ID", "STATUS", "VPS", "TASKS", "CREATED", "COMMAND"], rows)


def print_batch(batch: dict[str, Any]) -> None:
    """A batch's details and each VPS's outcome (``fleet batches show``), on stdout."""
    watch = BatchWatch(batch["batch_command_id"], output=False)
    watch.on_snapshot(batch)
    paint = use_colour(sys.stdout)
    status = batch["overall_status"]
    print(f"batch     {batch['batch_command_id']}")
    print(f"status    {paint_status(status, paint)}")
    if batch.get("execution_alias"):
        print(f"alias     {batch['execution_alias']}")
    kind = "script" if batch.get("command_type") == "SAVED_SCRIPT" else "command"
    print(f"{kind:<9} {_what({'command_content': batch.get('command_content')})}")
    if batch.get("working_directory"):
        print(f"cwd       {batch['working_directory']}")
    rollout = [
        f"{label} {batch[key]}"
        for key, label in (
            ("max_concurrency", "max concurrency"),
            ("max_errors", "max errors"),
            ("wait_for_agent_seconds", "wait for agent (s)"),
        )
        if batch.get(key)
    ]
    if rollout:
        print(f"rollout   {', '.join(rollout)}")
    if batch.get("parameters"):
        shown = " ".join(f"{k}={v}" for k, v in sorted(batch["parameters"].items()))
        print(f"params    {shown}")
    if batch.get("stop_reason"):
        print(f"stopped   {batch['stop_reason']}")
    if batch.get("rerun_of"):
        print(f"re-run of {batch['rerun_of']}")
    print(f"created   {batch.get('created_at')}  ({ago(batch.get('created_at'))})")
    if batch.get("completed_at"):
        print(f"took      {duration(batch.get('created_at'), batch['completed_at'])}")
    print()
    print(summary_table(watch.children.values(), paint=paint))
