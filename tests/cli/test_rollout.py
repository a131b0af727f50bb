"""``fleet run`` rollout flags, ``-p`` parameters and ``fleet batches rerun`` against a real
server with three real agents."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest

from fleet.cli.console import Progress
from fleet.cli.watch import BatchWatch

from .conftest import FleetRunner, Server

BATCH = re.compile(r"fleet: batch ([0-9a-f-]{36})")


def batch_id(err: str) -> str:
    match = BATCH.search(err)
    assert match, err
    return match.group(1)


def test_rollout_flags_reach_the_server(fleet: FleetRunner, server: Server) -> None:
    result = fleet(
        "run", "--tag", "demo", "--max-concurrency", "34%", "--max-errors", "0",
        "--wait-for-agent", "5", "-p", "GREETING=hi there", "--json", "--",
        'echo "$FLEET_PARAM_GREETING"',
    )  # fmt: skip
    assert result.code == 0, result.err
    final = json.loads(result.out)
    assert (final["max_concurrency"], final["max_errors"]) == ("34%", 0)
    assert final["wait_for_agent_seconds"] == 5
    assert final["target_tags"] == ["demo"]
    assert final["parameters"] == {"GREETING": "hi there"}
    assert {t["output_stream_summary"][0] for t in final["tasks"]} == {"hi there"}
    starts = sorted((t["agent_started_at"], t["agent_completed_at"]) for t in final["tasks"])
    for (_, end), (start, _) in itertools.pairwise(starts):
        assert start >= end  # 34% of 3 = 1 at a time


def test_error_threshold_shows_skipped_and_why(fleet: FleetRunner) -> None:
    result = fleet("run", "--tag", "demo", "--max-concurrency", "1", "--max-errors", "0", "--",
                   "exit 4")  # fmt: skip
    assert result.code == 1
    assert "0 succeeded, 3 did not (2 skipped)" in result.err_lines[-2]
    assert result.err_lines[-1].startswith("dispatching stopped: error threshold reached")
    shown = fleet("batches", "show", batch_id(result.err))
    assert "stopped   error threshold reached" in shown.out
    assert "rollout   max concurrency 1" in shown.out


def test_rerun_not_succeeded_then_all(fleet: FleetRunner) -> None:
    first = fleet("run", "--target", "demo-1,demo-2", "--", "exit 1")
    assert first.code == 1
    original = batch_id(first.err)
    again = fleet("batches", "rerun", original, "--json")
    assert again.code == 1
    final = json.loads(again.out)
    assert final["rerun_of"] == original
    assert len(final["tasks"]) == 2
    every = fleet("batches", "rerun", original, "--all", "--no-stream")
    assert every.code == 1
    assert f"re-run of {original}" in every.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-concurrency", "0"], "at least 1"),
        (["--max-concurrency", "150%"], "between 1% and 100%"),
        (["--max-errors", "x"], "percentage"),
        (["--wait-for-agent", "-3"], "whole number"),
        (["-p", "NOEQUALS"], "NAME=VALUE"),
    ],
)
def test_bad_flags_are_usage_errors(fleet: FleetRunner, flags: list[str], message: str) -> None:
    result = fleet("run", "--tag", "demo", *flags, "--", "true")
    assert result.code == 2
    assert message in result.err


def test_a_bad_parameter_name_is_refused_by_the_server(fleet: FleetRunner) -> None:
    result = fleet("run", "--tag", "demo", "-p", "1bad=x", "--", "true")
    assert result.code == 2, result.err
    assert "parameters['1bad']" in result.err


def test_rerun_of_an_unknown_batch(fleet: FleetRunner) -> None:
    result = fleet("batches", "rerun", "00000000-0000-0000-0000-000000000000")
    assert result.code != 0
    assert "no batch" in result.err


def test_a_script_with_parameters_from_the_cli(fleet: FleetRunner, tmp_path: Path) -> None:
    spec = tmp_path / "params.json"
    spec.write_text(json.dumps([{"name": "WHO", "required": True, "pattern": "[a-z]+"}]))
    added = fleet("scripts", "add", "cli-params", "--content", 'echo "hi $FLEET_PARAM_WHO"',
                  "--params-file", str(spec))  # fmt: skip
    assert added.code == 0, added.err
    missing = fleet("run", "--target", "demo-1", "--script", "cli-params", "--", "")
    assert missing.code == 2
    assert "parameters.WHO" in missing.err
    ok = fleet("run", "--target", "demo-1", "--script", "cli-params", "-p", "WHO=you")
    assert ok.code == 0, ok.err
    assert ok.out.strip() == "demo-1 | hi you"
    shown = fleet("scripts", "show", "cli-params", "--json")
    assert json.loads(shown.out)["parameters"][0]["name"] == "WHO"


def test_the_progress_line_shows_queued_and_skipped() -> None:
    watch = BatchWatch("b", output=False)
    tasks = [
        {"child_command_id": f"c{i}", "vps_id": i, "vps_name": f"v{i}", "status": status}
        for i, status in enumerate(["EXECUTING", "PENDING", "PENDING", "FAILURE", "SKIPPED"], 1)
    ]
    watch.on_snapshot({"batch_command_id": "b", "overall_status": "IN_PROGRESS", "tasks": tasks})
    out = io.StringIO()
    Progress(out, enabled=True).draw(watch, force=True)
    line = out.getvalue()
    assert "2/5 done · 1 failed · 1 running · 2 queued · 1 skipped" in line
