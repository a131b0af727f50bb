"""Process and machine metrics read from ``/proc``: RSS, peak RSS, CPU time, process trees."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "cpu_s",
    "machine_notes",
    "peak_mib",
    "raise_nofile",
    "reset_peak",
    "rss_mib",
    "status_kib",
    "tree_pids",
]


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_notes() -> dict[str, Any]:
    load = os.getloadavg()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_avg_1m": round(load[0], 2),
        "mem_total_mib": _meminfo_mib("MemTotal"),
        "python": sys.version.split()[0],
    }


def _meminfo_mib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return 0


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def peak_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``/proc/PID/clear_refs`` ← 5); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_s(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process in seconds (plus its waited-for children's with ``children``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (for CPU accounting of agent hosts and their commands)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out
