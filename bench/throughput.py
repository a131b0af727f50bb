"""``throughput``: one agent streams 200 MB of stdout through a real server into its log.

A fresh ``fleet-server`` (output cap raised above the stream size) and one ``python -m
fleet.agent`` process. Each run POSTs ``head -c 200000000 /dev/zero`` and waits for the final
status; MB/s = 200 MB / (POST → the batch's ``completed_at``), polling GET every 0.2 s with
no feed subscriber (one extra run with a WebSocket subscriber shows what a UI watching the
stream costs: every chunk becomes a JSON ``NEW_LOG_OUTPUT`` event). Before each run the
server's peak-RSS mark is reset (``/proc/PID/clear_refs``), so "server RSS growth" is the
run's ``VmHWM`` minus its ``VmRSS`` just before the POST. The agent's figure is its
``VmHWM`` over its whole life. The log is verified: ``stdout_bytes`` in the API, the file's
size on disk, and that it holds only zero bytes.
"""

from __future__ import annotations

from typing import Any

import trio

from ._fleet import Api, fleet_server, timed_batch
from ._metrics import cpu_s, peak_mib, reset_peak, rss_mib
from ._processes import PY, child_env, spawn, stop_process, temp_dir
from ._report import BenchError, fmt, log, median, table

SIZE = 200_000_000
#: GET interval while waiting for the final status (nobody subscribes to the feed).
POLL_S = 0.2


def _verify_log(path: str, size: int) -> None:
    zeros = bytes(1 << 20)
    seen = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            if block != zeros[: len(block)]:
                raise BenchError(f"the log {path} holds bytes other than the zeros sent")
            seen += len(block)
    if seen != size:
        raise BenchError(f"the log holds {seen} bytes, expected {size}")


async def run(
    quick: bool = False,
    runs: int | None = None,
    size: int = SIZE,
    with_subscriber: bool | None = None,
) -> dict[str, Any]:
    runs = runs or (2 if quick else 5)
    with_subscriber = not quick if with_subscriber is None else with_subscriber
    async with temp_dir("fleet-bench-throughput-") as tmp:
        async with fleet_server(tmp, "--output-cap", str(4 * size)) as server, Api(server) as api:
            [(vps_id, secret)] = await api.create_vps_many(1)
            env = child_env(
                FLEET_AGENT_SERVER=server.grpc_address,
                FLEET_AGENT_VPS_ID=str(vps_id),
                FLEET_AGENT_SECRET=secret,
                FLEET_AGENT_LOG_LEVEL="WARNING",
                FLEET_AGENT_STATE_DIR=str(tmp / "agent-state"),
            )
            agent = await spawn([PY, "-m", "fleet.agent"], tmp / "agent.log", env=env)
            try:
                await api.wait_online(1, timeout=60)
                await timed_batch(api, "true", [vps_id], timeout=60, fetch_view=False)
                samples = []
                for r in range(runs):
                    await trio.sleep(0.5)
                    reset_ok = reset_peak(server.pid)
                    before = rss_mib(server.pid)
                    s_cpu, a_cpu = cpu_s(server.pid), cpu_s(agent.pid, children=True)
                    batch = await timed_batch(
                        api, f"head -c {size} /dev/zero", [vps_id], timeout=600, poll=POLL_S
                    )
                    server_peak = peak_mib(server.pid)
                    task = batch.view["tasks"][0]
                    if batch.status != "COMPLETED_SUCCESSFULLY" or task["stdout_bytes"] != size:
                        raise BenchError(
                            f"run {r + 1}: status {batch.status}, stdout_bytes "
                            f"{task['stdout_bytes']} (expected {size})"
                        )
                    log_file = (
                        server.data_dir
                        / "logs"
                        / batch.batch_id
                        / f"{task['child_command_id']}.stdout"
                    )
                    await trio.to_thread.run_sync(_verify_log, str(log_file), size)
                    log_file.unlink()
                    sample = {
                        "seconds": batch.final_s,
                        "mb_per_s": size / 1e6 / batch.final_s,
                        "server_rss_before_mib": before,
                        "server_peak_rss_mib": server_peak,
                        "server_rss_growth_mib": server_peak - before if reset_ok else None,
                        "server_cpu_s": cpu_s(server.pid) - s_cpu,
                        "agent_cpu_s": cpu_s(agent.pid, children=True) - a_cpu,
                    }
                    samples.append(sample)
                    log(
                        f"throughput run {r + 1}/{runs}: {sample['mb_per_s']:.1f} MB/s, server "
                        f"RSS {before:.0f} → peak {server_peak:.0f} MiB"
                    )
                subscribed = None
                if with_subscriber:
                    # What a UI watching the stream costs: the feed sends every chunk as a
                    # NEW_LOG_OUTPUT event (JSON text) to the subscriber.
                    await trio.sleep(0.5)
                    s_cpu = cpu_s(server.pid)
                    batch = await timed_batch(
                        api, f"head -c {size} /dev/zero", [vps_id], timeout=600, fetch_view=False
                    )
                    subscribed = {
                        "seconds": batch.final_s,
                        "mb_per_s": size / 1e6 / batch.final_s,
                        "server_cpu_s": cpu_s(server.pid) - s_cpu,
                        "status": batch.status,
                    }
                    log(f"throughput with a feed subscriber: {subscribed['mb_per_s']:.1f} MB/s")
                agent_peak = peak_mib(agent.pid)
                agent_rss = rss_mib(agent.pid)
            finally:
                with trio.CancelScope(shield=True):
                    await stop_process(agent)
    growths = [
        s["server_rss_growth_mib"] for s in samples if s["server_rss_growth_mib"] is not None
    ]
    return {
        "benchmark": "throughput",
        "runs_per_figure": runs,
        "mb": size / 1e6,
        "mb_per_s": median([s["mb_per_s"] for s in samples]),
        "seconds": median([s["seconds"] for s in samples]),
        "server_rss_growth_mib": max(growths) if growths else None,
        "server_peak_rss_mib": max(s["server_peak_rss_mib"] for s in samples),
        "server_cpu_s": median([s["server_cpu_s"] for s in samples]),
        "agent_cpu_s": median([s["agent_cpu_s"] for s in samples]),
        "agent_peak_rss_mib": agent_peak,
        "agent_rss_after_mib": agent_rss,
        "runs": samples,
        "log_verified": True,
        "with_feed_subscriber": subscribed,
    }


def render(result: dict[str, Any]) -> str:
    return (
        f"throughput ({result['mb']:.0f} MB of stdout, one agent process, real server; "
        f"medians of {result['runs_per_figure']} runs; log size and content verified)\n"
        + table(
            [
                "MB/s",
                "seconds",
                "srv RSS growth (max)",
                "srv peak RSS",
                "srv CPU",
                "agent peak RSS",
                "agent CPU (+cmd)",
            ],
            [
                [
                    fmt(result["mb_per_s"], "", 1),
                    fmt(result["seconds"], "s", 2),
                    fmt(result["server_rss_growth_mib"], "MiB", 1),
                    fmt(result["server_peak_rss_mib"], "MiB", 1),
                    fmt(result["server_cpu_s"], "s", 2),
                    fmt(result["agent_peak_rss_mib"], "MiB", 1),
                    fmt(result["agent_cpu_s"], "s", 2),
                ]
            ],
        )
        + (
            f"\nwith a WebSocket feed subscriber (1 run): {sub['mb_per_s']:.1f} MB/s, "
            f"server CPU {sub['server_cpu_s']:.2f} s"
            if (sub := result.get("with_feed_subscriber"))
            else ""
        )
    )
