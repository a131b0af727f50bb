"""``api``: reading a 1,000-task batch, and the live feed's latency agent → subscriber.

One fresh server, 1,000 VPSes, 1,000 real agent links (``bench.agents_host`` × 4).

- GET of a 1,000-task batch: ``echo hi`` on all 1,000, then sequential
  ``GET /api/batch_commands/{id}`` over one keep-alive connection, after the batch is final and
  written (read from the store), and while a 1,000-task ``sleep`` batch runs (built from the
  supervisor's memory); p50/p99 per round, median over rounds.
- Terminate: the running 1,000-task batch is terminated; how long until final, and how its
  children ended (measured last: it is the heaviest moment for the agents).
- Feed latency: one agent runs a Python one-liner printing ``time.time_ns()`` 1,000 times a
  second; a WebSocket subscriber of ``/ws/batch_commands/{id}`` takes every line of every
  ``NEW_LOG_OUTPUT`` event and records its arrival time minus the stamp in it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import trio

from ._fleet import Api, agent_host_argvs, child_statuses, fleet_server, timed_batch, watch_batch
from ._processes import PY, temp_dir, workers
from ._report import BenchError, fmt, log, median, percentile, table

TASKS = 1000
RATE = 1000  # lines per second

_PRINTER = """exec {py} -c '
import sys, time
lines, rate = {lines}, {rate}
time.sleep(1.0)
start = time.time()
for i in range(lines):
    delay = start + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    sys.stdout.write(str(time.time_ns()) + "\\n")
    sys.stdout.flush()
'
"""


async def _get_latencies(server_url: str, token: str, batch_id: str, count: int) -> list[float]:
    """``count`` sequential GETs on one keep-alive connection; seconds each."""
    out = []
    async with httpx.AsyncClient(
        base_url=server_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    ) as client:
        for _ in range(count):
            start = time.perf_counter()
            response = await client.get(f"/api/batch_commands/{batch_id}")
            body = response.content
            out.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise BenchError(f"GET batch: {response.status_code}")
        tasks = len(json.loads(body)["tasks"])
        if tasks != TASKS:
            raise BenchError(f"the batch has {tasks} tasks, expected {TASKS}")
    return out


def _summary(rounds: list[list[float]]) -> dict[str, Any]:
    return {
        "p50_ms": median([percentile(r, 50) * 1000 for r in rounds]),
        "p99_ms": median([percentile(r, 99) * 1000 for r in rounds]),
        "requests_per_round": len(rounds[0]) if rounds else 0,
        "rounds": [
            {"p50_ms": percentile(r, 50) * 1000, "p99_ms": percentile(r, 99) * 1000} for r in rounds
        ],
    }


async def _feed_latency(api: Api, vps_id: int, seconds: float) -> dict[str, Any]:
    lines = int(seconds * RATE)
    command = _PRINTER.format(py=PY, lines=lines, rate=RATE)
    batch_id = await api.post_batch(command, [vps_id])
    latencies: list[float] = []
    partial = ""

    def on_event(event: dict[str, Any], _now: float) -> None:
        nonlocal partial
        if event.get("type") != "NEW_LOG_OUTPUT" or event.get("stream") != "stdout":
            return
        arrival = time.time_ns()
        text = partial + event["data"]
        *complete, partial = text.split("\n")
        for line in complete:
            if line:
                latencies.append((arrival - int(line)) / 1e6)

    feed = await watch_batch(api.server, batch_id, timeout=seconds + 60, on_event=on_event)
    if feed.status != "COMPLETED_SUCCESSFULLY":
        task = (await api.get_batch(batch_id))["tasks"][0]
        raise BenchError(
            f"the printer batch ended {feed.status}: {task['status']} {task['error_message']}"
        )
    if feed.snapshots != 1:
        raise BenchError("the feed was overrun and resubscribed: lines were missed")
    if len(latencies) != lines:
        raise BenchError(f"the subscriber saw {len(latencies)} lines of {lines}")
    return {
        "lines": lines,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


async def run(quick: bool = False, runs: int | None = None) -> dict[str, Any]:
    runs = runs or (2 if quick else 3)
    requests = 50 if quick else 60
    feed_seconds = 5.0 if quick else 10.0
    async with temp_dir("fleet-bench-api-") as tmp, fleet_server(tmp) as server:
        async with Api(server) as api:
            log(f"api: registering {TASKS} VPSes")
            creds = await api.create_vps_many(TASKS)
            ids = [vps_id for vps_id, _ in creds]
            argvs = agent_host_argvs(creds, server.grpc_address, tmp, 4)
            async with workers(argvs, tmp, "agents") as group:
                await group.go(timeout=300)
                if group.failed:
                    await api.wait_online(TASKS, timeout=120)
                done = await timed_batch(api, "echo hi", ids, timeout=300, fetch_view=False)
                if done.status != "COMPLETED_SUCCESSFULLY":
                    raise BenchError(f"the 1,000-task batch ended {done.status}")
                await trio.sleep(1.0)  # written back: the GET now reads the store
                stored = []
                for r in range(runs):
                    stored.append(
                        await _get_latencies(server.http_url, server.token, done.batch_id, requests)
                    )
                    log(
                        f"api: GET stored batch round {r + 1}: "
                        f"p50 {percentile(stored[-1], 50) * 1000:.1f} ms"
                    )
                feeds = []
                for r in range(runs):
                    feeds.append(await _feed_latency(api, ids[0], feed_seconds))
                    log(
                        f"api: feed round {r + 1}: p50 {feeds[-1]['p50_ms']:.1f} ms, "
                        f"p99 {feeds[-1]['p99_ms']:.1f} ms"
                    )
                live_id = await api.post_batch("sleep 60", ids)
                await trio.sleep(3.0)
                live = []
                for r in range(runs):
                    live.append(
                        await _get_latencies(server.http_url, server.token, live_id, requests)
                    )
                    log(
                        f"api: GET live batch round {r + 1}: "
                        f"p50 {percentile(live[-1], 50) * 1000:.1f} ms"
                    )
                start = time.perf_counter()
                await api.request("POST", f"/api/batch_commands/{live_id}/terminate")
                ended = await watch_batch(server, live_id, timeout=120)
                assert ended.final_at is not None
                terminate_s = ended.final_at - start
                terminated = child_statuses(await api.get_batch(live_id))
                log(
                    f"api: terminate of the running 1,000-task batch → {ended.status} "
                    f"in {terminate_s:.2f} s; children {terminated}"
                )
    return {
        "benchmark": "api",
        "runs_per_figure": runs,
        "tasks": TASKS,
        "get_stored": _summary(stored),
        "get_live": _summary(live),
        "terminate_1000_s": terminate_s,
        "terminate_1000_children": terminated,
        "feed": {
            "lines_per_s": RATE,
            "seconds": feed_seconds,
            "p50_ms": median([f["p50_ms"] for f in feeds]),
            "p99_ms": median([f["p99_ms"] for f in feeds]),
            "max_ms": max(f["max_ms"] for f in feeds),
            "rounds": feeds,
        },
    }


def render(result: dict[str, Any]) -> str:
    s, live, feed = result["get_stored"], result["get_live"], result["feed"]
    return (
        "api (1,000-task batch, keep-alive client; "
        f"medians of {result['runs_per_figure']} rounds)\n"
        + table(
            ["what", "p50", "p99"],
            [
                [
                    f"GET finished batch (store) ×{s['requests_per_round']}",
                    fmt(s["p50_ms"], "ms", 1),
                    fmt(s["p99_ms"], "ms", 1),
                ],
                [
                    f"GET running batch (memory) ×{live['requests_per_round']}",
                    fmt(live["p50_ms"], "ms", 1),
                    fmt(live["p99_ms"], "ms", 1),
                ],
                [
                    f"feed latency, {feed['lines_per_s']} lines/s for {feed['seconds']:.0f} s",
                    fmt(feed["p50_ms"], "ms", 1),
                    fmt(feed["p99_ms"], "ms", 1),
                ],
            ],
        )
        + "\nterminate of the running 1,000-task batch → final: "
        f"{result['terminate_1000_s']:.2f} s, children {result['terminate_1000_children']}"
    )
