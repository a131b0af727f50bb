"""The server SIGKILLed or SIGTERMed under a running batch, then started again on the same
data directory: every child ends truthfully, no command runs twice, no output is lost or
doubled."""

from __future__ import annotations

import signal

import pytest
import trio

from .checks import check, post_batch, post_streaming_batch
from .conftest import OpenFleet

pytestmark = pytest.mark.faults

GRACE = 2.0
#: Where every child must come back SUCCESS: a grace that a restarted server plus reconnecting
#: agents meet even on a loaded machine; it costs nothing when they do.
ROOMY_GRACE = 8.0
#: Seconds after the grace within which every child must be terminal (server restart included).
BOUND = 20.0


@pytest.mark.parametrize("delay_ms", [0, 20, 50, 100, 300])
async def test_server_sigkill_after_202(open_fleet: OpenFleet, delay_ms: int) -> None:
    with trio.fail_after(120):
        async with open_fleet(n=8, grace=GRACE) as fleet:
            content, expected = fleet.command("k", lines=5, interval=0.1)
            batch = await post_batch(fleet, content)
            await trio.sleep(delay_ms / 1000)  # the fault's timing, not a synchronisation
            fault_at = trio.current_time()
            fleet.server.signal(signal.SIGKILL)
            await fleet.server.wait()
            await fleet.server.start(fleet.nursery)
            names = {a.name for a in fleet.agents}
            await check(fleet, f"server SIGKILL {delay_ms} ms after 202", batch, "k", expected,
                        fault_at=fault_at, bound=BOUND, back=names)  # fmt: skip


async def test_server_sigkill_mid_output(open_fleet: OpenFleet) -> None:
    with trio.fail_after(120):
        async with open_fleet(n=6, grace=ROOMY_GRACE) as fleet:
            content, expected = fleet.command("o", lines=30, interval=0.05)
            batch = await post_streaming_batch(fleet, content)
            fault_at = trio.current_time()
            fleet.server.signal(signal.SIGKILL)
            await fleet.server.wait()
            await fleet.server.start(fleet.nursery)
            names = {a.name for a in fleet.agents}
            await check(fleet, "server SIGKILL mid-output", batch, "o", expected,
                        fault_at=fault_at, bound=BOUND, back=names,
                        want={"SUCCESS": names})  # fmt: skip


async def test_server_sigterm_mid_batch(open_fleet: OpenFleet) -> None:
    with trio.fail_after(120):
        async with open_fleet(n=6, grace=ROOMY_GRACE) as fleet:
            content, expected = fleet.command("t", lines=30, interval=0.05)
            batch = await post_streaming_batch(fleet, content)
            fault_at = trio.current_time()
            fleet.server.signal(signal.SIGTERM)
            assert await fleet.server.wait() == 0
            await fleet.server.start(fleet.nursery)
            names = {a.name for a in fleet.agents}
            await check(fleet, "server SIGTERM mid-batch", batch, "t", expected,
                        fault_at=fault_at, bound=BOUND, back=names,
                        want={"SUCCESS": names})  # fmt: skip
