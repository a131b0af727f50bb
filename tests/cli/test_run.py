"""``fleet run`` against a real server and three real agents (demo-1..3)."""

from __future__ import annotations

import io
import json
import re
import signal
import sys
from typing import Any

import pytest

from .conftest import FleetRunner, Lines, Server, bounded_main, spawn

DEMO = ("demo-1", "demo-2", "demo-3")


def test_streams_each_vps_output_with_its_name(fleet: FleetRunner) -> None:
    result = fleet("run", "--tag", "demo", "--", "echo out; echo err >&2; printf 'a\\nno-newline'")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    for name in DEMO:
        mine = [line for line in lines if line.startswith(name + " ")]
        assert [x for x in mine if " | " in x] == [
            f"{name} | out",
            f"{name} | a",
            f"{name} | no-newline",
        ]
        assert [x for x in mine if " ! " in x] == [f"{name} ! err"]
        row = next(line for line in result.err_lines if line.startswith(name + " "))
        assert row.split()[1:3] == ["SUCCESS", "0"]
    assert len(lines) == 12  # nothing else on stdout: no colour, no progress, no summary
    assert "\x1b[" not in result.out + result.err
    assert result.err_lines[0].startswith("fleet: batch ")
    assert result.err_lines[-1].startswith("COMPLETED_SUCCESSFULLY: 3 succeeded, 0 did not")


def test_live_lines_keep_their_order(fleet: FleetRunner) -> None:
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.05; done"
    result = fleet("run", "--target", "demo-2", "--", script)
    assert result.code == 0
    assert result.out.splitlines() == [f"demo-2 | line {i}" for i in range(1, 6)]


def test_a_failing_vps_makes_the_exit_code_non_zero(fleet: FleetRunner) -> None:
    result = fleet("run", "--target", "1,demo-2", "--", "echo bye; exit 3")
    assert result.code == 1
    assert sorted(result.out.splitlines()) == ["demo-1 | bye", "demo-2 | bye"]
    for name in ("demo-1", "demo-2"):
        row = next(line for line in result.err_lines if line.startswith(name + " "))
        assert row.split()[1:3] == ["FAILURE", "3"]
    assert result.err_lines[-1].startswith("COMPLETED_WITH_ERRORS: 0 succeeded, 2 did not")


def test_an_unreachable_vps_makes_the_exit_code_non_zero(
    fleet: FleetRunner, ghost: dict[str, Any]
) -> None:
    result = fleet("run", "--target", f"{ghost['name']},demo-3", "--", "echo here")
    assert result.code == 1
    assert [line.split() for line in result.out.splitlines()] == [["demo-3", "|", "here"]]
    row = next(line for line in result.err_lines if line.startswith(ghost["name"]))
    assert row.split()[1] == "AGENT_UNREACHABLE"
    assert "COMPLETED_WITH_ERRORS" in result.err_lines[-1]

    alone = fleet("run", "--target", str(ghost["id"]), "--", "true")
    assert alone.code == 1
    assert alone.err_lines[-1].startswith("FAILED_TO_START")


def test_all_online_only_skips_offline_vpses(fleet: FleetRunner, ghost: dict[str, Any]) -> None:
    result = fleet("run", "--all", "--online-only", "--", "echo hi")
    assert result.code == 0, result.err
    assert sorted(result.out.splitlines()) == [f"{name} | hi" for name in DEMO]
    assert ghost["name"] not in result.err


def test_json_prints_only_the_final_batch(fleet: FleetRunner) -> None:
    result = fleet("run", "--target", "demo-1", "--alias", "hello", "--json", "--", "echo hi")
    assert result.code == 0
    batch = json.loads(result.out)
    assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
    assert batch["execution_alias"] == "hello"
    [task] = batch["tasks"]
    assert (task["vps_name"], task["status"], task["exit_code"]) == ("demo-1", "SUCCESS", 0)
    assert task["output_stream_summary"] == ["hi"]

    failed = fleet("run", "--tag", "demo", "--json", "--", "exit 4")
    assert failed.code == 1
    assert {t["exit_code"] for t in json.loads(failed.out)["tasks"]} == {4}


def test_no_stream_shows_only_the_summary(fleet: FleetRunner) -> None:
    result = fleet("run", "--tag", "demo", "--no-stream", "--", "echo h${x}idden")
    assert result.code == 0
    assert result.out == ""
    assert "hidden" not in result.err


def test_cwd_and_timeout_reach_the_agent(fleet: FleetRunner) -> None:
    result = fleet(
        "run", "--target", "demo-1", "--cwd", "/", "--timeout", "1", "--", "pwd; sleep 5"
    )
    assert result.code == 1
    assert result.out.splitlines() == ["demo-1 | /"]
    row = next(line for line in result.err_lines if line.startswith("demo-1 "))
    assert "FAILURE" in row
    assert "timed out" in row


def test_saved_script_by_name(fleet: FleetRunner, server: Server) -> None:
    script = server.api(
        "POST", "/api/scripts", {"name": "cli-greet", "content": "echo from-script\n"}
    )
    try:
        result = fleet("run", "--tag", "demo", "--script", "cli-greet")
        assert result.code == 0, result.err
        assert sorted(result.out.splitlines()) == [f"{n} | from-script" for n in DEMO]
        by_id = fleet("run", "--target", "demo-1", "--script", str(script["id"]), "--json")
        assert json.loads(by_id.out)["command_type"] == "SAVED_SCRIPT"
    finally:
        server.api("DELETE", f"/api/scripts/{script['id']}")


def test_selection_and_command_mistakes_are_usage_errors(fleet: FleetRunner) -> None:
    cases = {
        ("run", "--tag", "demo"): "nothing to run",
        ("run", "--", "true"): "choose where to run",
        ("run", "--tag", "no-such-tag", "--", "true"): "no VPS has the tag 'no-such-tag'",
        ("run", "--target", "no-such-vps", "--", "true"): "no VPS with id or name",
        ("run", "--tag", "demo", "--script", "x", "--", "true"): "not both",
        ("run", "--tag", "demo", "--script", "no-such-script"): "no saved script",
    }
    for argv, message in cases.items():
        result = fleet(*argv)
        assert result.code == 2, argv
        assert len(result.err_lines) == 1, (argv, result.err)
        assert message in result.err, (argv, result.err)
        assert result.out == ""


def test_the_server_s_validation_reasons_are_shown(fleet: FleetRunner) -> None:
    result = fleet("run", "--tag", "demo", "--timeout", "99999999", "--alias", "a" * 300, "--", "x")
    assert result.code == 2
    [line] = result.err_lines
    assert line.startswith("fleet: invalid request: ")
    assert "timeout_seconds" in line
    assert "execution_alias" in line


def test_ctrl_c_terminates_the_batch_and_waits_for_the_end(server: Server) -> None:
    proc = spawn(server, "run", "--tag", "demo", "--", "echo started; sleep 30")
    try:
        out, stderr = Lines(proc.stdout), Lines(proc.stderr)
        for _ in DEMO:  # every agent runs it: the CLI is following the feed
            out.wait_for(lambda line: line.endswith("| started"), 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    err = "\n".join(stderr.rest())
    assert "terminating the batch" in err
    assert err.count(" TERMINATED ") == 3
    assert err.splitlines()[-1].startswith("TERMINATED: 0 succeeded, 3 did not")
    assert not any("never" in line for line in out.rest())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_prefixes_are_coloured_and_progress_is_shown(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_URL", server.url)
    monkeypatch.setenv("FLEET_TOKEN", server.token)
    monkeypatch.delenv("NO_COLOR", raising=False)
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert bounded_main(["run", "--tag", "demo", "--", "echo hi; echo oops >&2"]) == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert sorted(plain.splitlines()) == sorted(
        [f"{n} | hi" for n in DEMO] + [f"{n} ! oops" for n in DEMO]
    )
    assert "\x1b[31m!\x1b[0m oops" in out.getvalue()  # stderr marked in red
    assert re.search(r"\r\d/3 done · \d failed · \d running · \d+s\x1b\[K", err.getvalue())
    assert "\r\x1b[K" in err.getvalue()  # the progress line is wiped before the summary
    assert "\x1b[32mCOMPLETED_SUCCESSFULLY\x1b[0m" in err.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    out.seek(0)
    out.truncate()
    assert bounded_main(["run", "--target", "demo-1", "--", "echo plain"]) == 0
    assert out.getvalue() == "demo-1 | plain\n"


def test_ctrl_c_twice_stops_watching_and_follow_attaches_again(
    server: Server, fleet: FleetRunner
) -> None:
    # The task outlives its SIGTERM by 2 s, so the batch is still TERMINATING when Ctrl-C
    # comes again (the second one is sent as soon as the first is acknowledged).
    command = "trap 'sleep 2; echo cleaned up' TERM; echo started; sleep 30"
    proc = spawn(server, "run", "--target", "demo-1", "--", command)
    try:
        err = Lines(proc.stderr)
        batch_id = err.wait_for(lambda line: line.startswith("fleet: batch "), 20).split()[2][:-1]
        Lines(proc.stdout).wait_for(lambda line: line.endswith("| started"), 20)
        proc.send_signal(signal.SIGINT)
        err.wait_for(lambda line: "terminating the batch" in line, 20)
        proc.send_signal(signal.SIGINT)  # at once: the terminate request must still go out
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    last = err.rest()[-1]
    assert last.startswith("fleet: stopped watching; the batch goes on terminating")
    assert f"fleet batches follow {batch_id}" in last

    followed = fleet("batches", "follow", batch_id)  # until it is over, with the missed output
    assert followed.code == 1
    stdout = [line for line in followed.out.splitlines() if " | " in line]
    assert stdout == ["demo-1 | started", "demo-1 | cleaned up"]
    assert followed.err_lines[-1].startswith("TERMINATED: 0 succeeded, 1 did not")
