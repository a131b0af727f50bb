"""The performance targets, evaluated against the figures of one ``python -m bench`` run."""

from __future__ import annotations

import math
from typing import Any

from ._report import fmt, table

GIB_MIB = 1024.0
#: The issue's reference figures for asyncssh (measured elsewhere, printed for context only).
ISSUE_SSH_100_S = 2.85
ISSUE_SSH_MBS = 112


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
    fleet100 = _fanout(results, 100, "echo hi")
    floor100 = _get(floor, "echo hi", "100")
    ssh100 = _get(ssh, "echo hi", "100")
    if fleet100 is not None and floor100:
        ratio = fleet100 / floor100
        add(
            "N=100 echo hi vs local floor",
            "≤ 2×",
            f"{fleet100:.3f} s / {floor100:.3f} s = {ratio:.2f}×",
            ratio <= 2,
        )
    else:
        add("N=100 echo hi vs local floor", "≤ 2×", "not measured", None)
    if fleet100 is not None and ssh100:
        speedup = ssh100 / fleet100
        add(
            "N=100 echo hi vs best SSH peer (asyncssh)",
            "≥ 8× faster",
            f"{ssh100:.3f} s / {fleet100:.3f} s = {speedup:.2f}× "
            f"(vs the issue's {ISSUE_SSH_100_S} s: {ISSUE_SSH_100_S / fleet100:.1f}×)",
            speedup >= 8,
        )
    else:
        reason = cmp.get("ssh_skipped") or "not measured"
        add("N=100 echo hi vs best SSH peer (asyncssh)", "≥ 8× faster", reason, None)
    fleet1000 = _fanout(results, 1000, "true")
    floor1000 = _get(floor, "true", "1000")
    if fleet1000 is not None and floor1000:
        ratio = fleet1000 / floor1000
        add(
            "N=1,000 true vs local floor",
            "≤ 2×",
            f"{fleet1000:.3f} s / {floor1000:.3f} s = {ratio:.2f}×",
            ratio <= 2,
        )
    else:
        add("N=1,000 true vs local floor", "≤ 2×", "not measured", None)

    scale = results.get("scale", {})
    if "server_rss_connected_mib" in scale:
        n = scale["agents"]
        rss = scale["server_rss_connected_mib"]
        extrapolated = "" if n >= 10_000 else f" ({n} agents)"
        add(
            "10,000 agents: server RSS",
            "≤ 1 GiB",
            f"{rss:.0f} MiB{extrapolated}",
            rss <= GIB_MIB if n >= 10_000 else None,
        )
    else:
        add("10,000 agents: server RSS", "≤ 1 GiB", scale.get("error", "not measured"), None)
    if "batch_final_s" in scale:
        n = scale["agents"]
        watched = scale["batch_final_s"]
        value = scale.get("batch_final_unwatched_s", watched)
        add(
            f"{n:,}-target batch final",
            "≤ 5 s",
            f"{value:.2f} s unwatched, {watched:.2f} s with a feed subscriber",
            value <= 5 if n >= 10_000 else None,
        )
    else:
        add("10,000-target batch final", "≤ 5 s", "not measured", None)

    thr = results.get("throughput", {})
    fleet_mbs = thr.get("mb_per_s")
    ssh_mbs = _get(ssh, "stream", "mb_per_s")
    if fleet_mbs is not None and ssh_mbs:
        ratio = fleet_mbs / ssh_mbs
        add(
            "200 MB stream vs asyncssh",
            "≥ 1.5×",
            f"{fleet_mbs:.0f} / {ssh_mbs:.0f} MB/s = {ratio:.2f}× "
            f"(vs the issue's {ISSUE_SSH_MBS} MB/s: {fleet_mbs / ISSUE_SSH_MBS:.2f}×)",
            ratio >= 1.5,
        )
    else:
        measured = f"{fleet_mbs:.0f} MB/s (no asyncssh figure)" if fleet_mbs else "not measured"
        add("200 MB stream vs asyncssh", "≥ 1.5×", measured, None)
    growth = thr.get("server_rss_growth_mib")
    add(
        "200 MB stream: server RSS growth",
        "≤ 50 MB",
        f"{growth:.1f} MiB" if growth is not None else "not measured",
        None if growth is None else growth * 1.048576 <= 50,
    )

    api = results.get("api", {})
    get_p50 = _get(api, "get_stored", "p50_ms")
    add(
        "GET 1,000-task batch p50",
        "≤ 50 ms",
        f"{get_p50:.1f} ms" if get_p50 is not None else "not measured",
        None if get_p50 is None else get_p50 <= 50,
    )
    feed_p99 = _get(api, "feed", "p99_ms")
    add(
        "feed latency p99 at 1,000 lines/s",
        "≤ 100 ms",
        f"{feed_p99:.1f} ms" if feed_p99 is not None else "not measured",
        None if feed_p99 is None else feed_p99 <= 100,
    )

    idle = results.get("idle", {})
    rss = idle.get("rss_mib")
    add(
        "agent idle RSS",
        "≤ 30 MB",
        f"{rss:.1f} MiB (PSS {idle.get('pss_mib', math.nan):.1f})" if rss else "not measured",
        None if rss is None else rss * 1.048576 <= 30,
    )
    return rows


def render_targets(rows: list[dict[str, Any]]) -> str:
    marks = {True: "met", False: "NOT MET", None: "-"}
    return "targets (issue 6)\n" + table(
        ["target", "wanted", "measured", "result"],
        [[r["target"], r["wanted"], r["measured"], marks[r["met"]]] for r in rows],
    )


__all__ = ["evaluate", "fmt", "render_targets"]
