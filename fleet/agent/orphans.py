"""Commands left running by a previous agent process: find their processes and stop them.

After an agent crash, its commands' processes are no longer its children (init adopted them),
so they are found through ``/proc`` from what the journal kept (:class:`ProcessInfo`):

- If the group's leader (its pid is the process group id: commands start a new session) still
  runs with the start time the journal recorded, the group is the command's: the pid cannot
  have been recycled while that process lives. The whole group is signalled (``killpg``).
- If the leader is gone, the group may live on in its other members, but its number could in
  principle belong to a new group by now. Only members started no earlier than the leader
  that carry the command's marker in their environment (``FLEET_COMMAND_ID=<id>``, set by the
  runner and inherited by every child) are signalled, one by one.
- With no process recorded (the agent died between starting the process and journaling it),
  processes carrying the marker are looked for among all processes.
- A different boot id means the machine rebooted: nothing of the command can be running.

Stopping is the runner's rule: SIGTERM, SIGKILL to what is left after the grace, then wait for
the processes to disappear (bounded).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
from dataclasses import dataclass

import trio

from fleet.proto import agent_service as pb

from .journal import ProcessInfo

__all__ = [
    "COMMAND_ID_ENV",
    "RESTARTED",
    "Outcome",
    "boot_id",
    "find_members",
    "process_info",
    "settle_left_over",
    "stop_left_over",
]

logger = logging.getLogger(__name__)

#: The error message of a command that was running when its agent died (SPEC §6); the
#: result's message adds how it ended, in parentheses.
RESTARTED = "the agent restarted while the command ran"
#: Environment variable naming the command every process of a command runs for.
COMMAND_ID_ENV = "FLEET_COMMAND_ID"
_POLL_S = 0.05
_KILL_WAIT_S = 2.0


class Outcome(enum.Enum):
    """How a left-over command ended."""

    GONE = "it was no longer running; its exit status is unknown"
    TERMINATED = "its process group was stopped with SIGTERM"
    KILLED = "its process group was stopped with SIGKILL"


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    pgrp: int
    start_ticks: int


def boot_id() -> str:
    """This boot's id ("" where the kernel does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def _parse_stat(pid: int, data: bytes) -> tuple[bytes, _Proc]:
    fields = data.rsplit(b")", 1)[1].split()  # fields from 3 on: state, ppid, pgrp, ...
    return fields[0], _Proc(pid, int(fields[2]), int(fields[19]))


def _read_stat(pid: int) -> tuple[bytes, _Proc] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return _parse_stat(pid, file.read())
    except (OSError, IndexError, ValueError):
        return None


def process_info(pid: int, boot: str) -> ProcessInfo | None:
    """What identifies ``pid`` (a command's group leader) later; None if it is already gone."""
    found = _read_stat(pid)
    if found is None:
        return None
    return ProcessInfo(pid=pid, start_ticks=found[1].start_ticks, boot_id=boot)


def _running() -> list[_Proc]:
    procs = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit() and (found := _read_stat(int(name))) is not None:
            state, proc = found
            if state != b"Z":
                procs.append(proc)
    return procs


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = file.read()
    except OSError:
        return False
    return environ.startswith(marker) or b"\0" + marker in environ


def find_members(command_id: str, process: ProcessInfo | None, boot: str) -> tuple[int, list[int]]:
    """The command's running processes: ``(group, pids)``.

    ``group`` is the process group to signal as a whole (the verified leader's), or 0 when
    only the listed ``pids`` may be signalled.
    """
    if process is not None and process.boot_id and boot and process.boot_id != boot:
        return 0, []
    marker = f"{COMMAND_ID_ENV}={command_id}\0".encode("utf-8", "surrogateescape")
    procs = _running()
    if process is None:
        return 0, [p.pid for p in procs if p.pid != os.getpid() and _has_marker(p.pid, marker)]
    group = process.pid
    in_group = [p for p in procs if p.pgrp == group]
    leader = next((p for p in in_group if p.pid == group), None)
    if leader is not None and leader.start_ticks == process.start_ticks:
        return group, [p.pid for p in in_group]
    return 0, [
        p.pid
        for p in in_group
        if p.start_ticks >= process.start_ticks and _has_marker(p.pid, marker)
    ]


def _signal(group: int, pids: list[int], signum: signal.Signals) -> None:
    # PermissionError: a member changed its credentials (setuid); the others still get it.
    try:
        if group:
            os.killpg(group, signum)
            return
    except (ProcessLookupError, PermissionError):
        return
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


async def stop_left_over(
    command_id: str, process: ProcessInfo | None, *, boot: str, grace_s: float
) -> Outcome:
    """Stop what still runs of a command a previous agent started (SIGTERM, then SIGKILL).

    Bounded by ``grace_s`` plus a few seconds. The ``/proc`` scans run in a worker thread.
    """

    async def members() -> tuple[int, list[int]]:
        return await trio.to_thread.run_sync(find_members, command_id, process, boot)

    group, pids = await members()
    if not pids:
        return Outcome.GONE
    _signal(group, pids, signal.SIGTERM)
    with trio.move_on_after(grace_s):
        while pids:
            await trio.sleep(_POLL_S)
            group, pids = await members()
    if not pids:
        return Outcome.TERMINATED
    _signal(group, pids, signal.SIGKILL)
    with trio.move_on_after(_KILL_WAIT_S):
        while pids:
            await trio.sleep(_POLL_S)
            group, pids = await members()
    return Outcome.KILLED


#: Exit code reported for each outcome: the signal that ended it (runner convention), or 0
#: when it had already ended and its exit status is unknown (the message says so).
_EXIT_CODES = {Outcome.GONE: 0, Outcome.TERMINATED: -15, Outcome.KILLED: -9}


async def settle_left_over(
    command_id: str, process: ProcessInfo | None, *, boot: str, grace_s: float
) -> pb.BatchCommandResult:
    """Stop a command a previous agent process left running; return its ``FAILURE`` result."""
    try:
        outcome = await stop_left_over(command_id, process, boot=boot, grace_s=grace_s)
    except OSError as error:  # /proc unreadable: say so rather than take the agent down
        logger.error("command=%s cannot stop what is left of it: %s", command_id, error)
        detail, exit_code = f"it could not be stopped: {error}", 0
    else:
        detail, exit_code = outcome.value, _EXIT_CODES[outcome]
    logger.warning("command=%s %s: %s", command_id, RESTARTED, detail)
    return pb.BatchCommandResult(
        command_id=command_id,
        status=pb.CommandStatus.FAILURE,
        exit_code=exit_code,
        error_message=f"{RESTARTED} ({detail})",
    )
