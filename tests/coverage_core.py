"""Print the line coverage of ``fleet/core`` from coverage.py's JSON report; fail below 95 %.

Run by ``nox -s tests`` after pytest::

    python tests/coverage_core.py .nox/coverage.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

THRESHOLD = 95.0
PACKAGE = "fleet/core/"


def core_coverage(report: dict[str, Any]) -> tuple[int, int]:
    """(covered, total) statements over the files of ``fleet/core``."""
    covered = total = 0
    for name, data in report.get("files", {}).items():
        if Path(name).as_posix().startswith(PACKAGE) or f"/{PACKAGE}" in Path(name).as_posix():
            summary = data["summary"]
            covered += summary["covered_lines"]
            total += summary["num_statements"]
    return covered, total


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} COVERAGE_JSON", file=sys.stderr)
        return 2
    report = json.loads(Path(argv[1]).read_text())
    covered, total = core_coverage(report)
    if total == 0:
        print("fleet/core coverage: no fleet/core files in the report", file=sys.stderr)
        return 1
    percent = 100.0 * covered / total
    print(f"fleet/core coverage: {percent:.1f} %")
    if percent < THRESHOLD:
        print(f"fleet/core coverage is below {THRESHOLD:g} %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
