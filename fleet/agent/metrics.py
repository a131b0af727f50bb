"""The agent's own Prometheus metrics (``fleet-agent --metrics HOST:PORT``, off by default).

The agent always keeps a few plain counters in :class:`AgentStats` (a handful of integer
updates: nothing else on its paths); only ``--metrics`` imports ``prometheus-client`` and
serves them, from prometheus-client's own HTTP server thread, as:

* ``fleet_agent_running_commands`` (gauge): commands running now;
* ``fleet_agent_connected`` (gauge): 1 while the link to the server is up;
* ``fleet_agent_reconnects_total`` (counter): links established after the first one;
* ``fleet_agent_output_sent_bytes_total{stream}`` (counter): command output sent to the server;
* ``fleet_agent_build_info{version}``.

The collector runs in that thread and only reads integers (and the length of the running
commands' dict), which is safe without locks under the GIL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fleet
from fleet.proto import agent_service as pb

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["AgentStats", "MetricsServer", "registry_for", "serve_metrics"]

logger = logging.getLogger(__name__)

_STREAMS = {pb.OutputType.STDOUT: "stdout", pb.OutputType.STDERR: "stderr"}


def _none() -> int:
    return 0


@dataclass
class AgentStats:
    """What the agent counts for its metrics (one per ``run_agent``)."""

    #: Links established (handshake accepted) since the agent started.
    connections: int = 0
    #: Whether a link is up now.
    connected: bool = False
    #: Bytes of command output sent to the server, per stream.
    output_sent: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    #: How many commands run now (set by the agent: it reads its own table).
    running_commands: Callable[[], int] = _none

    def link_up(self) -> None:
        self.connections += 1
        self.connected = True

    def link_down(self) -> None:
        self.connected = False

    def sent(self, message: pb.MessageToServer) -> None:
        """Count ``message`` once it was handed to the link."""
        output = message.batch_command_output_stream
        if output is not None:
            stream = _STREAMS.get(output.stream_type)
            if stream is not None:
                self.output_sent[stream] += len(output.chunk)


def registry_for(stats: AgentStats) -> CollectorRegistry:
    """A registry whose collector reads ``stats`` at every scrape (imports prometheus-client)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterator[Metric]:
            info = InfoMetricFamily("fleet_agent_build", "The running Fleet agent's version.")
            info.add_metric([], {"version": fleet.__version__})
            yield info
            yield GaugeMetricFamily(
                "fleet_agent_running_commands",
                "Commands this agent runs now.",
                value=stats.running_commands(),
            )
            yield GaugeMetricFamily(
                "fleet_agent_connected",
                "1 while the link to the server is up.",
                value=int(stats.connected),
            )
            yield CounterMetricFamily(
                "fleet_agent_reconnects",
                "Links to the server established after the first one.",
                value=max(stats.connections - 1, 0),
            )
            sent = CounterMetricFamily(
                "fleet_agent_output_sent_bytes",
                "Command output sent to the server, in bytes.",
                labels=["stream"],
            )
            for stream, size in dict(stats.output_sent).items():
                sent.add_metric([stream], size)
            yield sent

    registry = CollectorRegistry()
    registry.register(_Collector())
    return registry


class MetricsServer:
    """The running endpoint (prometheus-client's threaded HTTP server)."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket (waits for the thread, briefly)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(stats: AgentStats, host: str, port: int) -> MetricsServer:
    """Serve ``stats`` at ``http://host:port/metrics`` in a daemon thread (port 0: any free).

    Raises:
        OSError: the address cannot be bound.
    """
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry_for(stats))
    endpoint = MetricsServer(server, thread)
    logger.info("metrics at %s", endpoint.url)
    return endpoint
