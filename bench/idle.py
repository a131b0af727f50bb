"""``idle``: an idle connected agent's memory, via ``bench/agent_idle_rss.py`` (its own process).

That script starts a lean in-process grpclib server, runs ``python -m fleet.agent`` against it,
runs one small command, lets the agent sit idle, and reads ``/proc/PID/status`` and
``smaps_rollup``. Here it runs once per round (``--quick``: 1, else 3) and the medians are kept.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from ._processes import PY, ROOT, child_env
from ._report import BenchError, fmt, median, table

_FIGURES = {
    "rss_mib": re.compile(r"RSS ([\d.]+) MiB"),
    "peak_rss_mib": re.compile(r"peak ([\d.]+) MiB"),
    "pss_mib": re.compile(r"PSS ([\d.]+) MiB"),
    "private_mib": re.compile(r"private ([\d.]+) MiB"),
}


async def run(quick: bool = False, settle: float = 5.0) -> dict[str, Any]:
    rounds = 1 if quick else 3
    samples = []
    for _ in range(rounds):
        done = await trio.run_process(
            [PY, str(ROOT / "bench" / "agent_idle_rss.py"), "--settle", str(settle)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
            cwd=ROOT,
        )
        text = done.stdout.decode()
        if done.returncode != 0:
            raise BenchError(f"agent_idle_rss.py failed: {done.stderr.decode()[-400:]}")
        sample = {}
        for key, pattern in _FIGURES.items():
            match = pattern.search(text)
            if match is None:
                raise BenchError(f"agent_idle_rss.py printed no {key}: {text!r}")
            sample[key] = float(match[1])
        samples.append(sample)
    return {
        "benchmark": "idle",
        "rounds": rounds,
        "settle_s": settle,
        **{key: median([s[key] for s in samples]) for key in _FIGURES},
        "samples": samples,
    }


def render(result: dict[str, Any]) -> str:
    return (
        f"idle agent (python -m fleet.agent, connected, {result['settle_s']:g} s idle; "
        f"medians of {result['rounds']})\n"
        + table(
            ["RSS", "peak RSS", "PSS", "private"],
            [
                [
                    fmt(result[k], "MiB", 1)
                    for k in ("rss_mib", "peak_rss_mib", "pss_mib", "private_mib")
                ]
            ],
        )
    )
