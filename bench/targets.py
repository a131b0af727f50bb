"""The performance targets, evaluated against the figures of one ``python -m bench`` run."""

from __future__ import annotations

import math
from typing import Any

from ._report import fmt, table

GIB_MIB = 1024.0


def _get(results: dict[str, Any], *path: Any) -> Any:
    node: Any = results
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def _fanout(results: dict[str, Any], n: int, command: str) -> float | None:
    for source in ("compare", "fanout"):
        for size in _get(results, source, "fleet_sizes") or _get(results, source, "sizes") or []:
            if size.get("n") == n and command in size.get("commands", {}):
                return float(size["commands"][command]["final_s"])
    return None


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what, target, measured, met (True/False/None when not measured)."""
    rows: list[dict[str, Any]] = []

    def add(what: str, target: str, measured: str, met: bool | None) -> None:
        rows.append({"target": what, "wanted": target, "measured": measured, "met": met})

    cmp = results.get("compare", {})
    floor = cmp.get("floor", {})
    ssh = cmp.get("asyncssh", {})

    # Issue 14: the stream first (what an operator feels most), then fan-out, scale, idle.
    thr = results.get("throughput", {})
    fleet_mbs = thr.get("mb_per_s")
    ssh_mbs = _get(ssh, "stream", "mb_per_s")
    if fleet_mbs is not None and ssh_mbs:
        ratio = fleet_mbs / ssh_mbs
        add(
            "200 MB stream vs asyncssh",
            "≥ 1× (as fast)",
            f"{fleet_mbs:.0f} / {ssh_mbs:.0f} MB/s = {ratio:.2f}×",
            ratio >= 1,
        )
    else:
        measured = f"{fleet_mbs:.0f} MB/s (no asyncssh figure)" if fleet_mbs else "not measured"
        add("200 MB stream vs asyncssh", "≥ 1× (as fast)", measured, None)
    growth = thr.get("server_rss_growth_mib")
    add(
        "200 MB stream: server RSS growth",
        "≤ 50 MB",
        f"{growth:.1f} MiB" if growth is not None else "not measured",
        None if growth is None else growth * 1.048576 <= 50,
    )

    fleet100 = _fanout(results, 100, "echo hi")
    floor100 = _get(floor, "echo hi", "100")
    ssh100 = _get(ssh, "echo hi", "100")
    if fleet100 is not None and ssh100:
        speedup = ssh100 / fleet100
        add(
            "N=100 echo hi vs asyncssh",
            "≥ 5× faster",
            f"{ssh100:.3f} s / {fleet100:.3f} s = {speedup:.2f}×",
            speedup >= 5,
        )
    else:
        reason = cmp.get("ssh_skipped") or "not measured"
        add("N=100 echo hi vs asyncssh", "≥ 5× faster", reason, None)
    if fleet100 is not None and floor100:
        add(
            "(context) N=100 echo hi vs local floor",
            "",
            f"{fleet100:.3f} s / {floor100:.3f} s = {fleet100 / floor100:.2f}×",
            None,
        )
    fleet1000 = _fanout(results, 1000, "true")
    floor1000 = _get(floor, "true", "1000")
    if fleet1000 is not None and floor1000:
        ratio = fleet1000 / floor1000
        add(
            "N=1,000 true vs local floor",
            "≤ 3×",
            f"{fleet1000:.3f} s / {floor1000:.3f} s = {ratio:.2f}×",
            ratio <= 3,
        )
    else:
        add("N=1,000 true vs local floor", "≤ 3×", "not measured", None)

    scale = results.get("scale", {})
    n = scale.get("agents", 0)
    full = n >= 10_000
    note = "" if full else f" ({n:,} agents)"
    if "batch_final_s" in scale:
        cpu = scale.get("batch_unwatched_server_cpu_s", scale["batch_server_cpu_s"])
        per_child = cpu * 1000 / n
        add(
            "10,000-target batch: server CPU per child",
            "≤ 0.4 ms",
            f"{per_child:.2f} ms ({cpu:.1f} s, unwatched){note}",
            per_child <= 0.4 if full else None,
        )
        watched = scale["batch_final_s"]
        value = scale.get("batch_final_unwatched_s", watched)
        add(
            "10,000-target batch POST → final",
            "≤ 5 s",
            f"{value:.2f} s unwatched, {watched:.2f} s with a feed subscriber{note}",
            value <= 5 if full else None,
        )
    else:
        add(
            "10,000-target batch", "≤ 0.4 ms/child, ≤ 5 s", scale.get("error", "not measured"), None
        )
    if "connect_s" in scale:
        per_agent = scale["connect_server_cpu_s"] * 1000 / n
        add(
            "10,000 agents connect: server CPU per agent",
            "≤ 1 ms (≤ 12 s)",
            f"{per_agent:.2f} ms, connected in {scale['connect_s']:.1f} s{note}",
            (per_agent <= 1 and scale["connect_s"] <= 12) if full else None,
        )
    if "server_rss_connected_mib" in scale:
        rss = scale["server_rss_connected_mib"]
        add(
            "(issue 6) 10,000 agents: server RSS",
            "≤ 1 GiB",
            f"{rss:.0f} MiB{note}",
            rss <= GIB_MIB if full else None,
        )

    api = results.get("api", {})
    get_p50 = _get(api, "get_stored", "p50_ms")
    add(
        "(issue 6) GET 1,000-task batch p50",
        "≤ 50 ms",
        f"{get_p50:.1f} ms" if get_p50 is not None else "not measured",
        None if get_p50 is None else get_p50 <= 50,
    )
    feed_p99 = _get(api, "feed", "p99_ms")
    add(
        "(issue 6) feed latency p99 at 1,000 lines/s",
        "≤ 100 ms",
        f"{feed_p99:.1f} ms" if feed_p99 is not None else "not measured",
        None if feed_p99 is None else feed_p99 <= 100,
    )

    idle = results.get("idle", {})
    rss = idle.get("rss_mib")
    add(
        "agent idle RSS",
        "≤ 30 MiB",
        f"{rss:.1f} MiB (PSS {idle.get('pss_mib', math.nan):.1f})" if rss else "not measured",
        None if rss is None else rss <= 30,
    )
    return rows


def render_targets(rows: list[dict[str, Any]]) -> str:
    marks = {True: "met", False: "NOT MET", None: "-"}
    return "targets (issue 14; issue 6 where marked)\n" + table(
        ["target", "wanted", "measured", "result"],
        [[r["target"], r["wanted"], r["measured"], marks[r["met"]]] for r in rows],
    )


__all__ = ["evaluate", "fmt", "render_targets"]
