"""The agent's journal: which commands it accepted, their processes, and unacknowledged results.

It lets an agent that crashed or was restarted tell the truth (SPEC §6): commands that were
running are stopped and reported ``FAILURE``, finished results are sent again, and a command id
delivered twice never runs twice.

Theory of operation
-------------------
One append-only file, ``<state-dir>/journal``, one record per line (the directory is locked
by the agent using it, ``<state-dir>/lock``, which holds its pid)::

    <crc32 of the JSON, 8 hex digits> <JSON object>\\n

The first record is the header ``{"t": "fleet-agent-journal", "v": 1}``. The others:

========  ==========================================  =============================================
``t``     fields                                      meaning
========  ==========================================  =============================================
``a``     ``id``                                      accepted; written and fsynced *before* the
                                                      process starts
``p``     ``id pid start boot``                       the process started: its pid (= its process
                                                      group, a new session), its start time in
                                                      clock ticks after boot (``/proc/PID/stat``
                                                      field 22) and the boot id, so that a pid
                                                      recycled by another process is never killed
``r``     ``id status exit error``                    the final result; fsynced *before* it is
                                                      sent to the server
``k``     ``id``                                      the server acknowledged the result: forgotten
``d``     ``id``                                      the result was dropped unacknowledged (more
                                                      than ``max_results`` waited): forgotten
``done``  ``ids``                                     (compaction) ids that ran and are forgotten
========  ==========================================  =============================================

Only ``a`` and ``r`` are fsynced: they are what a machine crash must not lose (a command that
may have run must be reported as accepted; a result must not be lost before the server has it).
``p``, ``k`` and ``d`` only matter while the machine stays up, and then the kernel keeps them
even if the agent dies. Losing a ``k`` costs at worst one result sent twice, which the server
ignores.

Crash safety: records are single ``write()`` calls to an ``O_APPEND`` file. A last line that is
incomplete or fails its CRC is a torn write and is ignored. A bad line *before* the last one
means the file is corrupt: it is renamed ``journal.corrupt-<UTC time>`` (one warning), every
line that still checks out is kept, and :attr:`JournalState.complete` is False (the agent can
no longer vouch that it knows every command it accepted).

Bounds: open commands are at most the agent's running commands plus ``max_results``
unacknowledged results (the oldest is dropped beyond that, with a warning, as in the outbox);
``DONE_IDS_KEPT`` forgotten ids are remembered to refuse a re-delivery (older ones are
forgotten: a re-delivery that old would run again). The file is compacted (rewritten as a
snapshot, fsynced, renamed into place) when it exceeds twice its last snapshot plus
``COMPACT_SLACK_BYTES``, and at every start, so it never holds more than about
``2 × snapshot + 256 KiB``. Ids longer than ``MAX_ID_CHARS`` are refused before they reach it.

This module is the format alone (no I/O); ``fleet.agent.statedir`` owns the directory, the
file, the lock and compaction.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fleet.proto import agent_service as pb

__all__ = [
    "COMPACT_SLACK_BYTES",
    "DONE_IDS_KEPT",
    "HEADER",
    "MAX_ID_CHARS",
    "JournalState",
    "OpenCommand",
    "ProcessInfo",
    "Replay",
    "StoredResult",
    "decode",
    "encode",
    "process_record",
    "replay",
    "result_record",
]

logger = logging.getLogger(__name__)

HEADER = {"t": "fleet-agent-journal", "v": 1}
#: Forgotten command ids remembered to refuse a re-delivery.
DONE_IDS_KEPT = 4096
#: Growth allowed beyond twice the last snapshot before compacting.
COMPACT_SLACK_BYTES = 256 * 1024
#: Longest command id the agent journals (longer ones are rejected).
MAX_ID_CHARS = 512
#: Longest error message kept with a result.
MAX_ERROR_CHARS = 4096
_DONE_CHUNK = 256


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What identifies a command's process group across an agent restart."""

    pid: int  # also the process group id (the command starts a new session)
    start_ticks: int  # /proc/PID/stat field 22: clock ticks after boot
    boot_id: str  # /proc/sys/kernel/random/boot_id ("" if unknown)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A final result as journaled (the fields of ``BatchCommandResult``)."""

    status: int
    exit_code: int
    error_message: str

    @classmethod
    def of(cls, result: pb.BatchCommandResult) -> StoredResult:
        return cls(int(result.status), result.exit_code, result.error_message[:MAX_ERROR_CHARS])

    def to_result(self, command_id: str) -> pb.BatchCommandResult:
        known = {int(member) for member in pb.CommandStatus}
        status = pb.CommandStatus(self.status if self.status in known else pb.CommandStatus.FAILURE)
        return pb.BatchCommandResult(
            command_id=command_id,
            status=status,
            exit_code=self.exit_code,
            error_message=self.error_message,
        )


@dataclass(slots=True)
class OpenCommand:
    """A command accepted and not yet acknowledged."""

    process: ProcessInfo | None = None
    result: StoredResult | None = None


@dataclass(slots=True)
class JournalState:
    """What the records say (sans-I/O: :func:`replay` builds it from lines)."""

    open: dict[str, OpenCommand] = field(default_factory=dict)
    done: OrderedDict[str, None] = field(default_factory=OrderedDict)
    #: False when records may have been lost (a corrupt file was set aside).
    complete: bool = True

    def apply(self, record: dict[str, Any]) -> None:
        """Apply one decoded record. Raises ValueError if it is malformed."""
        kind = record.get("t")
        if kind == "done":
            ids = record["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("bad done record")
            for command_id in ids:
                self._forget(command_id)
            return
        if kind == HEADER["t"]:
            if record.get("v") != HEADER["v"]:
                raise ValueError(f"unknown journal version {record.get('v')!r}")
            return
        command_id = record["id"]
        if not isinstance(command_id, str):
            raise ValueError("bad id")
        if kind == "a":
            self.open.setdefault(command_id, OpenCommand())
        elif kind == "p":
            entry = self.open.setdefault(command_id, OpenCommand())
            entry.process = ProcessInfo(
                _int(record["pid"]), _int(record["start"]), str(record["boot"])
            )
        elif kind == "r":
            entry = self.open.setdefault(command_id, OpenCommand())
            entry.result = StoredResult(
                _int(record["status"]), _int(record["exit"]), str(record["error"])
            )
        elif kind in ("k", "d"):
            self._forget(command_id)
        else:
            raise ValueError(f"unknown record type {kind!r}")

    def _forget(self, command_id: str) -> None:
        self.open.pop(command_id, None)
        self.done[command_id] = None
        self.done.move_to_end(command_id)
        while len(self.done) > DONE_IDS_KEPT:
            self.done.popitem(last=False)

    def snapshot(self) -> list[dict[str, Any]]:
        """The records that rebuild this state (header first)."""
        records: list[dict[str, Any]] = [dict(HEADER)]
        done = list(self.done)
        for start in range(0, len(done), _DONE_CHUNK):
            records.append({"t": "done", "ids": done[start : start + _DONE_CHUNK]})
        for command_id, entry in self.open.items():
            records.append({"t": "a", "id": command_id})
            if entry.process is not None:
                records.append(process_record(command_id, entry.process))
            if entry.result is not None:
                records.append(result_record(command_id, entry.result))
        return records


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def process_record(command_id: str, process: ProcessInfo) -> dict[str, Any]:
    return {
        "t": "p",
        "id": command_id,
        "pid": process.pid,
        "start": process.start_ticks,
        "boot": process.boot_id,
    }


def result_record(command_id: str, result: StoredResult) -> dict[str, Any]:
    return {
        "t": "r",
        "id": command_id,
        "status": result.status,
        "exit": result.exit_code,
        "error": result.error_message[:MAX_ERROR_CHARS],
    }


def encode(record: dict[str, Any]) -> bytes:
    """One journal line for ``record``."""
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(line: bytes) -> dict[str, Any]:
    """The record of one line (with or without its newline). Raises ValueError if it is bad."""
    line = line.rstrip(b"\n")
    crc_text, sep, body = line.partition(b" ")
    if not sep or len(crc_text) != 8:
        raise ValueError("no checksum")
    try:
        crc = int(crc_text, 16)
    except ValueError:
        raise ValueError("bad checksum field") from None
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    record = json.loads(body)
    if not isinstance(record, dict):
        raise ValueError("not an object")
    return record


@dataclass
class Replay:
    """The outcome of reading a journal file."""

    state: JournalState
    torn: bool = False  # the last record was incomplete and ignored
    bad_lines: int = 0  # bad records before the last one (the file is corrupt)


def replay(data: bytes) -> Replay:
    """Rebuild the state from a journal file's bytes (sans-I/O)."""
    state = JournalState()
    outcome = Replay(state)
    if not data:
        return outcome
    lines = data.split(b"\n")
    last_complete = data.endswith(b"\n")
    if last_complete:
        lines.pop()  # the empty string after the final newline
    for index, line in enumerate(lines):
        is_last = index == len(lines) - 1
        try:
            if is_last and not last_complete:
                raise ValueError("incomplete last record")
            record = decode(line)
            if index == 0 and record.get("t") != HEADER["t"]:
                raise ValueError("no header")
            state.apply(record)
        except (ValueError, KeyError, TypeError) as error:
            if is_last:
                outcome.torn = True
                logger.debug("journal: torn last record ignored (%s)", error)
            else:
                outcome.bad_lines += 1
    if outcome.bad_lines:
        state.complete = False
    return outcome
