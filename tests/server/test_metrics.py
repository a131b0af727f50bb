"""``ServerMetrics`` and ``--metrics`` settings (the endpoint itself: tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet import core
from fleet.server.cli import build_config
from fleet.server.config import ConfigError, ServerConfig
from fleet.server.metrics import LiveState, ServerMetrics
from fleet.server.store import ChildUpdate
from fleet.server.writeback import WriteBack

from .test_writeback import FakeDb


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_settings() -> None:
    assert ServerConfig().metrics_endpoint is None  # off by default
    assert ServerConfig(metrics="9470").metrics_endpoint == ("127.0.0.1", 9470)
    assert ServerConfig(metrics="[::1]:9470").metrics_endpoint == ("::1", 9470)
    assert not ServerConfig(metrics="localhost:9470").public_metrics
    assert ServerConfig(metrics="0.0.0.0:9470").public_metrics
    assert build_config(["--metrics", "9471"], {}).metrics == "9471"
    assert build_config([], {"FLEET_METRICS": "127.0.0.1:9472"}).metrics_endpoint == (
        "127.0.0.1",
        9472,
    )
    for bad in ("nope", "host:99999", ":9470", "99999"):
        with pytest.raises(ConfigError, match="--metrics"):
            ServerConfig(metrics=bad)


async def test_a_failed_store_write_is_counted_and_timed() -> None:
    db = FakeDb()
    metrics = ServerMetrics()
    wb = WriteBack(db, interval_s=0, metrics=metrics)  # type: ignore[arg-type]
    db.fail = 1
    wb.child(ChildUpdate("c1", status=core.ChildStatus.EXECUTING))
    await wb.flush()  # fails, and is retried next time
    assert sample(metrics, "fleet_store_write_failures_total") == 1
    await wb.flush()
    assert sample(metrics, "fleet_store_write_failures_total") == 1
    assert sample(metrics, "fleet_store_write_seconds_count") == 2


def test_a_finished_batch_counts_its_children_and_latencies() -> None:
    tasks = [core.ChildTask(f"c{i}", i, f"vps-{i}") for i in (1, 2, 3)]
    batch = core.Batch("b1", tasks)
    batch.start(now=100.0)
    batch.handle(core.Dispatched("c1"), now=100.0)
    batch.handle(core.Started("c1", 42), now=100.25)
    batch.handle(core.Finished("c1", core.ChildStatus.SUCCESS, 0, None), now=101.0)
    batch.handle(core.Dispatched("c2"), now=100.0)
    batch.handle(core.Finished("c2", core.ChildStatus.FAILURE, 3, None), now=101.0)
    batch.handle(core.Unreachable("c3"), now=100.0)
    assert batch.is_final
    metrics = ServerMetrics()
    metrics.batch_finished(batch, datetime.now(UTC) - timedelta(seconds=3))
    assert sample(metrics, "fleet_batches_finished_total", status=batch.status.value) == 1
    assert sample(metrics, "fleet_children_finished_total", status="SUCCESS") == 1
    assert sample(metrics, "fleet_children_finished_total", status="FAILURE") == 1
    assert sample(metrics, "fleet_children_finished_total", status="AGENT_UNREACHABLE") == 1
    # Only c1 reported its start: c2 finished without one, c3 was never sent.
    assert sample(metrics, "fleet_child_dispatch_to_start_seconds_count") == 1
    assert sample(metrics, "fleet_child_dispatch_to_start_seconds_sum") == 0.25
    assert sample(metrics, "fleet_child_dispatch_to_start_seconds_bucket", le="0.25") == 1
    assert sample(metrics, "fleet_child_dispatch_to_start_seconds_bucket", le="0.1") == 0
    duration = sample(metrics, "fleet_batch_duration_seconds_sum")
    assert duration is not None
    assert 3 <= duration < 60


def test_the_state_is_read_at_scrape_time() -> None:
    running = core.Batch("b1", [core.ChildTask("c1", 1, "a"), core.ChildTask("c2", 2, "b")])
    running.start(now=0.0)
    running.handle(core.Dispatched("c1"), now=0.0)
    online = [3]
    metrics = ServerMetrics()
    assert sample(metrics, "fleet_agents_online") is None  # nothing to read yet
    metrics.watch(
        LiveState(
            agents_online=lambda: online[0],
            batches=lambda: [running],
            feed_subscribers=lambda: 5,
            store_queued=lambda: 7,
            handshakes_refused=lambda: (11, 4),
        )
    )
    assert sample(metrics, "fleet_agents_online") == 3
    online[0] = 1
    assert sample(metrics, "fleet_agents_online") == 1
    assert sample(metrics, "fleet_running_batches", status="IN_PROGRESS") == 1
    assert sample(metrics, "fleet_running_batches", status="PENDING") == 0
    assert sample(metrics, "fleet_running_children", status="SENT_TO_AGENT") == 1
    assert sample(metrics, "fleet_running_children", status="PENDING") == 1
    assert sample(metrics, "fleet_feed_subscribers") == 5
    assert sample(metrics, "fleet_store_queued_calls") == 7
    assert sample(metrics, "fleet_agent_handshakes_refused_total") == 11
    assert sample(metrics, "fleet_agent_handshakes_rate_limited_total") == 4


def test_output_is_counted_and_labels_are_bounded() -> None:
    metrics = ServerMetrics()
    assert sample(metrics, "fleet_output_bytes_total", stream="stdout") == 0
    metrics.output_received("stdout", 10)
    metrics.output_received("stderr", 3)
    metrics.output_received("stdout", 5)
    assert sample(metrics, "fleet_output_bytes_total", stream="stdout") == 15
    assert sample(metrics, "fleet_output_bytes_total", stream="stderr") == 3
    labels = {
        key for family in metrics.registry.collect() for s in family.samples for key in s.labels
    }
    assert labels <= {"status", "stream", "le", "version"}  # never an id
