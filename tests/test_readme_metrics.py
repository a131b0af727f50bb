"""The README's metrics (table, agent list, PromQL examples) name series that really exist."""

from __future__ import annotations

import re
from pathlib import Path

from fleet import core
from fleet.agent.metrics import AgentStats, registry_for
from fleet.server.metrics import LiveState, ServerMetrics

README = Path(__file__).resolve().parent.parent / "README.md"


def _exposed() -> set[str]:
    server = ServerMetrics()
    batch = core.Batch("b", [core.ChildTask("c", 1, "a")])
    server.watch(
        LiveState(
            agents_online=lambda: 0,
            batches=lambda: [batch],
            feed_subscribers=lambda: 0,
            store_queued=lambda: 0,
            handshakes_refused=lambda: (0, 0),
        )
    )
    names = set()
    for registry in (server.registry, registry_for(AgentStats())):
        for family in registry.collect():
            names.add(family.name)  # a histogram is named by its family
            names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_readme_names_is_exposed() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Operate it") : text.index("### Logs for journald")]
    named = set(re.findall(r"\bfleet_[a-z_]+[a-z]", section))
    assert len(named) >= 15
    exposed = _exposed()
    missing = named - exposed
    assert not missing, f"the README names series that do not exist: {sorted(missing)}"
