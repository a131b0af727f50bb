"""``--metrics``: a real server and real agents; the Prometheus scrape moves with a batch."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import fleet
from fleet.server.serve import Endpoints
from tests.fakeagent import FakeAgent
from tests.hostile import RawPeer, handshake

from .conftest import add_vps, wait_batch
from .test_real_agents import run_batch, start_agents

METRICS_ON = pytest.mark.parametrize("server_config", [{"metrics": "127.0.0.1:0"}], indirect=True)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Endpoints) -> Samples:
    """Every sample of the endpoint, parsed by prometheus-client's own parser."""
    assert server.metrics_url is not None
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(server.metrics_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@METRICS_ON
async def test_a_scrape_follows_a_batch(
    server: Endpoints, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        before = await scrape(server)
        assert value(before, "fleet_build_info", version=fleet.__version__) == 1
        assert value(before, "fleet_agents_online") == 0
        assert value(before, "fleet_batches_finished_total", status="COMPLETED_SUCCESSFULLY") == 0
        assert value(before, "fleet_output_bytes_total", stream="stdout") == 0

        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["m-1", "m-2"])
            assert value(await scrape(server), "fleet_agents_online") == 2

            # Each command prints, then waits for the test to let it finish.
            release = tmp_path / "release"
            command = f"echo started; while [ ! -e {release} ]; do sleep 0.02; done; echo done"
            batch_id = await run_batch(client, command, vps)
            await wait_batch(
                server,
                batch_id,
                lambda b: all(
                    t["status"] == "EXECUTING" and t["output_stream_summary"] for t in b["tasks"]
                ),
            )
            during = await scrape(server)
            assert value(during, "fleet_running_batches", status="IN_PROGRESS") == 1
            assert value(during, "fleet_running_children", status="EXECUTING") == 2
            assert value(during, "fleet_running_children", status="SUCCESS") == 0
            assert value(during, "fleet_output_bytes_total", stream="stdout") == 2 * len(
                "started\n"
            )
            assert (
                value(during, "fleet_batches_finished_total", status="COMPLETED_SUCCESSFULLY") == 0
            )
            with server.services.hub.subscribe(batch_id):
                assert value(await scrape(server), "fleet_feed_subscribers") == 1

            release.touch()
            batch = await wait_batch(server, batch_id)
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
            # The batch is counted when it ends, before the store has its last changes.
            after = await scrape(server)
            nursery.cancel_scope.cancel()

        assert value(after, "fleet_running_batches", status="IN_PROGRESS") == 0
        assert value(after, "fleet_running_children", status="EXECUTING") == 0
        assert value(after, "fleet_batches_finished_total", status="COMPLETED_SUCCESSFULLY") == 1
        assert value(after, "fleet_children_finished_total", status="SUCCESS") == 2
        assert value(after, "fleet_children_finished_total", status="FAILURE") == 0
        assert value(after, "fleet_batch_duration_seconds_count") == 1
        assert value(after, "fleet_batch_duration_seconds_sum") > 0
        assert value(after, "fleet_child_dispatch_to_start_seconds_count") == 2
        assert value(after, "fleet_output_bytes_total", stream="stdout") == 2 * len(
            "started\ndone\n"
        )
        assert value(after, "fleet_output_bytes_total", stream="stderr") == 0
        assert value(after, "fleet_store_write_seconds_count") > value(
            before, "fleet_store_write_seconds_count"
        )
        assert value(after, "fleet_store_write_failures_total") == 0


@METRICS_ON
async def test_refused_handshakes_are_counted(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        vps = await add_vps(client, "r-1")
        before = await scrape(server)
        assert value(before, "fleet_agent_handshakes_refused_total") == 0
        assert value(before, "fleet_agent_handshakes_rate_limited_total") == 0
        for _ in range(2):
            agent = FakeAgent(server.grpc_address, vps["id"], "not-the-secret")
            assert not (await agent.open()).authentication_successful
            await agent.close()
        assert value(await scrape(server), "fleet_agent_handshakes_refused_total") == 2
        # Beyond the per-address burst (20), refusals are answered without work: still counted.
        for _ in range(20):
            peer = RawPeer(server.grpc_address)
            await peer.open()
            await peer.send(handshake(vps["id"], "wrong"))
            await peer.receive()
            await peer.close()
        after = await scrape(server)
        assert value(after, "fleet_agent_handshakes_refused_total") == 22
        assert value(after, "fleet_agent_handshakes_rate_limited_total") == 2


@METRICS_ON
async def test_only_metrics_is_served(server: Endpoints) -> None:
    assert server.metrics_url is not None
    base = server.metrics_url.removesuffix("/metrics")
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(base + "/")).status_code == 404
            assert (await http.post(server.metrics_url)).status_code == 404
            gzipped = await http.get(server.metrics_url, headers={"Accept-Encoding": "gzip"})
            assert gzipped.headers["content-encoding"] == "gzip"
            assert "fleet_agents_online 0.0" in gzipped.text


async def test_metrics_are_off_by_default(server: Endpoints) -> None:
    assert server.metrics_url is None
