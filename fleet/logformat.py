"""How ``fleet-server`` and ``fleet-agent`` write their logs: text, or one JSON object per line.

Both formats carry the same fields: the time, the level, the logger's name and the message
(plus the traceback when there is one). ``json`` suits journald → Loki/Elasticsearch pipelines::

    {"time": "2026-11-30T08:12:01.123Z", "level": "INFO", "logger": "fleet.agent.run",
     "message": "vps=12 connected to fleet.example.com:50051"}

(one line per record; ``exception`` and ``stack`` keys are added when the record has them).
Only the commands' ``main`` calls :func:`configure`; library modules never add handlers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import TextIO

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure", "escape_controls"]

#: The values of ``--log-format``.
FORMATS = ("text", "json")

# C0 and C1 controls, DEL and the Unicode line/paragraph separators: what could end a log line
# early or drive a terminal.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\n``, ``\\x1b``)."""
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """A ``%``-style text formatter whose message is always one line.

    Control characters in the message (a client's ``%0A`` in a logged path, an agent's hostname)
    are escaped, so no input can forge a log line or reach the terminal as escape sequences.
    A traceback still follows on lines of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not _CONTROLS.search(record.message):
            return super().formatMessage(record)
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_controls(record.message)
        return super().formatMessage(safe)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, object] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(
    *, level: int | str, log_format: str, text_format: str, stream: TextIO | None = None
) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``, once per process.

    Args:
        level: the root level (``"INFO"`` or ``logging.INFO``).
        log_format: ``"text"`` (``text_format``, a ``%``-style format) or ``"json"``.
        text_format: the command's text layout.
        stream: where to write (default ``sys.stderr``).
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(text_format))
    logging.basicConfig(level=level, handlers=[handler])
