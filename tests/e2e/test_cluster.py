"""A cluster of three ``fleet-server`` processes on one PostgreSQL database, with real agents.

A batch created on node A over agents spread across A, B and C; its feed watched and its output
downloaded from C; a terminate sent to B; B SIGKILLed while running a batch of its own (its
agents move, a live node adopts the batch, it finishes, and the agents' marker files prove that
nothing ran twice); B restarted under its name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .cluster_helpers import DSN_ENV, Node, fresh_database, postgres_dsn, start_agent, stop_all

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get(DSN_ENV),
        reason=f"cluster tests need PostgreSQL: {DSN_ENV} is unset (.ci/run sets it)",
    ),
]

FINAL = {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}


def _ws(client: httpx.AsyncClient, path: str) -> tuple[str, list[tuple[str, str]]]:
    url = str(client.base_url).replace("http://", "ws://") + path
    return url, [("Authorization", client.headers["Authorization"])]


async def _wait_online(client: httpx.AsyncClient, ids: set[int]) -> None:
    """This node's presence feed says every one of ``ids`` is online (wherever it connected)."""
    url, headers = _ws(client, "/ws/vps")
    async with open_websocket_url(url, extra_headers=headers) as ws:
        message = json.loads(await ws.get_message())
        online = {v["id"] for v in message["vps"] if v["online"]}
        while not ids <= online:
            event = json.loads(await ws.get_message())
            if event["vps"]["online"]:
                online.add(event["vps"]["id"])
            else:
                online.discard(event["vps"]["id"])


async def _follow(
    client: httpx.AsyncClient, batch_id: str, until: Any = lambda b: b["overall_status"] in FINAL
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Follow the batch's feed on this node until ``until(GET body)``; the body and events."""
    url, headers = _ws(client, f"/ws/batch_commands/{batch_id}")
    events = []
    async with open_websocket_url(url, extra_headers=headers) as ws:
        json.loads(await ws.get_message())  # the snapshot
        while not until(body := (await client.get(f"/api/batch_commands/{batch_id}")).json()):
            events.append(json.loads(await ws.get_message()))
    return dict(body), events


def _all(status: str) -> Any:
    return lambda b: all(t["status"] == status for t in b["tasks"])


async def _run(client: httpx.AsyncClient, targets: list[int], command: str) -> str:
    response = await client.post(
        "/api/batch_commands", json={"command_content": command, "target_vps_ids": targets}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batch_command_id"])


async def test_three_nodes_dispatch_terminate_feed_failover_restart(tmp_path: Path) -> None:
    dsn = postgres_dsn()
    with fresh_database(dsn) as db:
        nodes = [Node(n, tmp_path / n, db, lease_s=4.0) for n in ("node-a", "node-b", "node-c")]
        agents: list[trio.Process] = []
        try:
            with trio.fail_after(180):
                await _scenario(nodes, agents, tmp_path)
        finally:
            await stop_all(agents)
            for node in nodes:
                await node.stop()


async def _scenario(nodes: list[Node], agents: list[trio.Process], tmp_path: Path) -> None:
    node_a, node_b, node_c = nodes
    await node_a.start()
    await node_b.start(node_a.token)
    await node_c.start(node_a.token)
    async with node_a.client() as a, node_b.client() as b, node_c.client() as c:
        vpses = [(await a.post("/api/vps", json={"name": f"v{i}"})).json() for i in range(6)]
        ids = [int(v["id"]) for v in vpses]
        servers = [node.grpc for node in nodes]
        for i, vps in enumerate(vpses):
            first = i % 3  # two agents prefer each node
            order = servers[first:] + servers[:first]
            agents.append(await start_agent(order, vps, tmp_path, tmp_path / f"marker-{vps['id']}"))
        for client in (a, b, c):
            await _wait_online(client, set(ids))

        # A batch created on A reaches agents held by A, B and C; C follows and downloads it.
        gate = tmp_path / "gate"
        batch = await _run(
            a,
            ids,
            f'echo "start" >> "$MARKER.a"; while [ ! -e {gate} ]; do sleep 0.05; done;'
            ' printf "out %s\\n" "$MARKER"',
        )
        url, headers = _ws(c, f"/ws/batch_commands/{batch}")
        async with open_websocket_url(url, extra_headers=headers) as ws:
            json.loads(await ws.get_message())  # subscribed on C: now let the output come
            gate.touch()
            while json.loads(await ws.get_message())["type"] != "NEW_LOG_OUTPUT":
                pass
        body, _ = await _follow(c, batch)
        assert body["overall_status"] == "COMPLETED_SUCCESSFULLY", body
        for task in body["tasks"]:
            out = await c.get(
                f"/api/batch_commands/{batch}/tasks/{task['child_command_id']}/output"
            )
            assert out.content == f"out {tmp_path}/marker-{task['vps_id']}\n".encode()

        # A terminate sent to B reaches the batch A runs.
        batch = await _run(a, ids, "sleep 60")
        await _follow(b, batch, _all("EXECUTING"))
        response = await b.post(f"/api/batch_commands/{batch}/terminate")
        assert response.status_code == 202
        body, _ = await _follow(b, batch)
        assert body["overall_status"] == "TERMINATED", body
        assert {t["status"] for t in body["tasks"]} == {"TERMINATED"}

        # B dies while running its own batch: a live node adopts it and it finishes.
        batch = await _run(b, ids, 'echo "start" >> "$MARKER.b"; sleep 4; echo done')
        await _follow(a, batch, _all("EXECUTING"))
        node_b.kill()
        await node_b.process.wait()  # type: ignore[union-attr]
        body, _ = await _follow(a, batch)
        assert body["overall_status"] == "COMPLETED_SUCCESSFULLY", body
        await _wait_online(c, set(ids))  # B's agents moved
        for vps_id in ids:
            assert (tmp_path / f"marker-{vps_id}.a").read_text() == "start\n"
            assert (tmp_path / f"marker-{vps_id}.b").read_text() == "start\n"  # ran once

        # B comes back under its name and runs batches again.
        await node_b.start(node_a.token)
    async with node_b.client() as b, node_c.client() as c:
        batch = await _run(b, ids, "echo again")
        body, _ = await _follow(c, batch)
        assert body["overall_status"] == "COMPLETED_SUCCESSFULLY", body


async def test_a_node_stopped_on_purpose_gives_up_its_lease(tmp_path: Path) -> None:
    """SIGTERM to the node running a batch: it commits, then gives up its lease (instead of
    holding it a lease longer, up to 15 s), so a live node adopts the batch at its next look;
    the batch finishes there and nothing runs twice."""
    import psycopg2

    dsn = postgres_dsn()
    with fresh_database(dsn) as db:
        nodes = [Node(n, tmp_path / n, db, lease_s=15.0) for n in ("node-a", "node-b")]
        agents: list[trio.Process] = []
        try:
            with trio.fail_after(120):
                node_a, node_b = nodes
                await node_a.start()
                await node_b.start(node_a.token)
                async with node_a.client() as a, node_b.client() as b:
                    vpses = [(await a.post("/api/vps", json={"name": f"g{i}"})).json()
                             for i in range(2)]  # fmt: skip
                    ids = [int(v["id"]) for v in vpses]
                    servers = [node_b.grpc, node_a.grpc]
                    for i, vps in enumerate(vpses):
                        order = servers[i:] + servers[:i]  # one agent on each node
                        marker = tmp_path / f"marker-{vps['id']}"
                        agents.append(await start_agent(order, vps, tmp_path, marker))
                    await _wait_online(a, set(ids))
                    batch = await _run(b, ids, 'echo "start" >> "$MARKER.g"; sleep 2; echo done')
                    await _follow(a, batch, _all("EXECUTING"))
                    await node_b.stop()  # SIGTERM: a graceful stop
                    assert node_b.process is not None
                    assert node_b.process.returncode == 0
                    with psycopg2.connect(db) as conn, conn.cursor() as cur:
                        cur.execute(
                            "SELECT lease_until <= now() FROM fleet_node WHERE name = 'node-b'"
                        )
                        row = cur.fetchone()
                    # Given up (or already adopted: the row is gone), not held 15 s more.
                    assert row is None or row[0] is True
                    body, _ = await _follow(a, batch)
                    assert body["overall_status"] == "COMPLETED_SUCCESSFULLY", body
                    for vps_id in ids:
                        assert (tmp_path / f"marker-{vps_id}.g").read_text() == "start\n"
        finally:
            await stop_all(agents)
            for node in nodes:
                await node.stop()
