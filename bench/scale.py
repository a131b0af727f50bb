"""``scale``: 10,000 agent streams held by protocol-level generators against one server.

A fresh server gets 10,000 VPSes through ``POST /api/vps`` (64 requests in flight); then, per
round, 4 ``bench.scale_gen`` processes (asyncio + grpclib + Google protobuf) open one HTTP/2
connection and stream per VPS and answer every command instantly with a SUCCESS result.
Measured per round: connect time (``go`` → every stream authenticated), server RSS with all
streams connected (``VmRSS``, 2 s after the last connect) against the RSS before, and POST →
final of a 10,000-target ``true`` batch as a feed subscriber sees it. Between rounds the
generators exit and the server sees every stream close. ``--quick``: 2,000 agents, 1 round.

Each round also runs a second batch with nobody subscribed to its feed (a UI watching a
10,000-task batch makes the server build a 10,000-task snapshot and an event per change): its
POST → final is the batch's ``completed_at`` (server clock), found by polling the one-line
summary ``GET /api/batch_commands?limit=1`` every 0.2 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from ._fleet import Api, fleet_server, timed_batch
from ._metrics import cpu_s, peak_mib, rss_mib
from ._processes import PY, split, temp_dir, workers
from ._report import BenchError, fmt, log, median, percentile, table

GENERATORS = 4
PROTOS = ("batch_command.proto", "handshake.proto", "messages.proto")


def generate_protobuf(out: Path) -> Path | None:
    """Google protobuf classes for ``fleet/proto`` (grpcio-tools), or None if unavailable."""
    proto_dir = Path(__file__).resolve().parent.parent / "fleet" / "proto"
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            PY,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            *(str(proto_dir / p) for p in PROTOS),
        ],
        capture_output=True,
    )
    if done.returncode != 0:
        log(f"scale: no Google protobuf ({done.stderr.decode()[:200].strip()}); using betterproto2")
        return None
    return out


async def run(
    quick: bool = False, runs: int | None = None, agents: int | None = None
) -> dict[str, Any]:
    n = agents or (2000 if quick else 10_000)
    rounds = runs or (1 if quick else 3)
    async with temp_dir("fleet-bench-scale-") as tmp, fleet_server(tmp) as server:
        async with Api(server, connections=64) as api:
            pb_dir = await trio.to_thread.run_sync(generate_protobuf, tmp / "pb")
            log(f"scale: registering {n} VPSes through REST")
            t0 = time.perf_counter()
            creds = await api.create_vps_many(n, concurrency=64)
            register_s = time.perf_counter() - t0
            log(f"scale: registered {n} in {register_s:.1f} s")
            ids = [vps_id for vps_id, _ in creds]
            argvs = []
            for k, part in enumerate(split(creds, GENERATORS)):
                path = tmp / f"gen-{k}.json"
                path.write_text(json.dumps(part))
                argv = [
                    PY,
                    "-m",
                    "bench.scale_gen",
                    "--server",
                    server.grpc_address,
                    "--agents",
                    str(path),
                ]
                if pb_dir is not None:
                    argv += ["--pb-dir", str(pb_dir)]
                argvs.append(argv)
            samples = []
            for r in range(rounds):
                await trio.sleep(1.0)
                rss_before = rss_mib(server.pid)
                async with workers(argvs, tmp, f"gen{r}") as group:
                    cpu0 = cpu_s(server.pid)
                    connect_s = await group.go(timeout=900)
                    if group.failed:
                        raise BenchError(f"{group.failed} of {n} generator streams never connected")
                    connect_cpu = cpu_s(server.pid) - cpu0
                    await trio.sleep(2.0)
                    rss_connected = rss_mib(server.pid)
                    log(
                        f"scale round {r + 1}/{rounds}: {n} streams in {connect_s:.1f} s, "
                        f"server RSS {rss_before:.0f} → {rss_connected:.0f} MiB"
                    )
                    c0 = cpu_s(server.pid)
                    batch = await timed_batch(api, "true", ids, timeout=600)
                    batch_cpu = cpu_s(server.pid) - c0
                    await trio.sleep(2.0)
                    c0 = cpu_s(server.pid)
                    quiet = await timed_batch(
                        api, "true", ids, timeout=600, poll=0.2, poll_list=True, fetch_view=False
                    )
                    quiet_cpu = cpu_s(server.pid) - c0
                    log(
                        f"scale round {r + 1}/{rounds}: without a feed subscriber, final in "
                        f"{quiet.final_s:.2f} s ({quiet.status})"
                    )
                    ok = sum(1 for t in batch.view["tasks"] if t["status"] == "SUCCESS")
                    log(
                        f"scale round {r + 1}/{rounds}: batch final in {batch.final_s:.2f} s "
                        f"({ok}/{n} ok)"
                    )
                    if ok != n:
                        raise BenchError(f"only {ok} of {n} children succeeded ({batch.status})")
                    samples.append(
                        {
                            "connect_s": connect_s,
                            "connect_server_cpu_s": connect_cpu,
                            "server_rss_before_mib": rss_before,
                            "server_rss_connected_mib": rss_connected,
                            "server_kib_per_agent": (rss_connected - rss_before) * 1024 / n,
                            "batch_final_s": batch.final_s,
                            "batch_post_s": batch.post_s,
                            "batch_server_cpu_s": batch_cpu,
                            "batch_final_unwatched_s": quiet.final_s,
                            "batch_unwatched_server_cpu_s": quiet_cpu,
                            "child_p50_s": percentile(batch.child_latency_s, 50),
                            "child_p99_s": percentile(batch.child_latency_s, 99),
                            "generators_rss_mib": group.rss_mib(),
                        }
                    )
                # The generators are gone: wait until the server has dropped every stream.
                with trio.move_on_after(120):
                    while True:
                        if not await api.online_count():
                            break
                        await trio.sleep(1.0)
            peak = peak_mib(server.pid)
    first = samples[0]
    return {
        "benchmark": "scale",
        "agents": n,
        "rounds": rounds,
        "generator_processes": len(argvs),
        "protobuf": "google" if pb_dir is not None else "betterproto2",
        "register_s": register_s,
        "register_per_s": n / register_s,
        "connect_s": median([s["connect_s"] for s in samples]),
        "connect_server_cpu_s": median([s["connect_server_cpu_s"] for s in samples]),
        # The first round is on a server that never held streams: its RSS growth is the
        # cleanest per-agent cost (later rounds reuse freed memory).
        "server_rss_connected_mib": max(s["server_rss_connected_mib"] for s in samples),
        "server_kib_per_agent": first["server_kib_per_agent"],
        "server_peak_rss_mib": peak,
        "batch_final_s": median([s["batch_final_s"] for s in samples]),
        "batch_post_s": median([s["batch_post_s"] for s in samples]),
        "batch_server_cpu_s": median([s["batch_server_cpu_s"] for s in samples]),
        "batch_final_unwatched_s": median([s["batch_final_unwatched_s"] for s in samples]),
        "batch_unwatched_server_cpu_s": median(
            [s["batch_unwatched_server_cpu_s"] for s in samples]
        ),
        "child_p50_s": median([s["child_p50_s"] for s in samples]),
        "child_p99_s": median([s["child_p99_s"] for s in samples]),
        "samples": samples,
    }


def render(result: dict[str, Any]) -> str:
    r = result
    return (
        f"scale ({r['agents']:,} protocol-level agents in {r['generator_processes']} "
        f"generator processes; medians of {r['rounds']} rounds)\n"
        + table(
            ["register (REST)", "connect", "srv CPU connect", "srv RSS connected", "per agent"],
            [
                [
                    f"{fmt(r['register_s'], 's', 1)} ({r['register_per_s']:.0f}/s)",
                    fmt(r["connect_s"], "s", 2),
                    fmt(r["connect_server_cpu_s"], "s", 1),
                    fmt(r["server_rss_connected_mib"], "MiB", 0),
                    fmt(r["server_kib_per_agent"], "KiB", 1),
                ]
            ],
        )
        + "\n\n"
        + table(
            [f"{r['agents']:,}-target batch", "POST → final", "POST", "child p50/p99", "srv CPU"],
            [
                [
                    "with a feed subscriber",
                    fmt(r["batch_final_s"], "s", 2),
                    fmt(r["batch_post_s"], "s", 2),
                    f"{fmt(r['child_p50_s'], '', 2)}/{fmt(r['child_p99_s'], '', 2)} s",
                    fmt(r["batch_server_cpu_s"], "s", 1),
                ],
                [
                    "nobody subscribed (completed_at)",
                    fmt(r["batch_final_unwatched_s"], "s", 2),
                    "",
                    "",
                    fmt(r["batch_unwatched_server_cpu_s"], "s", 1),
                ],
            ],
        )
    )
