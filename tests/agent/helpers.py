from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from typing import Any

import trio

from fleet.proto import agent_service as pb

STDOUT = pb.OutputType.STDOUT
STDERR = pb.OutputType.STDERR


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_reaped(pid: int) -> None:
    """Wait until ``pid`` no longer exists at all (exited and reaped by its parent).

    A process that is not our child gives no notification when it goes, so this looks every
    few milliseconds; callers bound it with ``trio.fail_after``.
    """
    while await trio.Path(f"/proc/{pid}").exists():  # noqa: ASYNC110 - nothing to wait on
        await trio.sleep(0.005)


def python_script(code: str) -> str:
    """Command content run by this test's Python through its ``#!`` line."""
    return f"#!{sys.executable}\n{code}"


def binary_payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Writes two seeded random payloads to stdout and stderr in alternating 100 kB pieces.
BINARY_WRITER = """
import random, sys
out = random.Random({out_seed}).randbytes({out_size})
err = random.Random({err_seed}).randbytes({err_size})
step = 100_000
for i in range(0, max(len(out), len(err)), step):
    sys.stdout.buffer.write(out[i:i + step]); sys.stdout.flush()
    sys.stderr.buffer.write(err[i:i + step]); sys.stderr.flush()
"""


class ListSink:
    """An OutputSink that keeps every chunk and lets tests wait for output."""

    def __init__(self) -> None:
        self.chunks: list[tuple[pb.OutputType, bytes, int]] = []
        self._changed = trio.lowlevel.ParkingLot()

    async def write(self, kind: pb.OutputType, data: bytes, timestamp: int) -> None:
        self.chunks.append((kind, data, timestamp))
        self._changed.unpark_all()
        await trio.lowlevel.checkpoint()

    def data(self, kind: pb.OutputType) -> bytes:
        return b"".join(data for k, data, _ in self.chunks if k == kind)

    async def wait_for(self, predicate: Callable[[], Any]) -> Any:
        while not (value := predicate()):
            await self._changed.park()
        return value
