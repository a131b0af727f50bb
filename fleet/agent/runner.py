"""Runs one command: a private script file, its own process group, coalesced output, stop.

Conventions (documented for the server and operators):

- A one-line command (no ``#!``, no working directory, at most 16 Ki characters) runs as
  ``<shell> -c <content>``. Any other content goes into a private temporary file (mode 0700,
  removed afterwards) run by the interpreter of its ``#!`` line (split like the kernel does:
  interpreter plus at most one argument) or else by the configured shell. The file is never
  executed directly, so a ``noexec`` temporary directory does not matter.
- stdin is ``/dev/null``; the process starts a new session, so it and everything it spawns form
  one process group that can be signalled as a whole. Its environment is the agent's plus
  ``FLEET_COMMAND_ID=<id>`` (so a restarted agent can tell the command's processes apart) plus
  the request's ``environment``: script parameters, only ``FLEET_PARAM_<name>`` variables (a
  request with any other name, or a NUL in a value, is refused before anything starts).
- ``exit_code`` is the main process's exit status; **killed by signal N → ``-N``** (Python's
  convention), e.g. -9 after SIGKILL. A command that could not start (missing working
  directory, interpreter not found) is ``FAILURE`` with exit code 127 and the reason.
- Stopping (terminate, timeout, agent shutdown): SIGTERM to the group, SIGKILL to what is left
  after the grace, then the output still in the pipes is read. Terminate → ``TERMINATED``;
  ``timeout_seconds`` → ``FAILURE`` "timed out after N s".
- When the main process exits by itself, the pipes are read until EOF or for at most
  ``drain_s`` more (a background process may hold them open); such background processes are
  left running, like ``nohup``.

Output goes to an :class:`OutputSink` in chunks of at most ``chunk_bytes``, flushed when full or
``FLUSH_INTERVAL_S`` after their first byte; the sink may make the reader wait (backpressure
reaches the command through its pipe).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from fleet.proto import agent_service as pb

from .config import MAX_CHUNK_BYTES
from .orphans import COMMAND_ID_ENV
from .outbox import unix_ms

__all__ = [
    "COULD_NOT_START",
    "FLUSH_INTERVAL_S",
    "CommandControl",
    "CommandSpec",
    "OutputSink",
    "run_command",
]

#: Flush a partial chunk this long after its first byte.
FLUSH_INTERVAL_S = 0.03
#: Exit code reported for a command whose process never started.
COULD_NOT_START = 127
#: How often to look whether a signalled process group is gone.
_GROUP_POLL_S = 0.05
#: A pipe's default capacity on Linux; a read this big means the command fills its pipe.
_PIPE_BYTES = 64 * 1024
#: ``fcntl`` command that sets a pipe's capacity (Linux).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: How long SIGKILLed members may take to disappear.
_KILL_WAIT_S = 2.0
#: The only environment variables a request may set (script parameters).
_PARAM_ENV = re.compile(r"FLEET_PARAM_[A-Za-z_][A-Za-z0-9_]{0,63}")


class OutputSink(Protocol):
    """Where a command's output goes (the agent's outbox)."""

    async def write(self, kind: pb.OutputType, data: bytes, timestamp: int) -> None:
        """Take one chunk (``timestamp`` in Unix ms); may wait for room."""


@dataclass(frozen=True)
class CommandSpec:
    """What to run (from a ``BatchAgentCommandRequest``)."""

    command_id: str
    content: str
    working_directory: str = ""
    timeout_s: int = 0  # 0 = no limit
    environment: tuple[tuple[str, str], ...] = ()  # FLEET_PARAM_<name> = value

    @classmethod
    def from_request(cls, request: pb.BatchAgentCommandRequest) -> CommandSpec:
        return cls(
            command_id=request.command_id,
            content=request.content,
            working_directory=request.working_directory,
            timeout_s=request.timeout_seconds,
            environment=tuple(sorted((request.environment or {}).items())),
        )


class CommandControl:
    """Stops one running command from outside its task.

    ``terminate()`` may come at any time: before the process starts (it then never starts),
    while it runs (the group is stopped and the result is ``TERMINATED``), or after it exited
    (ignored: the command's own outcome stands).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._scope: trio.CancelScope | None = None

    def terminate(self, reason: str = "terminated by request") -> None:
        """Ask the command to stop; the first reason wins."""
        if self.reason is None:
            self.reason = reason
        if self._scope is not None:
            self._scope.cancel(reason=reason)


async def run_command(
    spec: CommandSpec,
    output: OutputSink,
    *,
    control: CommandControl,
    shell: str,
    grace_s: float,
    drain_s: float,
    on_started: Callable[[int], None],
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> pb.BatchCommandResult:
    """Run one command to completion and return its final result.

    Owns the command's process group, pipes and script file. ``on_started(pid)`` is called
    once the process runs. Cancellation stops the process group (SIGTERM, SIGKILL after
    ``grace_s``) in shielded cleanup bounded by ``grace_s`` plus three seconds, then
    propagates; no result is returned then.
    """
    if control.reason is not None:
        return _result(spec, pb.CommandStatus.TERMINATED, 0, f"{control.reason} before it started")
    cwd = spec.working_directory or None
    script: str | None = None
    if cwd is None and _is_one_line(spec.content):
        # Nothing to check and no file to write: no thread hop before the process starts.
        argv = [shell, "-c", spec.content]
    else:
        # A stat and a small write, but on a hung network filesystem even those block: keep
        # them off the event loop.
        prepared = await trio.to_thread.run_sync(_prepare, spec, cwd)
        if isinstance(prepared, pb.BatchCommandResult):
            return prepared
        script = prepared
        argv = _argv(script, spec.content, shell)
    try:
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                start_new_session=True,
                env={**os.environ, **dict(spec.environment), COMMAND_ID_ENV: spec.command_id},
            )
        except OSError as error:
            where = f" in {cwd}" if cwd else ""
            return _could_not_start(
                spec, f"cannot start {argv[0]}{where}: {error.strerror or error}"
            )
        return await _supervise(
            spec, process, output, control, grace_s, drain_s, on_started, chunk_bytes
        )
    finally:
        if script is not None:
            try:
                os.unlink(script)
            except FileNotFoundError:
                pass


async def _supervise(
    spec: CommandSpec,
    process: trio.Process,
    output: OutputSink,
    control: CommandControl,
    grace_s: float,
    drain_s: float,
    on_started: Callable[[int], None],
    chunk_bytes: int,
) -> pb.BatchCommandResult:
    assert process.stdout is not None
    assert process.stderr is not None
    readers = (
        _PipeReader(process.stdout, pb.OutputType.STDOUT, output, chunk_bytes),
        _PipeReader(process.stderr, pb.OutputType.STDERR, output, chunk_bytes),
    )
    stopped_because: str | None = None
    stop_status = pb.CommandStatus.FAILURE
    stopping = False  # a stop began and has not finished: cleanup must finish it
    try:
        # The readers live outside the scope that a terminate cancels, so output written
        # after SIGTERM is still read.
        async with trio.open_nursery() as nursery:
            for reader in readers:
                nursery.start_soon(reader.run)
            on_started(process.pid)
            deadline = trio.current_time() + spec.timeout_s if spec.timeout_s else math.inf
            with trio.CancelScope(deadline=deadline) as waiting:
                control._scope = waiting
                if control.reason is not None:
                    waiting.cancel(reason=control.reason)
                try:
                    await process.wait()
                finally:
                    control._scope = None
            if process.returncode is None:
                if control.reason is not None:
                    stopped_because, stop_status = control.reason, pb.CommandStatus.TERMINATED
                else:
                    stopped_because = f"timed out after {spec.timeout_s} s"
                stopping = True
                await _stop_group(process, grace_s)
                stopping = False
            give_up_at = trio.current_time() + drain_s
            for reader in readers:
                reader.give_up_at(give_up_at)
    finally:
        if process.returncode is None or stopping:
            # Cancelled mid-stop: the grace was already given, so go straight to SIGKILL.
            grace = 0.0 if stopping else grace_s
            with trio.move_on_after(grace + _KILL_WAIT_S + 1, shield=True):
                await _stop_group(process, grace)
        with trio.CancelScope(shield=True):
            await process.stdout.aclose()
            await process.stderr.aclose()
    code = process.returncode
    assert code is not None
    if stopped_because is not None:
        return _result(spec, stop_status, code, stopped_because)
    if code == 0:
        return _result(spec, pb.CommandStatus.SUCCESS, 0, "")
    return _result(spec, pb.CommandStatus.FAILURE, code, _describe_signal(code))


async def _stop_group(process: trio.Process, grace_s: float) -> None:
    """SIGTERM the process group, wait for it to empty for up to ``grace_s``, SIGKILL the rest."""
    group = process.pid  # start_new_session: the leader's pid is the group id
    _signal_group(group, signal.SIGTERM)
    with trio.move_on_after(grace_s):
        await process.wait()
        # Nothing notifies us when a process group empties (its members are not our
        # children once the leader is gone), so look periodically.
        while _group_alive(group):  # noqa: ASYNC110
            await trio.sleep(_GROUP_POLL_S)
    _signal_group(group, signal.SIGKILL)
    await process.wait()
    # SIGKILL is delivered asynchronously: on a busy machine a grandchild may still be
    # scheduled for a moment after killpg returned. Report only once it is gone.
    with trio.move_on_after(_KILL_WAIT_S):
        while _group_alive(group):  # noqa: ASYNC110
            await trio.sleep(_GROUP_POLL_S / 2)


def _signal_group(group: int, signum: signal.Signals) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass  # the whole group already exited


def _group_alive(group: int) -> bool:
    """True while a process of ``group`` still runs (zombies do not count)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials (setuid); still there
        pass
    # killpg also finds zombies: orphans that an init which reaps slowly (or never, in some
    # containers) has not collected. Those are gone for our purposes.
    return group in _RUNNING_GROUPS.get()


class _RunningGroups:
    """Process groups with a running (non-zombie) member, from one scan of ``/proc``.

    The scan reads every process's stat file, so it is shared: however many commands are
    being stopped at once (terminating a batch stops them all), ``/proc`` is read at most once
    per ``max_age_s``. It caches what the kernel says, so sharing it between the agents of one
    process is harmless.
    """

    def __init__(self, max_age_s: float) -> None:
        self._max_age_s = max_age_s
        self._at = -math.inf
        self._groups: frozenset[int] = frozenset()

    def get(self) -> frozenset[int]:
        now = time.monotonic()
        if now - self._at >= self._max_age_s:
            self._groups = self._scan()
            self._at = time.monotonic()
        return self._groups

    @staticmethod
    def _scan() -> frozenset[int]:
        groups = set()
        try:
            pids = [name for name in os.listdir("/proc") if name.isdigit()]
        except OSError:  # no /proc: trust killpg (zombies then count as running)
            return _ALL_GROUPS
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z":  # fields: state, ppid, pgrp, ...
                groups.add(int(fields[2]))
        return frozenset(groups)


class _Everything(frozenset[int]):
    def __contains__(self, item: object) -> bool:
        return True


_ALL_GROUPS = _Everything()
_RUNNING_GROUPS = _RunningGroups(max_age_s=0.04)


class _PipeReader:
    """Reads one pipe into coalesced chunks until EOF or until told to give up."""

    def __init__(
        self,
        pipe: trio.abc.ReceiveStream,
        kind: pb.OutputType,
        output: OutputSink,
        chunk_bytes: int = MAX_CHUNK_BYTES,
    ):
        self._pipe = pipe
        self._chunk_bytes = chunk_bytes
        self._widened = False
        self._kind = kind
        self._output = output
        self._buffer = bytearray()
        self._first_ms = 0
        self._flush_at = math.inf
        self._give_up_at = math.inf
        self._scope: trio.CancelScope | None = None

    def give_up_at(self, deadline: float) -> None:
        """Stop waiting for EOF at ``deadline`` (trio time); what was read is still written."""
        self._give_up_at = deadline
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, deadline)

    async def run(self) -> None:
        """Read until EOF (or the give-up deadline), writing chunks to the sink."""
        while True:
            # Only the read is under the deadline: waiting on a slow sink never loses output.
            with trio.CancelScope(deadline=min(self._flush_at, self._give_up_at)) as scope:
                self._scope = scope
                data = await self._pipe.receive_some(self._chunk_bytes - len(self._buffer))
            self._scope = None
            if scope.cancelled_caught:
                if trio.current_time() >= self._give_up_at:
                    break
                await self._flush()
                continue
            if not data:
                break
            if len(data) >= _PIPE_BYTES and not self._widened:
                self._widen()
            if not isinstance(data, bytes):
                data = bytes(data)
            if not self._buffer:
                self._first_ms = unix_ms()
                self._flush_at = trio.current_time() + FLUSH_INTERVAL_S
                if len(data) == self._chunk_bytes:
                    self._flush_at = math.inf
                    await self._output.write(self._kind, data, self._first_ms)
                    continue
            self._buffer += data
            if len(self._buffer) >= self._chunk_bytes:
                await self._flush()
        await self._flush()

    def _widen(self) -> None:
        """The command fills its pipe: make the pipe hold a whole chunk, so one read takes a
        chunk instead of 64 KiB at a time. Only for such streams: pipe memory counts against
        the user's pipe quota (``/proc/sys/fs/pipe-user-pages-soft``); refused is fine."""
        self._widened = True
        try:
            fd = self._pipe.fileno()  # type: ignore[attr-defined]
            fcntl.fcntl(fd, _F_SETPIPE_SZ, self._chunk_bytes)
        except (OSError, AttributeError):
            pass

    async def _flush(self) -> None:
        self._flush_at = math.inf
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            await self._output.write(self._kind, data, self._first_ms)


def _prepare(spec: CommandSpec, cwd: str | None) -> str | pb.BatchCommandResult:
    """Check the working directory and write the script file (in a worker thread)."""
    if cwd is not None and not os.path.isdir(cwd):
        return _could_not_start(spec, f"working directory does not exist: {cwd}")
    for name, value in spec.environment:
        if _PARAM_ENV.fullmatch(name) is None or "\x00" in value:
            return _could_not_start(spec, f"refused environment variable {name[:80]!r}")
    try:
        return _write_script(spec.content)
    except OSError as error:
        return _could_not_start(spec, f"cannot write the script file: {error.strerror or error}")


def _write_script(content: str) -> str:
    fd, path = tempfile.mkstemp(prefix="fleet-command-", suffix=".sh")
    try:
        os.fchmod(fd, 0o700)
        with os.fdopen(fd, "wb", closefd=False) as file:
            file.write(content.encode("utf-8", "surrogateescape"))
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


#: Longest one-line command passed as ``shell -c`` (Linux caps one argument at 128 KiB).
_MAX_INLINE_CHARS = 16 * 1024


def _is_one_line(content: str) -> bool:
    """True for a command given to the shell as ``-c`` text rather than a script file: one
    line (a trailing newline allowed), not a ``#!`` script, short, no NUL byte."""
    return (
        len(content) <= _MAX_INLINE_CHARS
        and "\n" not in content.rstrip("\n")
        and "\r" not in content
        and "\0" not in content
        and not content.startswith("#!")
    )


def _argv(script: str, content: str, shell: str) -> list[str]:
    first_line = content.split("\n", 1)[0].rstrip("\r")
    if first_line.startswith("#!"):
        parts = first_line[2:].strip().split(None, 1)
        if parts:
            return [*parts, script]
    return [shell, script]


def _describe_signal(code: int) -> str:
    if code >= 0:
        return ""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by signal {-code} ({name})"


def _could_not_start(spec: CommandSpec, reason: str) -> pb.BatchCommandResult:
    return _result(spec, pb.CommandStatus.FAILURE, COULD_NOT_START, reason)


def _result(
    spec: CommandSpec, status: pb.CommandStatus, exit_code: int, error_message: str
) -> pb.BatchCommandResult:
    return pb.BatchCommandResult(
        command_id=spec.command_id,
        status=status,
        exit_code=exit_code,
        error_message=error_message,
    )
