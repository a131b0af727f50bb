"""``python -m bench [fanout|scale|throughput|api|compare|idle|rollout|cluster|all ...] [--json]``.

Runs the named benchmarks in order (default: ``all``), prints a table for each, then the issue's
targets with the measured values. ``--json`` prints one JSON document instead of the tables.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from typing import Any

import trio

from ._metrics import machine_notes, raise_nofile
from ._report import BenchError, log
from .targets import evaluate, render_targets

NAMES = ("fanout", "scale", "throughput", "api", "compare", "idle", "rollout", "cluster")
#: Run only when named (they need PostgreSQL).
NOT_IN_ALL = ("cluster",)
#: Wall-clock bound of each benchmark (seconds), full / quick.
BUDGET = {
    "fanout": (1800, 600),
    "scale": (2400, 900),
    "throughput": (900, 400),
    "api": (900, 400),
    "compare": (1800, 600),
    "idle": (120, 120),
    "rollout": (900, 400),
    "cluster": (2400, 900),
}


async def _run(
    names: list[str],
    quick: bool,
    runs: int | None,
    journal: str = "on",
    agents: int | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_notes(), "quick": quick, "results": {}}
    started = time.time()
    for name in names:
        budget = BUDGET[name][1 if quick else 0]
        log(f"{name}: starting (bounded to {budget} s)")
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            with trio.fail_after(budget):
                kwargs: dict[str, Any] = {"quick": quick}
                if runs is not None and name != "idle":
                    kwargs["runs"] = runs
                if name == "compare":
                    kwargs["previous"] = results["results"]
                if name == "fanout":
                    kwargs["journal"] = journal
                if name == "cluster" and agents is not None:
                    kwargs["agents"] = agents
                result = await module.run(**kwargs)
        except trio.TooSlowError:
            result = {"benchmark": name, "error": f"did not finish within {budget} s"}
        except BenchError as error:
            result = {"benchmark": name, "error": str(error)}
        except Exception as error:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            result = {"benchmark": name, "error": f"{type(error).__name__}: {error}"}
        result["elapsed_s"] = time.perf_counter() - t0
        results["results"][name] = result
        log(f"{name}: done in {result['elapsed_s']:.0f} s")
    results["machine"]["load_avg_1m_end"] = machine_notes()["load_avg_1m"]
    results["elapsed_s"] = time.time() - started
    results["targets"] = evaluate(results["results"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        default=["all"],
        metavar="NAME",
        help=f"{', '.join(NAMES)} or all (default)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, quick 3)")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON document to PATH")
    parser.add_argument(
        "--agent-journal",
        choices=("on", "off", "both"),
        default="on",
        help="fanout: agents keep journals (on, the default, as fleet-agent does), not (off), "
        "or both, one after the other in the same run (the journal's cost)",
    )
    parser.add_argument(
        "--agents", type=int, metavar="N", help="cluster: agent streams per node (1000)"
    )
    args = parser.parse_args(argv)
    names: list[str] = []
    for name in args.names:
        if name == "all":
            names.extend(n for n in NAMES if n not in names and n not in NOT_IN_ALL)
        elif name in NAMES:
            if name not in names:
                names.append(name)
        else:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(NAMES)} or all")
    if "compare" in names:  # compare reuses the fanout/throughput figures of the same run
        names = [n for n in names if n != "compare"] + ["compare"]
    raise_nofile()
    results = trio.run(_run, names, args.quick, args.runs, args.agent_journal, args.agents)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump(_clean(results), f, indent=2, default=str)
    if args.json:
        json.dump(_clean(results), sys.stdout, indent=2, default=str)
        print()
    else:
        m = results["machine"]
        print(
            f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_total_mib']} MiB, "
            f"Python {m['python']}, load average {m['load_avg_1m']} at start, "
            f"{m['load_avg_1m_end']} at end{' (quick mode)' if args.quick else ''}\n"
        )
        for name in names:
            result = results["results"][name]
            if "error" in result:
                print(f"{name}: ERROR: {result['error']}\n")
                continue
            module = importlib.import_module(f"bench.{name}")
            print(module.render(result) + "\n")
        print(render_targets(results["targets"]))
    failed = [n for n in names if "error" in results["results"][n]]
    return 1 if failed else 0


def _clean(value: Any) -> Any:
    """NaN (a figure that could not be computed) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
