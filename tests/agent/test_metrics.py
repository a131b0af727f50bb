"""``fleet-agent --metrics``: what the agent counts, and the endpoint that shows it."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import fleet
from fleet.agent.cli import main
from fleet.agent.config import AgentConfig, ConfigError
from fleet.agent.metrics import AgentStats, serve_metrics

from .conftest import running_agent
from .fakeserver import FakeServer
from .helpers import STDOUT


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_agent_counts_links_output_and_running_commands(
    server: FakeServer, config: AgentConfig
) -> None:
    stats = AgentStats()
    endpoint = serve_metrics(stats, "127.0.0.1", 0)
    try:
        with trio.fail_after(20):
            async with running_agent(config, stats=stats):
                assert stats.connected
                await server.run_command("c", "echo started; sleep 30")
                await server.wait_for(lambda: server.output("c", STDOUT))
                # The pump counts a message once it is sent: a later result proves it is.
                await server.run_command("first-probe", "true")
                await server.wait_result("first-probe")
                during = await trio.to_thread.run_sync(_scrape, endpoint.url)
                await server.terminate("c")
                await server.wait_result("c")
                await server.restart()  # the link drops; the agent reconnects
                await server.wait_connected()
                await server.run_command("probe", "true")  # answered on the new link
                await server.wait_result("probe")
                assert stats.connections == 2
                after = await trio.to_thread.run_sync(_scrape, endpoint.url)
    finally:
        endpoint.close()
    assert during[("fleet_agent_running_commands", ())] == 1
    assert during[("fleet_agent_connected", ())] == 1
    assert during[("fleet_agent_reconnects_total", ())] == 0
    assert during[("fleet_agent_output_sent_bytes_total", (("stream", "stdout"),))] == len(
        "started\n"
    )
    assert during[("fleet_agent_build_info", (("version", fleet.__version__),))] == 1
    assert after[("fleet_agent_running_commands", ())] == 0
    assert after[("fleet_agent_reconnects_total", ())] == 1
    assert after[("fleet_agent_output_sent_bytes_total", (("stream", "stderr"),))] == 0


def test_metrics_setting() -> None:
    base = AgentConfig.for_test("127.0.0.1:1")
    assert base.metrics_endpoint is None  # off by default
    assert base.replace(metrics="9471").metrics_endpoint == ("127.0.0.1", 9471)
    assert base.replace(metrics="[::1]:9471").metrics_endpoint == ("::1", 9471)
    assert base.replace(metrics="127.0.0.1:0").metrics_endpoint == ("127.0.0.1", 0)
    for bad in ("nope", "99999", "host:"):
        with pytest.raises(ConfigError, match="metrics must be HOST:PORT or PORT"):
            base.replace(metrics=bad)


def test_a_metrics_port_in_use_is_one_line_and_status_2(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(
            ["--server", "127.0.0.1:1", "--vps-id", "1", "--secret", "s",
             "--state-dir", str(tmp_path), "--metrics", f"127.0.0.1:{port}"]
        )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"fleet-agent: error: --metrics 127.0.0.1:{port}: ")
    assert "Traceback" not in "\n".join(err)
