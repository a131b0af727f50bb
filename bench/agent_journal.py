"""The agent journal's own cost per command, without a server (``python bench/agent_journal.py``).

Per command the agent journals: ``accept`` (fsynced, in a worker thread), ``started`` (one
write), ``finish`` (fsynced, in a worker thread) and ``acknowledge`` (one write). This runs that
sequence for N commands, one after the other (the latency a command sees) and 32 at a time
(an agent at ``--max-concurrent``), through ``trio.to_thread`` exactly like the agent, in a
state directory on the given filesystem (default: a temporary directory), and prints
wall-clock and CPU time per command. ``fanout --agent-journal both`` shows the same cost seen
end to end through a server.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import trio

from fleet.agent.journal import ProcessInfo, StoredResult
from fleet.agent.statedir import Journal

RESULT = StoredResult(1, 0, "")
PROCESS = ProcessInfo(pid=os.getpid(), start_ticks=1, boot_id="bench")


async def one(journal: Journal, command_id: str) -> None:
    await trio.to_thread.run_sync(journal.accept, command_id)
    journal.started(command_id, PROCESS)
    await trio.to_thread.run_sync(journal.finish, command_id, RESULT)
    journal.acknowledge(command_id)


async def measure(root: Path, n: int, concurrency: int) -> tuple[float, float, int]:
    journal = Journal(root / f"state-{concurrency}")
    journal.open()
    try:
        limit = trio.Semaphore(concurrency)

        async def limited(i: int) -> None:
            async with limit:
                await one(journal, f"command-{concurrency}-{i:07d}")

        wall, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(limited, i)
        return time.perf_counter() - wall, time.process_time() - cpu, journal.size()
    finally:
        journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="commands per run (2000)")
    parser.add_argument("--dir", help="where to put the state directories (a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-journal-", dir=args.dir) as tmp:
        print(f"agent journal, {args.n} commands, state dir on {tmp}")
        print(f"{'in flight':>9}  {'wall/command':>12}  {'CPU/command':>11}  {'file at end':>11}")
        for concurrency in (1, 32):
            wall, cpu, size = trio.run(measure, Path(tmp), args.n, concurrency)
            print(
                f"{concurrency:>9}  {wall / args.n * 1e6:>9.0f} µs  {cpu / args.n * 1e6:>8.0f} µs"
                f"  {size / 1024:>8.1f} KiB"
            )


if __name__ == "__main__":
    main()
