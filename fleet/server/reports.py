"""What an agent may report: every field of every ``MessageToServer`` checked at the edge.

An agent is a peer, not a trusted component: a report whose fields no honest agent can send
(an offset past 2**53, a negative pid, a command id of a shape this server never generates, a
megabyte-long reason) ends its stream ``INVALID_ARGUMENT`` in ``fleet.server.rpc`` before any of
it reaches the supervisor, the store or a log line. Checking here, once, keeps the far ends
honest too: SQLite's INTEGER is signed 64-bit, and a value that does not fit fails at flush
time, in a batched write far from the stream it came in on.

What is *not* impossible passes: unknown enum values (a newer peer; the supervisor treats an
unknown stream type or status as it documents), any ``exit_code`` (int32 by the wire), an offset
beyond the server's output cap (an honest command may print more than the cap; the log keeps
the cap and counts the rest), a well-shaped command id the server does not know (the supervisor
decides: the result of a forgotten command is acknowledged so the agent stops re-sending it).

Pure functions, no I/O.
"""

from __future__ import annotations

import re

import betterproto2

from fleet.proto import agent_service as pb
from fleet.wellformed import problem

__all__ = [
    "COMMAND_ID_PATTERN",
    "MAX_OFFSET",
    "MAX_TEXT_CHARS",
    "MAX_TIMESTAMP_MS",
    "InvalidReport",
    "check_report",
    "valid_command_id",
]

#: Output offsets stay below 2**53 (offset + chunk length at most that): exact in a JSON number
#: and a double, far inside SQLite's signed 64-bit INTEGER.
MAX_OFFSET = 2**53
#: ``reason`` and ``error_message``: an honest agent writes a sentence or a path, never more.
MAX_TEXT_CHARS = 16 * 1024
#: Timestamps are Unix milliseconds between 1970 and the end of year 9999 (what a datetime
#: can show); 0 means "not given".
MAX_TIMESTAMP_MS = 253_402_300_799_999

# The server's command ids are UUIDs (36 characters, the store's column size); allow any id
# of that size and a URL- and log-safe alphabet, so a change of id scheme needs no change here.
COMMAND_ID_PATTERN = "^[0-9A-Za-z][0-9A-Za-z_-]{0,35}$"
_COMMAND_ID = re.compile(COMMAND_ID_PATTERN)


class InvalidReport(ValueError):
    """A report no honest agent sends.

    Attributes:
        field: the offending field, dotted (``batch_command_output_stream.offset``).
        reason: why it is impossible, safe to log (no peer text in it).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def valid_command_id(command_id: str) -> bool:
    """Whether ``command_id`` has a shape this server generates (never blank, ≤ 36 characters,
    letters, digits, ``-`` and ``_``)."""
    return _COMMAND_ID.fullmatch(command_id) is not None


def check_report(message: pb.MessageToServer) -> None:
    """Raise :class:`InvalidReport` unless every field of ``message`` is well typed (see
    ``fleet.wellformed``) and every field of its report is possible.

    Messages without a report payload (none, a repeated handshake, a payload this server does
    not implement) pass: the supervisor ignores them.
    """
    malformed = problem(message)
    if malformed is not None:
        field, _, why = malformed.partition(": ")
        raise InvalidReport(field, why)
    name, payload = betterproto2.which_one_of(message, "payload")
    if isinstance(payload, pb.BatchCommandOutputStream):
        _check_id(name, payload.command_id)
        _check_timestamp(name, payload.timestamp)
        offset = payload.offset
        if offset is not None and (
            offset >= MAX_OFFSET or offset + len(payload.chunk) > MAX_OFFSET
        ):
            raise InvalidReport(f"{name}.offset", "the chunk would reach beyond 2**53 bytes")
    elif isinstance(payload, pb.BatchCommandResult):
        _check_id(name, payload.command_id)
        _check_text(name, "error_message", payload.error_message)
    elif isinstance(payload, pb.BatchCommandAck):
        _check_id(name, payload.command_id)
        _check_text(name, "reason", payload.reason)
        _check_timestamp(name, payload.timestamp)
    elif isinstance(payload, pb.BatchCommandStarted):
        _check_id(name, payload.command_id)
        if payload.pid < 0:
            raise InvalidReport(f"{name}.pid", "a process id is never negative")
        _check_timestamp(name, payload.timestamp)
    elif isinstance(payload, pb.AgentHandshake):
        for command_id in payload.open_command_ids:
            _check_id(name, command_id, "open_command_ids")


def _check_id(payload: str, command_id: str, field: str = "command_id") -> None:
    if not valid_command_id(command_id):
        raise InvalidReport(
            f"{payload}.{field}",
            f"not a command id this server generates ({len(command_id)} characters)",
        )


def _check_text(payload: str, field: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidReport(
            f"{payload}.{field}", f"{len(text)} characters, more than {MAX_TEXT_CHARS}"
        )


def _check_timestamp(payload: str, timestamp: int) -> None:
    if not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise InvalidReport(f"{payload}.timestamp", "not a time between 1970 and 9999")
