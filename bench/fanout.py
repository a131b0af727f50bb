"""``fanout``: one command on N real agents through a real ``fleet-server`` process.

For each N (10, 100, 1,000; ``--quick``: 10, 100) a fresh server (SQLite in a temporary
directory) gets N VPSes through ``POST /api/vps``; N real agent links (``run_agent``) run in
``bench.agents_host`` processes, several links per process. Measured:

- connect: from ``go`` to every agent's first successful handshake;
- POST → final for ``true`` and ``echo hi``: from sending ``POST /api/batch_commands`` to the
  WebSocket feed (``/ws/batch_commands/{id}``, subscribed right after the 202) delivering the
  final status (median of the runs, after one untimed warm-up batch);
- per-child latency: POST sent → the child's ``agent_completed_at`` (when the server handled
  its result; same machine, same clock), p50 and p99 per run, median over runs;
- the server's peak RSS (``VmHWM``) and CPU seconds (``/proc/PID/stat`` utime+stime): for the
  connect phase and per batch.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from ._fleet import Api, agent_host_argvs, fleet_server, timed_batch
from ._metrics import cpu_s, peak_mib, rss_mib
from ._processes import temp_dir, workers
from ._report import BenchError, fmt, log, median, percentile, table

COMMANDS = ("true", "echo hi")


def default_sizes(quick: bool) -> list[int]:
    return [10, 100] if quick else [10, 100, 1000]


async def measure(
    n: int,
    runs: int,
    hosts: int = 4,
    commands: tuple[str, ...] = COMMANDS,
    journal: bool = True,
) -> dict[str, Any]:
    """Everything about fan-out to ``n`` agents on one fresh server (agents with journals)."""
    batch_timeout = 60 + n * 0.2
    async with temp_dir("fleet-bench-fanout-") as tmp, fleet_server(tmp) as server:
        async with Api(server) as api:
            log(f"fanout N={n}: registering {n} VPSes")
            creds = await api.create_vps_many(n)
            ids = [vps_id for vps_id, _ in creds]
            argvs = agent_host_argvs(creds, server.grpc_address, tmp, hosts, journal=journal)
            async with workers(argvs, tmp, "agents") as group:
                cpu0 = cpu_s(server.pid)
                rss0 = rss_mib(server.pid)
                connect_s = await group.go(timeout=120 + n * 0.1)
                if group.failed:
                    log(f"fanout N={n}: {group.failed} agents failed their first attempt; waiting")
                    connect_s += await api.wait_online(n, timeout=120)
                connect_cpu = cpu_s(server.pid) - cpu0
                rss_connected = rss_mib(server.pid)
                log(f"fanout N={n}: {n} agents connected in {connect_s:.2f} s; warm-up batch")
                await timed_batch(api, "true", ids, timeout=batch_timeout, fetch_view=False)
                per_command: dict[str, Any] = {}
                for command in commands:
                    samples = []
                    for r in range(runs):
                        await trio.sleep(0.3)  # let the previous batch's writes settle
                        c0 = cpu_s(server.pid)
                        run = await timed_batch(api, command, ids, timeout=batch_timeout)
                        batch_cpu = cpu_s(server.pid) - c0
                        ok = sum(1 for t in run.view["tasks"] if t["status"] == "SUCCESS")
                        if command == "echo hi":
                            ok = sum(
                                1
                                for t in run.view["tasks"]
                                if t["status"] == "SUCCESS" and t["output_stream_summary"] == ["hi"]
                            )
                        samples.append(
                            {
                                "final_s": run.final_s,
                                "post_s": run.post_s,
                                "child_p50_s": percentile(run.child_latency_s, 50),
                                "child_p99_s": percentile(run.child_latency_s, 99),
                                "server_cpu_s": batch_cpu,
                                "status": run.status,
                                "ok_children": ok,
                            }
                        )
                        log(
                            f"fanout N={n} {command!r} run {r + 1}/{runs}: "
                            f"{run.final_s:.3f} s {run.status} ({ok}/{n} ok)"
                        )
                        if ok != n:
                            raise BenchError(f"{command!r} on {n}: only {ok} children succeeded")
                    per_command[command] = {
                        "final_s": median([s["final_s"] for s in samples]),
                        "child_p50_s": median([s["child_p50_s"] for s in samples]),
                        "child_p99_s": median([s["child_p99_s"] for s in samples]),
                        "server_cpu_s": median([s["server_cpu_s"] for s in samples]),
                        "runs": samples,
                    }
                hosts_rss = group.rss_mib()
                hosts_cpu = sum(cpu_s(pid) for pid in group.pids)
            return {
                "n": n,
                "journal": journal,
                "agent_processes": len(argvs),
                "connect_s": connect_s,
                "connect_failed_first_attempt": group.failed,
                "connect_server_cpu_s": connect_cpu,
                "server_rss_before_connect_mib": rss0,
                "server_rss_connected_mib": rss_connected,
                "server_peak_rss_mib": peak_mib(server.pid),
                "server_cpu_total_s": cpu_s(server.pid),
                "agent_hosts_rss_mib": hosts_rss,
                "agent_hosts_cpu_s": hosts_cpu,
                "commands": per_command,
            }


async def run(
    quick: bool = False,
    sizes: list[int] | None = None,
    runs: int | None = None,
    journal: str = "on",
) -> dict[str, Any]:
    """``journal``: "on" (agents keep journals, as ``fleet-agent`` does), "off", or "both"
    (each N measured without, then with, in the same run: the journal's cost)."""
    runs = runs or (3 if quick else 5)
    results = []
    without = []
    for n in sizes or default_sizes(quick):
        if journal in ("off", "both"):
            (results if journal == "off" else without).append(await measure(n, runs, journal=False))
        if journal in ("on", "both"):
            results.append(await measure(n, runs, journal=True))
    out: dict[str, Any] = {"benchmark": "fanout", "runs_per_figure": runs, "sizes": results}
    if without:
        out["sizes_without_journal"] = without
    return out


def render(result: dict[str, Any]) -> str:
    rows = []
    sizes = sorted(
        result["sizes"] + result.get("sizes_without_journal", []),
        key=lambda s: (s["n"], s.get("journal", True)),
    )
    for s in sizes:
        t, e = s["commands"].get("true", {}), s["commands"].get("echo hi", {})
        batches = 1 + 2 * result["runs_per_figure"]  # warm-up + the timed batches
        rows.append(
            [
                s["n"],
                "on" if s.get("journal", True) else "off",
                fmt(s["connect_s"], "s"),
                fmt(t.get("final_s", math.nan), "s"),
                fmt(e.get("final_s", math.nan), "s"),
                f"{fmt(e.get('child_p50_s', math.nan))}/{fmt(e.get('child_p99_s', math.nan))} s",
                fmt(s["server_peak_rss_mib"], "MiB", 1),
                fmt(s["connect_server_cpu_s"], "s", 2),
                fmt(e.get("server_cpu_s", math.nan), "s", 2),
                fmt(s["agent_hosts_cpu_s"] / (batches * s["n"]) * 1000, "ms", 2),
            ]
        )
    return (
        f"fanout (real server + real agents; medians of {result['runs_per_figure']} runs)\n"
        + table(
            [
                "N",
                "journal",
                "connect",
                "true final",
                "echo final",
                "echo child p50/p99",
                "srv peak RSS",
                "srv CPU connect",
                "srv CPU/echo batch",
                "agent CPU/command",
            ],
            rows,
        )
    )
