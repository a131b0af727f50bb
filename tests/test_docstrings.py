"""Docstrings never point at documents outside the repository.

A reader of a module has the repository, not the notes its authors worked from: a rule that
matters is stated where it applies ("a cancelled grpclib handler sends no trailers"), never as a
pointer to a design note, a specification section or a tracker entry (``OUTSIDE`` lists the
names). This walks every docstring (module, class, function) of ``fleet/``, ``tests/`` and
``bench/``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Names of documents that live outside the repository, and paths into them.
OUTSIDE = re.compile(
    r"\bSPEC\b|STACK-NOTES|\bSTYLE(\.md| §)|\.\./shared|/work/|\b[Ii]ssue \d+"
    r"|\bthe seed\b|\bseed's\b"
)
#: Files being rewritten by issue 9's engine work right now; their docstrings are fixed with that
#: rewrite. An entry that no longer points outside fails ``test_the_exemptions_are_current``.
REWRITING = {
    "fleet/agent/config.py",
    "fleet/agent/journal.py",
    "fleet/agent/link.py",
    "fleet/agent/run.py",
}


def pointers(path: Path) -> list[str]:
    """``where: what`` for each docstring of ``path`` that names an outside document."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc and (hit := OUTSIDE.search(doc)):
                where = getattr(node, "name", "module docstring")
                found.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 1)} {where}: "
                             f"{hit.group(0)!r}")  # fmt: skip
    return found


def sources() -> list[Path]:
    return [
        path
        for top in ("fleet", "tests", "bench")
        for path in sorted((REPO / top).rglob("*.py"))
        if (REPO / "fleet" / "proto") not in path.parents
    ]


def test_docstrings_do_not_point_outside_the_repository() -> None:
    found = [
        hit
        for path in sources()
        if path.relative_to(REPO).as_posix() not in REWRITING
        for hit in pointers(path)
    ]
    assert len(sources()) > 100  # the walk sees the tree
    assert not found, "state the rule instead of pointing at it:\n" + "\n".join(found)


def test_the_exemptions_are_current() -> None:
    stale = [name for name in sorted(REWRITING) if not pointers(REPO / name)]
    assert not stale, f"these no longer point outside: drop them from REWRITING: {stale}"


@pytest.mark.parametrize(
    ("doc", "flagged"),
    [
        ("Shutdown (STACK-NOTES): ...", True),
        ("Statuses (SPEC §3).", True),
        ("Hostile peers (issue 11).", True),
        ("See ../shared/STYLE.md", True),
        ("The seed's shape.", True),
        ("Seeded random payloads (seed=3).", False),
        ("A cancelled grpclib handler sends no trailers.", False),
    ],
)
def test_the_pattern(doc: str, flagged: bool) -> None:
    assert bool(OUTSIDE.search(doc)) is flagged
