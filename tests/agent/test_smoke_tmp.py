from __future__ import annotations
import trio
from fleet.proto import agent_service as pb
from .conftest import running_agent

async def test_smoke(server, config):
    with trio.fail_after(10):
        async with running_agent(config) as connected:
            assert connected
            await server.run_command("c1", "echo hello; echo err >&2; exit 3")
            r = await server.wait_result("c1")
            print(r)
            print([x.kind for x in server.received])
            print(server.output("c1", pb.OutputType.STDOUT), server.output("c1", pb.OutputType.STDERR))
