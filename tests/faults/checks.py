"""What every fault case asserts about a batch, against the markers its commands left.

- every child terminal within the server's grace plus the case's stated bound;
- no status contradicting the markers: a child SUCCESS/FAILURE/TERMINATED ran; a child whose
  marker exists is never "not sent"/rejected/skipped; a SUCCESS (or ``agent_reported``
  SUCCESS) ran to its end; an ``AGENT_UNREACHABLE`` child whose command ran shows
  ``agent_reported`` once its agent is back;
- every byte the agent delivered is in the log exactly once: the downloaded log is a prefix of
  the command's known output (all of it for a child that ended SUCCESS, unless the child
  says from which byte on its log could not be written), and ``stdout_bytes`` is its length;
- no command ran twice (at most one marker per VPS and batch, carrying the child's id).
"""

from __future__ import annotations

import collections
import re
from typing import Any

import httpx
import trio

from .cluster import FINAL, RAN, TERMINAL, Fleet

#: How a child says its stdout log could not be written from some byte on.
LOST = re.compile(r"stdout: output from byte (\d+) on was lost")
#: Words of a status saying the command was never sent (wrong for a command that ran).
UNSENT = ("not sent", "before sending", "never reached", "was not dispatched")


async def post_batch(fleet: Fleet, content: str) -> str:
    async with fleet.server.client() as client:
        response = await client.post(
            "/api/batch_commands",
            json={"command_content": content, "target_vps_ids": [a.vps_id for a in fleet.agents]},
        )
    assert response.status_code == 202, response.text
    return str(response.json()["batch_command_id"])


async def post_streaming_batch(fleet: Fleet, content: str) -> str:
    """``post_batch``, then wait (20 s at most) until every child has streamed some output:
    the moment a fault hurts most."""
    batch = await post_batch(fleet, content)
    with trio.fail_after(20):
        await wait_batch(fleet, batch, lambda b: all(t["stdout_bytes"] > 0 for t in b["tasks"]))
    return batch


async def _get(fleet: Fleet, path: str) -> httpx.Response | None:
    """GET on the current server; None while it is down or restarting."""
    try:
        async with fleet.server.client() as client:
            return await client.get(path)
    except httpx.TransportError:
        return None


async def wait_batch(fleet: Fleet, batch_id: str, until: Any) -> dict[str, Any]:
    """Poll the batch (0.1 s) until ``until(body)``; the caller bounds it."""
    while True:
        response = await _get(fleet, f"/api/batch_commands/{batch_id}")
        if response is not None and response.status_code == 200:
            body: dict[str, Any] = response.json()
            if until(body):
                return body
        await trio.sleep(0.1)


def _final(body: dict[str, Any]) -> bool:
    return body["overall_status"] in FINAL and all(t["status"] in TERMINAL for t in body["tasks"])


async def check(
    fleet: Fleet,
    case: str,
    batch_id: str,
    tag: str,
    expected: bytes,
    *,
    fault_at: float,
    bound: float,
    back: set[str],
    want: dict[str, set[str]] | None = None,
    allowed: set[str] | None = None,
    because: str = "",
) -> dict[str, Any]:
    """Assert the suite's invariants for one batch and return its row of the summary.

    ``fault_at`` is ``trio.current_time()`` when the fault began; ``bound`` the seconds after
    the grace within which every child must be terminal; ``back`` the VPS names whose agents
    run at the end (their ``agent_reported`` is awaited); ``want`` optionally maps a status to
    the VPS names that must end with it; ``allowed`` optionally lists the only outcomes
    (``STATUS`` or ``STATUS→REPORTED``) a child may end with; ``because`` is the text every
    FAILURE or TERMINATED child must give in its ``error_message``.
    """
    grace = fleet.server.grace
    with trio.fail_at(fault_at + grace + bound):  # the bound counts from the fault
        body = await wait_batch(fleet, batch_id, _final)
    settled = trio.current_time() - fault_at
    runs = fleet.runs(tag)

    def owed(task: dict[str, Any]) -> bool:  # an agent_reported still to come
        return (
            task["status"] == "AGENT_UNREACHABLE"
            and bool(runs.get(task["vps_name"]))
            and task["vps_name"] in back
            and not task.get("agent_reported")
        )

    if any(owed(t) for t in body["tasks"]):
        with trio.fail_after(bound):
            body = await wait_batch(fleet, batch_id, lambda b: not any(owed(t) for t in b["tasks"]))
        runs = fleet.runs(tag)
    checked = 0
    for task in body["tasks"]:
        name, status, error = task["vps_name"], task["status"], task["error_message"] or ""
        ran = runs.get(name, [])
        where = f"{case}: {name} {status} {error!r} agent_reported={task.get('agent_reported')}"
        assert len(ran) <= 1, f"{where}: ran {len(ran)} times"
        reported = (task.get("agent_reported") or {}).get("status")
        if ran:
            assert ran[0][0] == task["child_command_id"], f"{where}: marker {ran[0][0]}"
            assert not any(word in error for word in UNSENT), f"{where}: it ran"
            assert status not in {"AGENT_REJECTED", "SKIPPED"}, f"{where}: it ran"
        if status in RAN:
            # FAILURE "the agent restarted while the command ran" may precede the shell's
            # first line (the agent died right after starting it).
            assert ran or "restarted while the command ran" in error, f"{where}: no marker"
        if status == "SUCCESS" or reported == "SUCCESS":
            assert ran, f"{where}: SUCCESS but no marker"
            assert ran[0][1], f"{where}: SUCCESS but the command did not finish"
        if because and status in {"FAILURE", "TERMINATED"}:
            assert because in error, f"{where}: expected {because!r}"
        response = await _get(
            fleet, f"/api/batch_commands/{batch_id}/tasks/{task['child_command_id']}/output"
        )
        assert response is not None, where
        assert response.status_code == 200, where
        log = response.content
        assert expected.startswith(log), f"{where}: log is not a prefix of the output: {log!r}"
        lost = LOST.search(error)
        if lost:  # a log that could not be written (disk full): said, and from which byte
            assert int(lost[1]) == len(log), f"{where}: {len(log)} bytes stored"
        elif status == "SUCCESS" or reported == "SUCCESS":
            assert log == expected, f"{where}: {len(log)} of {len(expected)} bytes"
        assert task["stdout_bytes"] == len(log), f"{where}: stdout_bytes {task['stdout_bytes']}"
        checked += len(log)
    statuses = collections.Counter(
        t["status"] + (f"→{t['agent_reported']['status']}" if t.get("agent_reported") else "")
        for t in body["tasks"]
    )
    if allowed is not None:
        assert set(statuses) <= allowed, f"{case}: {statuses} (allowed: {sorted(allowed)})"
    if want:
        for status, names in want.items():
            got = {t["vps_name"] for t in body["tasks"] if t["status"] == status}
            assert names <= got, f"{case}: {status} expected for {sorted(names - got)}: {statuses}"
    row = {
        "case": case,
        "children": len(body["tasks"]),
        "statuses": ", ".join(f"{n}× {s}" for s, n in sorted(statuses.items())),
        "ran": sum(len(v) for v in runs.values()),
        "bytes": checked,
        "settle": settled,
        "batch": body["overall_status"],
    }
    fleet.cases.append(row)
    return row
