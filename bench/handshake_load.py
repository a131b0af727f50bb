"""Handshakes under load: 200 real agents reconnect at once into 10 running batches.

    python -m bench.handshake_load [--agents 200] [--batches 10] [--rounds 2]

A fresh ``fleet-server`` (SQLite), N agents in 2 ``bench.agents_host`` processes with journals
and fleet-agent's own 15 s connect timeout (connect + handshake answer). Per round: B batches
of ``sleep 4; echo done`` on every agent are posted at once, then both agent processes are
SIGKILLed and started again on the same journals, so N agents hand-shake at once, each listing
B open commands for the server to reconcile, while the batches run. Printed per round: seconds
until every agent connected, agents that gave up ("no handshake answer within 15 s"), and the
server's ERROR records and tracebacks (an expected disconnect is one info line: zero is the
target), then the batches' final statuses.
"""

from __future__ import annotations

import argparse
import collections
import signal
import time
from pathlib import Path

import trio

from ._fleet import Api, agent_host_argvs, fleet_server
from ._processes import temp_dir, workers
from ._report import BenchError, log

FINAL = {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}


def _count(paths: list[Path], *needles: str) -> dict[str, int]:
    text = "".join(p.read_text(errors="replace") for p in paths if p.exists())
    return {needle: text.count(needle) for needle in needles}


async def _post_all(api: Api, batches: int, ids: list[int]) -> list[str]:
    """POST ``batches`` batches on ``ids`` at once."""
    posted: list[str] = []

    async def post() -> None:
        posted.append(await api.post_batch("sleep 4; echo done", ids))

    async with trio.open_nursery() as nursery:
        for _ in range(batches):
            nursery.start_soon(post)
    return posted


async def _final(api: Api, batch_id: str) -> str:
    """The batch's final status (polled every 0.25 s; the caller bounds it)."""
    while True:
        status = str((await api.get_batch(batch_id))["overall_status"])
        if status in FINAL:
            return status
        await trio.sleep(0.25)


async def run(n: int, batches: int, rounds: int) -> None:
    async with temp_dir("fleet-handshakes-") as tmp:
        async with fleet_server(tmp, "--reconnect-grace", "30") as server:
            async with Api(server) as api:
                creds = await api.create_vps_many(n)
                ids = [vps_id for vps_id, _ in creds]
                argvs = [
                    [*argv, "--connect-timeout", "15"]
                    for argv in agent_host_argvs(creds, server.grpc_address, tmp, 2)
                ]
                print("round  connect  gave up  server ERROR  tracebacks  batches")
                for r in range(rounds):
                    async with workers(argvs, tmp, f"agents-a{r}") as first:
                        await first.go(120)
                        await api.wait_online(n, 60)
                        posted = await _post_all(api, batches, ids)
                        await trio.sleep(1.0)  # every command is running
                        for process in first.processes:
                            process.send_signal(signal.SIGKILL)
                    async with workers(argvs, tmp, f"agents-b{r}") as second:
                        start = time.perf_counter()
                        await second.go(120)
                        await api.wait_online(n, 60)
                        connect = time.perf_counter() - start
                        finals: collections.Counter[str] = collections.Counter()
                        with trio.fail_after(120):
                            for batch_id in posted:
                                finals[await _final(api, batch_id)] += 1
                        logs = sorted(tmp.glob(f"agents-b{r}-*.log"))
                        gave_up = _count(logs, "no handshake answer")["no handshake answer"]
                        server_log = _count([server.log_path], " ERROR ", "Traceback")
                        print(
                            f"{r:>5}  {connect:6.2f} s  {gave_up:>7}  "
                            f"{server_log[' ERROR ']:>12}  {server_log['Traceback']:>10}  "
                            + ", ".join(f"{v}× {k}" for k, v in finals.items()),
                            flush=True,
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        trio.run(run, args.agents, args.batches, args.rounds)
    except BenchError as exc:
        log(f"handshake_load: {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
