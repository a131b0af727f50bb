"""Host many real agents in one process: ``run_agent`` × N inside one ``trio_asyncio`` loop.

    python -m bench.agents_host --server HOST:PORT --agents FILE.json

``FILE.json`` is a list of ``[vps_id, secret]``; with ``--state-root DIR`` each agent keeps its
journal in ``DIR/vps-N`` (as ``fleet-agent`` always does), else none. Protocol on stdin/stdout (see
``bench._processes.Workers``): print ``ready`` once imported; on a ``go`` line start every agent
at once and print ``connected OK FAILED SECONDS`` when each has made its first connection
attempt (``run_agent``'s ``started(connected)``); keep running until stdin closes, then cancel
the agents (which stops their commands) and exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import trio
import trio_asyncio

from fleet.agent.config import AgentConfig, Secret
from fleet.agent.run import run_agent


async def _read_line(stream: trio.lowlevel.FdStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(1024)
        if not chunk:
            break
        data += chunk
    return data


async def host(
    server: str,
    agents: list[tuple[int, str]],
    max_concurrent: int,
    state_root: str | None,
    connect_timeout: float = 120.0,
) -> None:
    configs = [
        AgentConfig(
            server=server,
            vps_id=vps_id,
            secret=Secret(secret),
            log_level="WARNING",
            max_concurrent=max_concurrent,
            connect_timeout_s=connect_timeout,
            reconnect_min_s=0.2,
            reconnect_max_s=2.0,
            state_dir=Path(state_root, f"vps-{vps_id}") if state_root else None,
        )
        for vps_id, secret in agents
    ]
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    print("ready", flush=True)
    if not (await _read_line(stdin)).startswith(b"go"):
        return
    async with trio_asyncio.open_loop():
        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            outcomes: list[bool] = []
            all_started = trio.Event()

            async def one(config: AgentConfig) -> None:
                outcomes.append(await nursery.start(functools.partial(run_agent, config)))
                if len(outcomes) == len(configs):
                    all_started.set()

            for config in configs:
                nursery.start_soon(one, config)
            await all_started.wait()
            ok = sum(outcomes)
            seconds = time.perf_counter() - start
            print(f"connected {ok} {len(outcomes) - ok} {seconds:.4f}", flush=True)
            while await stdin.receive_some(1024):
                pass  # hold the agents until the bench closes our stdin
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--agents", required=True, help="JSON file: [[vps_id, secret], ...]")
    parser.add_argument("--max-concurrent", type=int, default=32)
    parser.add_argument(
        "--connect-timeout", type=float, default=120.0, help="fleet-agent's is 15 (default 120)"
    )
    parser.add_argument(
        "--state-root", help="give each agent a journal in STATE_ROOT/vps-N (default: none)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with open(args.agents, encoding="utf-8") as f:
        agents = [(int(v), str(s)) for v, s in json.load(f)]
    trio.run(host, args.server, agents, args.max_concurrent, args.state_root, args.connect_timeout)


if __name__ == "__main__":
    main()
