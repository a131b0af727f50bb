"""Print the memory of an idle, connected agent (``python -m fleet.agent`` in its own process).

    python bench/agent_idle_rss.py              # settle 5 s after the handshake
    python bench/agent_idle_rss.py --settle 30

Starts the benchmark's in-process grpclib server (from ``agent_throughput.py``), starts the agent
as a separate process, runs one small command through it (so the command path has been
imported and used), lets it sit idle, then reads ``/proc/<pid>/status`` and
``/proc/<pid>/smaps_rollup``: RSS (what ``ps`` shows; it counts shared library pages), PSS and
private memory (what this agent alone costs).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_throughput import BenchServer, agent_environment, vm_kib


def smaps_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


async def measure(settle_s: float) -> dict[str, float]:
    async with trio_asyncio.open_loop():
        server = BenchServer()
        await server.start()
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-m", "fleet.agent"],
                    env=agent_environment(server.port),
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
            )
            with trio.fail_after(60):
                await server.connected.wait()
                await server.run("warm-up", "echo warm")
                await server.finished.wait()
            await trio.sleep(settle_s)  # idle on purpose: this is what we measure
            smaps = smaps_kib(process.pid)
            figures = {
                "rss_mib": vm_kib(process.pid, "VmRSS") / 1024,
                "peak_rss_mib": vm_kib(process.pid, "VmHWM") / 1024,
                "pss_mib": smaps.get("Pss", 0) / 1024,
                "private_mib": (smaps.get("Private_Clean", 0) + smaps.get("Private_Dirty", 0))
                / 1024,
                "threads": float(len(os.listdir(f"/proc/{process.pid}/task"))),
            }
            process.terminate()
            with trio.fail_after(15):
                await process.wait()
            await server.stop()
            nursery.cancel_scope.cancel()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before measuring")
    args = parser.parse_args()
    figures = trio.run(measure, args.settle)
    print(f"idle connected agent after {args.settle:g} s:")
    print(f"  RSS {figures['rss_mib']:.1f} MiB (peak {figures['peak_rss_mib']:.1f} MiB)")
    print(f"  PSS {figures['pss_mib']:.1f} MiB, private {figures['private_mib']:.1f} MiB")
    print(f"  threads {figures['threads']:.0f}")


if __name__ == "__main__":
    main()
