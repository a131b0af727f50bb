"""``fleet batches …``: list, show, byte-exact logs, terminate."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import FleetRunner, Lines, Result, Server, bounded_main, spawn


def test_list_show_and_byte_exact_logs(
    server: Server, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_URL", server.url)
    monkeypatch.setenv("FLEET_TOKEN", server.token)

    def fleet(*argv: str) -> Result:  # like the fixture, with binary capture
        capsysbinary.readouterr()
        code = bounded_main(list(argv))
        captured = capsysbinary.readouterr()
        return Result(code, captured.out.decode(), captured.err.decode())

    command = "printf 'x\\000\\377y\\r\\n'; printf 'oops\\n' >&2; exit 2"
    ran = fleet("run", "--tag", "demo", "--json", "--", command)
    assert ran.code == 1
    batch = json.loads(ran.out)
    batch_id = batch["batch_command_id"]

    listed = fleet("batches", "list", "--limit", "5")
    assert listed.code == 0
    row = next(line for line in listed.out.splitlines() if line.startswith(batch_id))
    assert row.split()[1:4] == ["COMPLETED_WITH_ERRORS", "3", "3"]  # status, VPSes, 3 failure
    assert json.loads(fleet("batches", "list", "--json").out)["items"][0]["batch_command_id"]

    shown = fleet("batches", "show", batch_id)
    assert shown.code == 0
    assert f"batch     {batch_id}" in shown.out
    assert "COMPLETED_WITH_ERRORS" in shown.out
    assert re.search(r"^demo-2\s+FAILURE\s+2\s", shown.out, re.M)
    assert json.loads(fleet("batches", "show", batch_id, "--json").out) == batch

    capsysbinary.readouterr()
    assert bounded_main(["batches", "logs", batch_id, "--vps", "demo-2"]) == 0
    assert capsysbinary.readouterr().out == b"x\x00\xffy\r\n"
    assert bounded_main(["batches", "logs", batch_id, "--vps", "3", "--stream", "stderr"]) == 0
    assert capsysbinary.readouterr().out == b"oops\n"
    assert bounded_main(["batches", "logs", batch_id, "--stream", "stderr"]) == 0
    assert capsysbinary.readouterr().out == b"".join(
        b"==> demo-%d (stderr) <==\noops\n" % n for n in (1, 2, 3)
    )


def test_unknown_batch(fleet: FleetRunner) -> None:
    result = fleet("batches", "show", "no-such-batch")
    assert (result.code, result.err) == (2, "fleet: no batch with id no-such-batch\n")


def test_terminate_one_task_then_the_batch(fleet: FleetRunner, server: Server) -> None:
    proc = spawn(server, "run", "--tag", "demo", "--", "echo started; sleep 30; echo never")
    try:
        err = Lines(proc.stderr)
        first = err.wait_for(lambda line: line.startswith("fleet: batch "), 20)
        batch_id = first.split()[2].rstrip(":")
        out = Lines(proc.stdout)
        for _ in range(3):
            out.wait_for(lambda line: line.endswith("| started"), 20)

        one = fleet("batches", "terminate", batch_id, "--child", "demo-2")
        assert one.code == 0, one.err
        assert re.fullmatch(r"Task \S+ on demo-2: (TERMINATING|TERMINATED)\n", one.out)

        rest = fleet("batches", "terminate", batch_id)
        assert rest.code == 0, rest.err
        assert rest.out in (f"Batch {batch_id}: TERMINATING\n", f"Batch {batch_id}: TERMINATED\n")
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    summary = err.rest()
    assert summary[-1].startswith("TERMINATED: 0 succeeded, 3 did not")
    assert sum(" TERMINATED " in line for line in summary) == 3
    assert not [line for line in out.rest() if "never" in line]
    again = fleet("batches", "terminate", batch_id)  # already over: a harmless no-op
    assert (again.code, again.out) == (0, f"Batch {batch_id}: TERMINATED\n")
