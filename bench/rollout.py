"""``rollout``: a rate-limited batch on N real agents through a real ``fleet-server``.

A fresh server (SQLite in a temporary directory) gets N VPSes (1,000; ``--quick``: 200); N real
agent links run in ``bench.agents_host`` processes. Two batches:

1. ``sleep 0.2`` at ``max_concurrency`` C (50): every command prints the agent-side clock when
   it starts and when it ends (``date +%s.%N``; all agents run on this machine, so one clock).
   From those intervals: the highest number of commands running at once (must never exceed C),
   and the batch's wall time (POST → final status on the feed) against the ideal
   ``N / C × 0.2 s``.
2. The same with ``max_errors 0``, where the first command to start fails at once (it wins an
   atomic ``mkdir``): how many commands *started* (agent clock) after the server recorded that
   failure (the child's ``agent_completed_at``), how many ran in all, how many were SKIPPED.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import trio

from ._fleet import Api, agent_host_argvs, fleet_server, parse_iso, watch_batch
from ._processes import temp_dir, workers
from ._report import BenchError, fmt, log, percentile, table

SLEEP_S = 0.2
#: Prints "start end" on the agent's clock around the sleep.
TIMED = f's=$(date +%s.%N); sleep {SLEEP_S}; echo "$s $(date +%s.%N)"'


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The highest number of intervals open at one instant (an end before a start at a tie)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = running = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def intervals(view: dict[str, Any]) -> list[tuple[float, float]]:
    return [(s, e) for s, e, _ in timings(view)]


def timings(view: dict[str, Any]) -> list[tuple[float, float, float]]:
    """Per child: its command's start and end (agent clock), and when the server recorded its
    result (``agent_completed_at``)."""
    out = []
    for task in view["tasks"]:
        lines = task.get("output_stream_summary") or []
        recorded = parse_iso(task.get("agent_completed_at"))
        if not lines or recorded is None:
            continue
        parts = lines[-1].split()
        if len(parts) == 2:
            out.append((float(parts[0]), float(parts[1]), recorded))
    return out


def pipeline(view: dict[str, Any], concurrency: int) -> dict[str, float]:
    """Where a slot's time goes: result lag (command end → result recorded by the server) and
    slot reuse (a result recorded → the next queued command starting on its agent)."""
    rows = timings(view)
    starts = sorted(s for s, _, _ in rows)
    lag = [recorded - end for _, end, recorded in rows]
    reuse = []
    for recorded in sorted(r for _, _, r in rows)[: max(len(rows) - concurrency, 0)]:
        i = bisect.bisect_left(starts, recorded)
        if i < len(starts):
            reuse.append(starts[i] - recorded)
    return {
        "result_lag_p50_s": percentile(lag, 50),
        "result_lag_p90_s": percentile(lag, 90),
        "slot_reuse_p50_s": percentile(reuse, 50),
        "slot_reuse_p90_s": percentile(reuse, 90),
    }


async def timed(api: Api, body: dict[str, Any], timeout: float) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    answer = await api.request("POST", "/api/batch_commands", json=body)
    batch_id = str(answer["batch_command_id"])
    feed = await watch_batch(api.server, batch_id, timeout=timeout)
    assert feed.final_at is not None
    wall = feed.final_at - start
    await trio.sleep(0.5)  # the final batch's last writes reach the store
    return wall, await api.get_batch(batch_id)


async def run(
    quick: bool = False, n: int | None = None, concurrency: int = 50, runs: int | None = None
) -> dict[str, Any]:
    n = n or (200 if quick else 1000)
    ideal = n / concurrency * SLEEP_S
    timeout = 120 + ideal * 10
    async with temp_dir("fleet-bench-rollout-") as tmp, fleet_server(tmp) as server:
        async with Api(server) as api:
            log(f"rollout N={n}: registering {n} VPSes")
            creds = await api.create_vps_many(n)
            ids = [vps_id for vps_id, _ in creds]
            argvs = agent_host_argvs(creds, server.grpc_address, tmp, 4)
            async with workers(argvs, tmp, "agents") as group:
                connect_s = await group.go(timeout=120 + n * 0.1)
                if group.failed:
                    connect_s += await api.wait_online(n, timeout=120)
                log(f"rollout N={n}: connected in {connect_s:.1f} s; max_concurrency {concurrency}")
                wall, view = await timed(
                    api,
                    {"command_content": TIMED, "target_vps_ids": ids,
                     "max_concurrency": concurrency},
                    timeout,
                )  # fmt: skip
                spans = intervals(view)
                ok = sum(1 for t in view["tasks"] if t["status"] == "SUCCESS")
                if ok != n or len(spans) != n:
                    raise BenchError(f"only {ok}/{n} succeeded ({len(spans)} timed)")
                peak = peak_overlap(spans)
                slots = pipeline(view, concurrency)
                log(f"rollout: peak {peak} at once, wall {wall:.2f} s (ideal {ideal:.2f} s)")
                # The same batch without a limit: what this machine does at full fan-out.
                wall_all, view_all = await timed(
                    api, {"command_content": TIMED, "target_vps_ids": ids}, timeout
                )
                log(f"rollout: without max_concurrency {wall_all:.2f} s")

                lock = tmp / "first-fails"
                failing = f"mkdir {lock} 2>/dev/null && {{ echo $(date +%s.%N); exit 1; }}; {TIMED}"
                wall_err, view_err = await timed(
                    api,
                    {"command_content": failing, "target_vps_ids": ids,
                     "max_concurrency": concurrency, "max_errors": 0},
                    timeout,
                )  # fmt: skip
                failed = [t for t in view_err["tasks"] if t["status"] == "FAILURE"]
                if len(failed) != 1:
                    raise BenchError(f"expected one failure, got {len(failed)}")
                recorded = parse_iso(failed[0]["agent_completed_at"])
                assert recorded is not None
                starts = [s for s, _ in intervals(view_err)]
                after = sum(1 for s in starts if s > recorded)
                counts: dict[str, int] = {}
                for task in view_err["tasks"]:
                    counts[task["status"]] = counts.get(task["status"], 0) + 1
                log(f"rollout max_errors 0: {after} started after the failure; {counts}")
    return {
        "benchmark": "rollout",
        "n": n,
        "max_concurrency": concurrency,
        "sleep_s": SLEEP_S,
        "connect_s": connect_s,
        "peak_running": peak,
        "wall_s": wall,
        "ideal_s": ideal,
        "overhead_s": wall - ideal,
        "pipeline": slots,
        "unlimited_wall_s": wall_all,
        "unlimited_peak_running": peak_overlap(intervals(view_all)),
        "errors_run": {
            "wall_s": wall_err,
            "started_after_failure_recorded": after,
            "ran": len(starts) + 1,
            "counts": counts,
            "stop_reason": view_err.get("stop_reason"),
        },
    }


def render(result: dict[str, Any]) -> str:
    e, p = result["errors_run"], result["pipeline"]
    rows = [
        ["targets", result["n"]],
        ["max_concurrency", result["max_concurrency"]],
        ["highest running at once (agent clocks)", result["peak_running"]],
        ["wall time, POST → final on the feed", fmt(result["wall_s"], "s", 2)],
        ["ideal N / C × 0.2 s", fmt(result["ideal_s"], "s", 2)],
        ["overhead over the ideal", fmt(result["overhead_s"], "s", 2)],
        ["result lag p50/p90 (command end → recorded)",
         f"{fmt(p['result_lag_p50_s'], 's', 3)} / {fmt(p['result_lag_p90_s'], 's', 3)}"],
        ["slot reuse p50/p90 (recorded → next command starts)",
         f"{fmt(p['slot_reuse_p50_s'], 's', 3)} / {fmt(p['slot_reuse_p90_s'], 's', 3)}"],
        ["same batch without a limit: wall time", fmt(result["unlimited_wall_s"], "s", 2)],
        ["same batch without a limit: highest running at once",
         result["unlimited_peak_running"]],
        ["max_errors 0: started after the failure was recorded",
         e["started_after_failure_recorded"]],
        ["max_errors 0: commands that ran (incl. the failing one)", e["ran"]],
        ["max_errors 0: SKIPPED", e["counts"].get("SKIPPED", 0)],
        ["max_errors 0: wall time", fmt(e["wall_s"], "s", 2)],
    ]  # fmt: skip
    ok = "yes" if result["peak_running"] <= result["max_concurrency"] else "NO"
    return (
        f"rollout (real server + {result['n']} real agents; sleep {result['sleep_s']} s each; "
        f"peak ≤ max_concurrency: {ok})\n" + table(["figure", "value"], rows)
    )
