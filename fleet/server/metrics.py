"""Prometheus metrics of a server (``--metrics HOST:PORT``), with ``prometheus-client``.

Two kinds of series, in one registry per server (no process-wide state):

* **State, read at scrape time** by a collector (nothing is updated on the hot paths):
  ``fleet_agents_online``, ``fleet_running_batches{status}``, ``fleet_running_children{status}``
  (the children of the batches this server runs), ``fleet_feed_subscribers``,
  ``fleet_store_queued_calls``, ``fleet_build_info{version}``, and the counters kept by the
  handshake rate limit: ``fleet_agent_handshakes_refused_total`` (every refusal) and
  ``fleet_agent_handshakes_rate_limited_total`` (those answered without work).
* **Events, counted where they happen** (one call each):
  ``fleet_batches_finished_total{status}`` and ``fleet_children_finished_total{status}``,
  ``fleet_batch_duration_seconds`` (from ``POST /api/batch_commands`` to the final status),
  ``fleet_child_dispatch_to_start_seconds`` (request sent to the agent → the agent reported the
  start; observed when the batch ends), ``fleet_output_bytes_total{stream}``,
  ``fleet_store_write_seconds`` and ``fleet_store_write_failures_total`` (the write-behind
  transactions).

Labels take only bounded values (statuses, stream names): never a batch, child or VPS id.

The endpoint is a small ASGI app (``prometheus_client.make_asgi_app``) served by Hypercorn on
trio, so the collector runs on the trio thread and reads the server's state without locks.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import make_asgi_app as prometheus_asgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import fleet
from fleet import core

__all__ = ["LiveState", "ServerMetrics", "serve_metrics"]

logger = logging.getLogger(__name__)

#: Seconds: a command reaching its agent and starting (LAN to intercontinental, busy agents).
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds: a whole batch, from a one-second `uptime` to a day-long rollout.
BATCH_BUCKETS = (
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    *(1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0),
)
#: Seconds: one write-behind transaction (SQLite WAL: ~1 ms; PostgreSQL over a network more).
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_TERMINAL_CHILD = [s.value for s in core.ChildStatus if s.is_terminal]
_TERMINAL_BATCH = [s.value for s in core.BatchStatus if s.is_terminal]
_LIVE_BATCH = [s.value for s in core.BatchStatus if not s.is_terminal]


@dataclass(frozen=True)
class LiveState:
    """Where the scrape-time collector reads the server's state (each call must not block)."""

    agents_online: Callable[[], int]
    #: The batches this server is running (final ones still in memory are skipped).
    batches: Callable[[], Iterable[core.Batch]]
    feed_subscribers: Callable[[], int]
    store_queued: Callable[[], int]
    #: Refused agent handshakes so far: (all of them, those answered without work).
    handshakes_refused: Callable[[], tuple[int, int]]


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.state: LiveState | None = None

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("fleet_build", "The running Fleet server's version.")
        info.add_metric([], {"version": fleet.__version__})
        yield info
        state = self.state
        if state is None:
            return
        yield GaugeMetricFamily(
            "fleet_agents_online",
            "Agents with a live stream to this server.",
            value=state.agents_online(),
        )
        batches: Tally[str] = Tally({status: 0 for status in _LIVE_BATCH})
        children: Tally[str] = Tally({status.value: 0 for status in core.ChildStatus})
        for batch in state.batches():
            if batch.is_final:
                continue  # counted by fleet_batches_finished_total
            batches[batch.status.value] += 1
            for task in batch.children.values():
                children[task.status.value] += 1
        yield _by_status(
            "fleet_running_batches", "Batches this server is running, by status.", batches
        )
        yield _by_status(
            "fleet_running_children",
            "Children (one VPS's task) of the batches this server is running, by status.",
            children,
        )
        yield GaugeMetricFamily(
            "fleet_feed_subscribers",
            "Live feed subscribers (WebSocket clients of a batch or of the VPS list).",
            value=state.feed_subscribers(),
        )
        yield GaugeMetricFamily(
            "fleet_store_queued_calls",
            "Store calls waiting for the database thread.",
            value=state.store_queued(),
        )
        refused, limited = state.handshakes_refused()
        yield CounterMetricFamily(
            "fleet_agent_handshakes_refused",
            "Agent handshakes refused (unknown VPS, wrong secret, bad first message, rate limit).",
            value=refused,
        )
        yield CounterMetricFamily(
            "fleet_agent_handshakes_rate_limited",
            "Refused handshakes answered without work (their address refused too often).",
            value=limited,
        )


def _by_status(name: str, doc: str, counts: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["status"])
    for status, count in counts.items():
        family.add_metric([status], count)
    return family


class ServerMetrics:
    """The metrics of one server: build one in ``serve`` and pass it to what counts events.

    Every method is cheap and synchronous (a few dictionary lookups); they may be called
    whether or not the endpoint is served.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._state = _StateCollector()
        r.register(self._state)
        self.batches_finished = Counter(
            "fleet_batches_finished",
            "Batches that reached a final status, by status.",
            ["status"],
            registry=r,
        )
        self.children_finished = Counter(
            "fleet_children_finished",
            "Children of finished batches, by final status (counted when their batch ends).",
            ["status"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "fleet_batch_duration_seconds",
            "From POST /api/batch_commands to the batch's final status.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dispatch_to_start = Histogram(
            "fleet_child_dispatch_to_start_seconds",
            "From sending a command to its agent until the agent reported it started "
            "(observed when the batch ends).",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.output_bytes = Counter(
            "fleet_output_bytes",
            "Command output received from agents, in bytes.",
            ["stream"],
            registry=r,
        )
        self.store_write_seconds = Histogram(
            "fleet_store_write_seconds",
            "Duration of one write-behind store transaction (batched status and output updates).",
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_write_failures = Counter(
            "fleet_store_write_failures",
            "Write-behind store transactions that failed (they are retried).",
            registry=r,
        )
        # Every label value exists from the start, so rate() and absent() work at once.
        for status in _TERMINAL_BATCH:
            self.batches_finished.labels(status)
        for status in _TERMINAL_CHILD:
            self.children_finished.labels(status)
        for stream in ("stdout", "stderr"):
            self.output_bytes.labels(stream)

    def watch(self, state: LiveState) -> None:
        """Read the server's state from ``state`` at every scrape."""
        self._state.state = state

    # --- events ----------------------------------------------------------------------------

    def batch_finished(self, batch: core.Batch, created_at: datetime | None) -> None:
        """A batch reached its final status now (call once per batch)."""
        self.batches_finished.labels(batch.status.value).inc()
        if created_at is not None:
            elapsed = (datetime.now(UTC) - created_at).total_seconds()
            self.batch_duration.observe(max(elapsed, 0.0))
        finished: Tally[str] = Tally()
        for task in batch.children.values():
            finished[task.status.value] += 1
            if task.sent_at is not None and task.started_at is not None:
                self.dispatch_to_start.observe(max(task.started_at - task.sent_at, 0.0))
        for status, count in finished.items():  # one labelled child per status, not per task
            self.children_finished.labels(status).inc(count)

    def output_received(self, stream: str, size: int) -> None:
        """``size`` bytes of a command's ``stream`` (stdout or stderr) arrived from its agent."""
        self.output_bytes.labels(stream).inc(size)

    @contextmanager
    def store_write(self) -> Iterator[None]:
        """Time one store write; an exception counts a failure (and propagates)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.store_write_failures.inc()
            raise
        finally:
            self.store_write_seconds.observe(time.perf_counter() - started)


# --- the endpoint ---------------------------------------------------------------------------

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]
_NOT_FOUND = b"Fleet serves its metrics at /metrics\n"


def _asgi_app(registry: CollectorRegistry) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
    """``/metrics`` (prometheus-client's app: text or OpenMetrics, gzip); 404 elsewhere."""
    metrics_app = prometheus_asgi_app(registry)

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":  # prometheus-client's app only speaks http
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
        elif scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await metrics_app(scope, receive, send)
        else:
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": _NOT_FOUND})

    return app


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"--metrics {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_metrics(
    metrics: ServerMetrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` over plain HTTP on ``host:port`` until cancelled.

    Supports ``nursery.start``: ``started()`` gets the endpoint's URL (the bound port when
    ``port`` is 0). Cancelling it closes the listener.

    Raises:
        OSError: the address cannot be bound (before ``started()``; the message names it).
    """
    sock = _listen(host, port)
    config = HypercornConfig()
    # Bound here, so that a taken port is our own one-line error, not one from deep in
    # Hypercorn's nurseries; Hypercorn owns the socket from now on.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        bound: list[str] = await nursery.start(
            hypercorn_serve,
            _asgi_app(metrics.registry),
            config,
        )
        url = bound[0].replace("0.0.0.0", "127.0.0.1").rstrip("/") + "/metrics"
        logger.info("metrics at %s", url)
        task_status.started(url)
