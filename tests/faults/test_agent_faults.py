"""Agents SIGKILLed mid-command and started again (same ``--state-dir``) inside and beyond the
server's grace, and agents stopped with SIGTERM: the journal's truth reaches the batch."""

from __future__ import annotations

import signal

import pytest
import trio

from .checks import check, post_streaming_batch
from .conftest import OpenFleet

pytestmark = pytest.mark.faults

GRACE = 2.0
BOUND = 15.0
HIT = 3  # agents hit by the fault, of 6


@pytest.mark.parametrize(
    ("when", "grace", "restart_after"), [("inside", 10.0, 0.1), ("beyond", 2.0, 2.0)]
)
async def test_agent_sigkill_then_restart(
    open_fleet: OpenFleet, when: str, grace: float, restart_after: float
) -> None:
    """Restarted after ``restart_after`` × the grace (inside: as systemd's ``RestartSec=5``
    against the default 30 s grace; the agent's own start-up comes on top, 1-4 s on this
    shared 2-core machine, hence a 10 s grace, which costs nothing: the case settles when the
    agent is back, not when the grace ends): the
    killed agents' children end FAILURE "the agent restarted while the command ran" (inside)
    or AGENT_UNREACHABLE with that as ``agent_reported`` (beyond); the others SUCCESS."""
    with trio.fail_after(120):
        async with open_fleet(n=6, grace=grace) as fleet:
            content, expected = fleet.command("a", lines=60, interval=0.05)
            batch = await post_streaming_batch(fleet, content)
            fault_at = trio.current_time()
            hit = fleet.agents[:HIT]
            for agent in hit:
                await agent.kill(signal.SIGKILL)
            await trio.sleep(restart_after * grace)  # the fault's length
            for agent in hit:
                await agent.start()
            names = {a.name for a in fleet.agents}
            spared = {a.name for a in fleet.agents[HIT:]}
            killed = {a.name for a in hit}
            want = {"SUCCESS": spared}
            want["FAILURE" if when == "inside" else "AGENT_UNREACHABLE"] = killed
            await check(fleet, f"agent SIGKILL, restart {restart_after * grace:g} s after"
                        f" ({when} the {grace:g} s grace)", batch, "a", expected,
                        fault_at=fault_at, bound=BOUND, back=names, want=want,
                        allowed={"SUCCESS", "FAILURE", "AGENT_UNREACHABLE→FAILURE"},
                        because="the agent restarted while the command ran")  # fmt: skip


async def test_agent_sigterm_mid_command(open_fleet: OpenFleet) -> None:
    """An agent stopped (SIGTERM, as ``systemctl restart``) mid-command and started again
    within the grace (10 s: see above): its commands end TERMINATED "the agent is shutting
    down" (a result the stopping agent could not deliver is re-sent from its journal)."""
    with trio.fail_after(120):
        async with open_fleet(n=6, grace=10.0) as fleet:
            content, expected = fleet.command("s", lines=60, interval=0.05)
            batch = await post_streaming_batch(fleet, content)
            fault_at = trio.current_time()
            hit = fleet.agents[:HIT]
            for agent in hit:
                await agent.kill(signal.SIGTERM)
                assert agent.process is not None
                assert agent.process.returncode == 0
            for agent in hit:
                await agent.start()
            names = {a.name for a in fleet.agents}
            # A stopping agent terminates its commands and reports them (or they finished).
            await check(fleet, "agent SIGTERM mid-command, restarted", batch, "s", expected,
                        fault_at=fault_at, bound=BOUND, back=names,
                        want={"SUCCESS": {a.name for a in fleet.agents[HIT:]}},
                        allowed={"SUCCESS", "TERMINATED"},
                        because="the agent is shutting down")  # fmt: skip
