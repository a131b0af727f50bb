"""The fault suite's fixtures and its summary table (``test-artifacts/faults.md``).

Run with ``nox -s faults`` (or ``pytest -m faults tests/faults``); the default test run leaves
these tests out (``-m "not faults"`` in pytest's options).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from .cluster import Fleet

ROWS: list[dict[str, Any]] = []
SUMMARY = Path(__file__).resolve().parents[2] / "test-artifacts" / "faults.md"

OpenFleet = Callable[..., contextlib.AbstractAsyncContextManager[Fleet]]


@pytest.fixture
def open_fleet(tmp_path: Path) -> OpenFleet:
    """``async with open_fleet(n=6, grace=2) as fleet``: a server and n agents; afterwards
    every process is stopped, the case's rows are kept for the summary, and the server must
    not have logged a traceback."""

    @contextlib.asynccontextmanager
    async def opened(n: int = 6, grace: float = 2.0, db: str | None = None) -> AsyncIterator[Fleet]:
        async with trio.open_nursery() as nursery:
            fleet = await Fleet.open(tmp_path, nursery, n, grace, db)
            try:
                yield fleet
                crashed = fleet.crashed_agents()
                assert not crashed, "\n".join(crashed)
            except BaseException:
                # The server's own account of what went wrong, with the test's failure.
                print(bytes(fleet.server.output[-20000:]).decode(errors="replace"))
                raise
            finally:
                await fleet.close()
                nursery.cancel_scope.cancel()
            ROWS.extend(fleet.cases)
            if os.environ.get("FAULTS_SERVER_LOG"):  # the server's log, for a case that puzzles
                print(bytes(fleet.server.output).decode(errors="replace"))
            output = bytes(fleet.server.output).decode(errors="replace")
            assert "Traceback" not in output, output[-6000:]

    return opened


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    lines = [
        "| case | children | terminal statuses (→ agent_reported) | commands ran | log bytes"
        " checked | settle (s) | batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        lines.append(
            f"| {row['case']} | {row['children']} | {row['statuses']} | {row['ran']} |"
            f" {row['bytes']} | {row['settle']:.1f} | {row['batch']} |"
        )
    text = "\n".join(lines) + "\n"
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text(text)
    terminalreporter.write_sep("=", f"fault cases (also in {SUMMARY})")
    terminalreporter.write(text)
