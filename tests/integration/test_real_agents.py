"""The server with real agents (the real agent code and real subprocesses) in one trio run."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from fleet.agent.config import AgentConfig
from fleet.agent.run import run_agent
from fleet.server.config import ServerConfig
from fleet.server.serve import Endpoints, serve

from .conftest import add_vps, task_of, wait_batch, wait_online


async def start_agents(
    nursery: trio.Nursery,
    server: Endpoints,
    client: httpx.AsyncClient,
    names: list[str],
    **overrides: Any,
) -> list[dict[str, Any]]:
    out = []
    for name in names:
        vps = await add_vps(client, name)
        config = AgentConfig.for_test(
            server.grpc_address, vps_id=vps["id"], secret=vps["agent_secret"], **overrides
        )
        assert await nursery.start(run_agent, config)
        await wait_online(server, vps["id"])
        out.append(vps)
    return out


async def run_batch(
    client: httpx.AsyncClient, command: str, vps: list[dict[str, Any]], **extra: Any
) -> str:
    response = await client.post(
        "/api/batch_commands",
        json={"command_content": command, "target_vps_ids": [v["id"] for v in vps], **extra},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batch_command_id"])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone as a running process.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


async def test_three_agents_mixed_results(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["a", "b", "c"])
            ok = await run_batch(client, "echo out-$((1+1)); echo err >&2", vps)
            batch = await wait_batch(server, ok)
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
            for task in batch["tasks"]:
                assert task["status"] == "SUCCESS"
                assert task["exit_code"] == 0
                assert task["output_stream_summary"] == ["out-2"]
                assert task["error_stream_summary"] == ["err"]
                assert task["agent_started_at"]
                assert task["agent_completed_at"]
            bad = await run_batch(client, 'test "$(hostname)" = nope || exit 7', vps[:1])
            batch = await wait_batch(server, bad)
            assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
            assert (batch["tasks"][0]["status"], batch["tasks"][0]["exit_code"]) == ("FAILURE", 7)
            nursery.cancel_scope.cancel()


async def test_binary_output_is_byte_exact(
    server: Endpoints, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    blob = bytes(range(256)) * 12_000  # ~3 MB of every byte value
    source = tmp_path / "blob.bin"
    source.write_bytes(blob)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["bin"])
            batch_id = await run_batch(client, f"cat {source}; head -c 100000 {source} >&2", vps)
            batch = await wait_batch(server, batch_id)
            task = batch["tasks"][0]
            assert task["status"] == "SUCCESS"
            assert task["stdout_bytes"] == len(blob)
            base = f"/api/batch_commands/{batch_id}/tasks/{task['child_command_id']}/output"
            assert (await client.get(base + "?stream=stdout")).content == blob
            assert (await client.get(base + "?stream=stderr")).content == blob[:100_000]
            nursery.cancel_scope.cancel()


async def test_terminate_batch_kills_stubborn_process_and_grandchild(
    server: Endpoints, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = (
        f"trap '' TERM; (trap '' TERM; sleep 300) & echo $! >> {pids}; echo $$ >> {pids}; "
        "echo ready; while :; do sleep 1; done"
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["t1", "t2"])
            batch_id = await run_batch(client, script, vps)
            await wait_batch(
                server,
                batch_id,
                lambda b: all(t["output_stream_summary"] == ["ready"] for t in b["tasks"]),
            )
            response = await client.post(f"/api/batch_commands/{batch_id}/terminate")
            assert response.status_code == 202
            assert response.json()["overall_status"] == "TERMINATING"
            batch = await wait_batch(server, batch_id)
            assert batch["overall_status"] == "TERMINATED"
            assert [t["status"] for t in batch["tasks"]] == ["TERMINATED", "TERMINATED"]
            recorded = [int(p) for p in pids.read_text().split()]
            assert len(recorded) == 4
            assert all(_gone(pid) for pid in recorded), recorded
            nursery.cancel_scope.cancel()


async def test_terminate_one_child(
    server: Endpoints, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["keep", "stop"])
            command = f"echo started; while [ ! -e {flag} ]; do sleep 0.05; done; echo done"
            batch_id = await run_batch(client, command, vps)
            batch = await wait_batch(
                server, batch_id, lambda b: all(t["output_stream_summary"] for t in b["tasks"])
            )
            child = task_of(batch, "stop")["child_command_id"]
            response = await client.post(f"/api/batch_commands/{batch_id}/tasks/{child}/terminate")
            assert response.status_code == 202
            await wait_batch(
                server, batch_id, lambda b: task_of(b, "stop")["status"] == "TERMINATED"
            )
            flag.write_text("")
            batch = await wait_batch(server, batch_id)
            assert task_of(batch, "keep")["status"] == "SUCCESS"
            assert task_of(batch, "keep")["output_stream_summary"] == ["started", "done"]
            assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
            nursery.cancel_scope.cancel()


async def test_timeout_missing_directory_and_rejections(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [vps] = await start_agents(nursery, server, client, ["a"])
            [locked] = await start_agents(nursery, server, client, ["locked"], no_exec=True)
            slow = await run_batch(client, "sleep 30", [vps], timeout_seconds=1)
            nowhere = await run_batch(client, "pwd", [vps], working_directory="/no/such/dir")
            rejected = await run_batch(client, "true", [locked])
            t = (await wait_batch(server, slow))["tasks"][0]
            assert (t["status"], t["error_message"]) == ("FAILURE", "timed out after 1 s")
            t = (await wait_batch(server, nowhere))["tasks"][0]
            assert t["status"] == "FAILURE"
            assert "/no/such/dir" in t["error_message"]
            batch = await wait_batch(server, rejected)
            assert batch["tasks"][0]["status"] == "AGENT_REJECTED"
            assert batch["tasks"][0]["error_message"]
            assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server_config", [{"output_cap_bytes": 1000}], indirect=True)
async def test_output_cap_cuts_the_log(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [vps] = await start_agents(nursery, server, client, ["cap"])
            batch_id = await run_batch(client, "head -c 5000 /dev/zero | tr '\\0' x", [vps])
            task = (await wait_batch(server, batch_id))["tasks"][0]
            assert task["status"] == "SUCCESS"
            assert task["truncated"] is True
            assert task["stdout_bytes"] == 5000
            log = await client.get(
                f"/api/batch_commands/{batch_id}/tasks/{task['child_command_id']}/output"
            )
            assert log.content == b"x" * 1000
            nursery.cancel_scope.cancel()


async def test_server_restart_mid_command_resumes_the_batch(loop: Any, tmp_path: Path) -> None:
    """The server goes away mid-command and comes back on the same port: the agent's result
    and the output produced meanwhile land, with no duplicate bytes."""
    data = tmp_path / "data"
    flag = tmp_path / "go"
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            first = await outer.start(
                _serve_scoped, ServerConfig.for_test(data, reconnect_grace_s=30)
            )
            endpoints: Endpoints = first[0]
            async with httpx.AsyncClient(
                base_url=endpoints.http_url, headers={"Authorization": f"Bearer {endpoints.token}"}
            ) as client:
                [vps] = await start_agents(outer, endpoints, client, ["r"])
                batch_id = await run_batch(
                    client,
                    f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after",
                    [vps],
                )
                await wait_batch(endpoints, batch_id, lambda b: b["tasks"][0]["stdout_bytes"] == 7)
            grpc_port = endpoints.grpc_port
            first[1].cancel()  # stop the first server
            await first[2].wait()
            flag.write_text("")  # the command finishes while the server is down
            second = await outer.start(
                _serve_scoped,
                ServerConfig.for_test(data, grpc=f"127.0.0.1:{grpc_port}", reconnect_grace_s=30),
            )
            endpoints = second[0]
            batch = await wait_batch(endpoints, batch_id)
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
            async with httpx.AsyncClient(
                base_url=endpoints.http_url, headers={"Authorization": f"Bearer {endpoints.token}"}
            ) as client:
                log = await client.get(
                    f"/api/batch_commands/{batch_id}/tasks/{batch['tasks'][0]['child_command_id']}/output"
                )
                assert log.content == b"before\nafter\n"
            outer.cancel_scope.cancel()


async def _serve_scoped(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[Endpoints, trio.CancelScope, trio.Event]],
) -> None:
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                endpoints = await nursery.start(serve, config)
                task_status.started((endpoints, scope, done))
    finally:
        done.set()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return paths


async def test_tls_end_to_end(loop: Any, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = ServerConfig.for_test(
        tmp_path / "data", tls_cert=tls_files["cert"], tls_key=tls_files["key"]
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            endpoints: Endpoints = await nursery.start(serve, config)
            assert endpoints.http_url.startswith("https://")
            context = ssl.create_default_context(cafile=str(tls_files["ca"]))
            async with httpx.AsyncClient(
                base_url=endpoints.http_url,
                headers={"Authorization": f"Bearer {endpoints.token}"},
                verify=context,
            ) as client:
                [vps] = await start_agents(
                    nursery, endpoints, client, ["tls"], tls=True, ca_file=tls_files["ca"]
                )
                batch_id = await run_batch(client, "echo secure", [vps])
                batch = await wait_batch(endpoints, batch_id)
                assert batch["tasks"][0]["output_stream_summary"] == ["secure"]
                # A plaintext agent cannot talk to the TLS listener.
                plain = AgentConfig.for_test(
                    endpoints.grpc_address, vps_id=vps["id"], secret="whatever", connect_timeout_s=2
                )
                assert await nursery.start(run_agent, plain) is False
            nursery.cancel_scope.cancel()


async def test_graceful_shutdown_ends_agent_streams(loop: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            endpoints, scope, done = await outer.start(
                _serve_scoped, ServerConfig.for_test(tmp_path / "d")
            )
            async with httpx.AsyncClient(
                base_url=endpoints.http_url, headers={"Authorization": f"Bearer {endpoints.token}"}
            ) as client:
                await start_agents(outer, endpoints, client, ["g"])
            with trio.fail_after(5):
                scope.cancel()
                await done.wait()
            outer.cancel_scope.cancel()


async def test_shutdown_does_not_wait_for_terminate_confirmations(
    loop: Any, tmp_path: Path
) -> None:
    """A child being terminated (its agent never confirms) must not hold up a shutdown."""
    from tests.fakeagent import FakeAgent

    config = ServerConfig.for_test(tmp_path / "d", terminate_confirm_s=60)
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            endpoints, scope, done = await outer.start(_serve_scoped, config)
            async with httpx.AsyncClient(
                base_url=endpoints.http_url, headers={"Authorization": f"Bearer {endpoints.token}"}
            ) as client:
                vps = await add_vps(client, "mute")
                agent = FakeAgent(endpoints.grpc_address, vps["id"], vps["agent_secret"])
                assert (await agent.open()).authentication_successful
                await wait_online(endpoints, vps["id"])
                batch_id = await run_batch(client, "sleep 100", [vps])
                await agent.receive_payload("batch_agent_command_request")
                await client.post(f"/api/batch_commands/{batch_id}/terminate")
                await agent.receive_payload("batch_terminate_command_request")
            with trio.fail_after(5):
                scope.cancel()
                await done.wait()
            await agent.close()
            outer.cancel_scope.cancel()
