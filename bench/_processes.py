"""Processes of a benchmark: started here, always stopped here (SIGTERM, then SIGKILL).

Everything runs under trio in the bench process. ``workers`` starts load generators that speak a
small line protocol on stdin/stdout (``ready``, ``go``, ``connected OK FAILED SECONDS``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from ._metrics import rss_mib
from ._report import BenchError

__all__ = [
    "PY",
    "ROOT",
    "Workers",
    "child_env",
    "open_log",
    "spawn",
    "split",
    "stop_process",
    "tail",
    "temp_dir",
    "workers",
]

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


async def stop_process(process: trio.Process, grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; always waits. Call shielded."""
    if process.returncode is None:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        with trio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        await process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


async def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    stdin: int = subprocess.DEVNULL,
    stdout: int | BinaryIO | None = None,
    env: dict[str, str] | None = None,
) -> trio.Process:
    """Start a process with its stderr (and stdout unless given) in ``log_path``."""
    with open_log(log_path) as err:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=stdin,
            stdout=err if stdout is None else stdout,
            stderr=err,
            env=child_env() if env is None else env,
            cwd=ROOT,
        )


@asynccontextmanager
async def temp_dir(prefix: str) -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _Lines:
    """Line reader over a trio receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")


@dataclass
class Workers:
    """Worker processes speaking the ready / go / ``connected OK FAILED SECONDS`` protocol.

    ``bench.agents_host`` (real agents) and ``bench.scale_gen`` (protocol-level agents) both
    print ``ready`` once imported, connect everything when they read ``go``, print
    ``connected …`` and then hold their connections until their stdin closes.
    """

    processes: list[trio.Process]
    lines: list[_Lines]
    logs: list[Path]
    connected: int = 0
    failed: int = 0
    per_process_s: list[float] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def go(self, timeout: float) -> float:
        """Tell every worker to connect; return the seconds until the last one reported."""
        start = time.perf_counter()
        for p in self.processes:
            assert p.stdin is not None
            await p.stdin.send_all(b"go\n")
        self.per_process_s = []
        try:
            with trio.fail_after(timeout):
                for n, reader in enumerate(self.lines):
                    line = await self._expect(n, reader, "connected")
                    _, ok, failed, seconds = line.split()
                    self.connected += int(ok)
                    self.failed += int(failed)
                    self.per_process_s.append(float(seconds))
        except trio.TooSlowError:
            raise BenchError(f"workers did not connect within {timeout} s") from None
        return time.perf_counter() - start

    async def _expect(self, n: int, reader: _Lines, word: str) -> str:
        while True:
            try:
                line = await reader.readline()
            except EOFError:
                raise BenchError(
                    f"worker {n} exited before '{word}':\n{tail(self.logs[n])}"
                ) from None
            if line.startswith(word):
                return line

    def rss_mib(self) -> float:
        return sum(rss_mib(pid) for pid in self.pids)


@asynccontextmanager
async def workers(
    argvs: Sequence[Sequence[str]], tmp: Path, name: str, ready_timeout: float = 60
) -> AsyncIterator[Workers]:
    processes: list[trio.Process] = []
    logs: list[Path] = []
    try:
        for n, argv in enumerate(argvs):
            log_path = tmp / f"{name}-{n}.log"
            logs.append(log_path)
            processes.append(
                await spawn(argv, log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
        group = Workers(processes, [_Lines(p.stdout) for p in processes], logs)  # type: ignore[arg-type]
        try:
            with trio.fail_after(ready_timeout):
                for n, reader in enumerate(group.lines):
                    await group._expect(n, reader, "ready")
        except trio.TooSlowError:
            raise BenchError(f"{name} workers not ready within {ready_timeout} s") from None
        yield group
    finally:
        with trio.CancelScope(shield=True):
            for p in processes:
                if p.stdin is not None:
                    try:
                        await p.stdin.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            with trio.move_on_after(10):
                for p in processes:
                    await p.wait()
            for p in processes:
                await stop_process(p, grace=5)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]
