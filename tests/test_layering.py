"""The layering rules of ``fleet/__init__.py``'s docstring, enforced on the source.

* ``fleet/core`` is sans-I/O: no event loops, sockets, processes, threads, clocks, randomness,
  logging configuration, and nothing from ``fleet.server`` or ``fleet.agent``.
* ``fleet/agent`` never imports ``fleet.server`` (or the server's web and database stack).
* The ``fleet`` CLI (the ``fleet.cli`` package) never imports ``fleet.server``, quart, hypercorn
  or pony.
* Only ``fleet/server/rpc.py``, ``fleet/agent/link.py`` and what they share, ``fleet/wire.py``,
  touch asyncio / trio-asyncio / grpclib.
* No module imports a module from a higher layer.
* No import cycles (imports inside functions count; ``TYPE_CHECKING`` ones do not run).
* Two entries of one layer never import each other (one direction only).
* Every module has a layer (a new module is placed in the docstring's list, or the rules above
  cannot see it).

Every rule walks whatever modules exist, so it keeps enforcing as new ones appear.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import fleet

ROOT = Path(fleet.__file__).parent  # .../fleet
GRPC_MODULES = {"fleet.server.rpc", "fleet.agent.link", "fleet.wire"}
#: The ``fleet`` CLI: the light base install's client package.
CLI_MODULES = {
    "fleet.cli", "fleet.cli.main", "fleet.cli.client", "fleet.cli.watch", "fleet.cli.feedsocket",
    "fleet.cli.console",
    "fleet.cli.follow", "fleet.cli.run", "fleet.cli.vps", "fleet.cli.scripts", "fleet.cli.batches",
    "fleet.cli.accounts", "fleet.cli.settings",
}  # fmt: skip

#: Top-level modules fleet/core must not import.
CORE_BANNED = {
    "trio", "asyncio", "trio_asyncio", "anyio", "grpclib", "grpc", "pony", "quart",
    "quart_trio", "hypercorn", "trio_websocket", "httpx", "socket", "ssl", "selectors",
    "subprocess", "multiprocessing", "threading", "concurrent", "signal", "time", "random",
    "secrets", "os", "sys", "shutil", "tempfile", "sqlite3", "urllib", "http", "importlib",
    "logging.config",
    "fleet.server", "fleet.agent", *CLI_MODULES,
}  # fmt: skip
#: Calls that read a clock, draw randomness or configure logging (however they were imported).
CORE_BANNED_CALLS = {
    "time.time", "time.monotonic", "time.perf_counter", "time.sleep", "datetime.now",
    "datetime.utcnow", "datetime.today", "date.today", "uuid.uuid1", "uuid.uuid4",
    "os.urandom", "logging.basicConfig", "basicConfig", "dictConfig", "fileConfig",
    "open", "input", "print", "__import__", "breakpoint",
}  # fmt: skip
AGENT_BANNED = {"fleet.server", "quart", "quart_trio", "hypercorn", "pony", "trio_websocket"}
#: The CLI follows the live feed with trio-websocket, so that one is allowed.
CLI_BANNED = {"fleet.server", "quart", "quart_trio", "hypercorn", "pony"}
ASYNCIO_FAMILY = {"asyncio", "trio_asyncio", "grpclib"}

#: The layers of fleet/__init__.py's docstring (lowest first); checked against it below.
LAYERS: list[list[str]] = [
    ["fleet.proto", "fleet.core", "fleet.logformat", "fleet.wellformed", "fleet.wire"],
    ["fleet.agent", "fleet.cli"],
    [
        "fleet.server.config",
        "fleet.server.agents",
        "fleet.server.records",
        "fleet.server.store",
        "fleet.server.dbthread",
        "fleet.server.logs",
        "fleet.server.http.feed",
        "fleet.server.http.openapi_teams",
        "fleet.server.http.openapi",
        "fleet.server.http.openapi_parts",
        "fleet.server.http.openapi_batches",
        "fleet.server.reports",
        "fleet.server.metrics",
        "fleet.server.datadir",
        "fleet.server.clock",
        "fleet.server.health",
        "fleet.server.passwords",
        "fleet.server.logins",
    ],
    [
        "fleet.server.views",
        "fleet.server.writeback",
        "fleet.server.handshakes",
        "fleet.server.output",
        "fleet.server.rundeps",
    ],
    ["fleet.server.batchrun"],
    ["fleet.server.supervisor"],
    [
        "fleet.server.rpc",
        "fleet.server.http.common",
        "fleet.server.http.policy",
        "fleet.server.http.auth",
        "fleet.server.http.csrf",
        "fleet.server.cluster",
    ],
    [
        "fleet.server.http.routes_ui",
        "fleet.server.http.routes_vps",
        "fleet.server.http.routes_scripts",
        "fleet.server.http.routes_batches",
        "fleet.server.http.launch",
        "fleet.server.http.routes_session",
        "fleet.server.http.routes_accounts",
        "fleet.server.http.routes_audit",
    ],
    ["fleet.server.http.app"],
    ["fleet.server.demo", "fleet.server.serve"],
    ["fleet.server.cli"],
]


# --- the scanner ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name; ``from a import b`` gives ``a.b``
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.Module, module: str, *, is_package: bool) -> Iterator[Import]:
    """Every import in ``tree`` with its target resolved to an absolute name."""
    package = module if is_package else module.rpartition(".")[0]

    def walk(node: ast.AST, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, True)
                for stmt in child.orelse:
                    yield from walk_one(stmt, type_only)
            else:
                yield from walk_one(child, type_only)

    def walk_one(node: ast.AST, type_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(base if alias.name == "*" else f"{base}.{alias.name}", node.lineno,
                             type_only)  # fmt: skip
        yield from walk(node, type_only)

    yield from walk(tree, False)


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def calls_of(tree: ast.Module) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := dotted(node.func)) is not None:
            yield name, node.lineno


def matches(target: str, banned: set[str]) -> str | None:
    """The banned name ``target`` is or lives under, if any."""
    for name in banned:
        if target == name or target.startswith(name + "."):
            return name
    return None


def call_matches(call: str, banned: set[str]) -> bool:
    return any(call == name or call.endswith("." + name) for name in banned)


@dataclass(frozen=True)
class Source:
    path: Path
    module: str
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT.parent).as_posix()

    def imports(self) -> list[Import]:
        return list(imports_of(self.tree, self.module, is_package=self.path.name == "__init__.py"))


def sources(under: str = "") -> list[Source]:
    """Every module under ``fleet/<under>``, except the generated ``fleet/proto``."""
    out = []
    for path in sorted((ROOT / under).rglob("*.py")):
        if (ROOT / "proto") in path.parents:
            continue
        out.append(Source(path, module_name(path), ast.parse(path.read_text(), str(path))))
    return out


def layer_entry(module: str) -> tuple[int, str] | None:
    """The layer of ``module`` and the entry of ``LAYERS`` that places it (the longest prefix)."""
    best: tuple[int, str] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (index, name)
    return best


def layer_of(module: str) -> int | None:
    entry = layer_entry(module)
    return None if entry is None else entry[0]


# --- the rules ------------------------------------------------------------------------------------


def core_violations(source: Source) -> list[str]:
    found = []
    for imp in source.imports():
        if hit := matches(imp.target, CORE_BANNED):
            found.append(f"{source.rel}:{imp.line} imports {hit}")
    for call, line in calls_of(source.tree):
        if call_matches(call, CORE_BANNED_CALLS):
            found.append(f"{source.rel}:{line} calls {call}()")
    return found


def agent_violations(source: Source) -> list[str]:
    return [
        f"{source.rel}:{imp.line} imports {hit}"
        for imp in source.imports()
        if (hit := matches(imp.target, AGENT_BANNED))
    ]


def is_cli(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in CLI_MODULES)


def cli_violations(source: Source) -> list[str]:
    if not is_cli(source.module):
        return []
    return [
        f"{source.rel}:{imp.line}: {source.module} imports {hit}"
        for imp in source.imports()
        if (hit := matches(imp.target, CLI_BANNED))
    ]


def asyncio_violations(source: Source) -> list[str]:
    if source.module in GRPC_MODULES:
        return []
    return [
        f"{source.rel}:{imp.line} imports {hit} (only {', '.join(sorted(GRPC_MODULES))} may: "
        "reach it through them, e.g. a helper there that opens the trio-asyncio loop)"
        for imp in source.imports()
        if not imp.type_only and (hit := matches(imp.target, ASYNCIO_FAMILY))
    ]


def layer_violations(source: Source) -> list[str]:
    own = layer_of(source.module)
    found = []
    for imp in source.imports():
        if imp.type_only or not imp.target.startswith("fleet."):
            continue
        if is_cli(source.module) and matches(imp.target, {"fleet.server"}):
            found.append(f"{source.rel}:{imp.line}: {source.module} imports {imp.target}")
            continue
        theirs = layer_of(imp.target)
        if own is not None and theirs is not None and theirs > own:
            found.append(
                f"{source.rel}:{imp.line}: {source.module} (layer {own + 1}) imports "
                f"{imp.target} (layer {theirs + 1})"
            )
    return found


def resolve(target: str, modules: set[str]) -> str | None:
    """The module an import target lives in (``a.b.Name`` -> ``a.b``), if it is one of ours."""
    name = target
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(scanned: list[Source]) -> dict[str, set[str]]:
    """Module -> the modules of ``scanned`` it imports when it runs (``TYPE_CHECKING`` aside).

    Imports inside functions count: a lazy import does not break a circle, it hides it.
    """
    modules = {s.module for s in scanned}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for source in scanned:
        for imp in source.imports():
            target = resolve(imp.target, modules)
            if not imp.type_only and target is not None and target != source.module:
                graph[source.module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def both_ways(graph: dict[str, set[str]]) -> list[str]:
    """Pairs of entries of one layer (modules or packages) that import each other."""
    edges: dict[tuple[str, str], int] = {}  # (importer's entry, imported entry) -> layer
    for module, targets in graph.items():
        own = layer_entry(module)
        for target in targets:
            theirs = layer_entry(target)
            if own and theirs and own[0] == theirs[0] and own[1] != theirs[1]:
                edges[own[1], theirs[1]] = own[0]
    return sorted(
        f"{a} <-> {b} (layer {layer + 1})"
        for (a, b), layer in edges.items()
        if (b, a) in edges and a < b
    )


# --- the tests ------------------------------------------------------------------------------------


def _report(found: list[str]) -> str:
    return "\n".join(["layering violations:", *found])


def test_core_is_sans_io() -> None:
    found = [v for s in sources("core") for v in core_violations(s)]
    assert not found, _report(found)
    assert len(sources("core")) >= 5  # the scan sees the core's modules


def test_agent_does_not_import_the_server() -> None:
    found = [v for s in sources("agent") for v in agent_violations(s)]
    assert not found, _report(found)


def test_the_cli_does_not_import_the_server() -> None:
    scanned = [s for s in sources() if is_cli(s.module)]
    found = [v for s in scanned for v in cli_violations(s)]
    assert not found, _report(found)
    assert {s.module for s in scanned} >= CLI_MODULES  # the scan sees every CLI module


def test_only_the_grpc_modules_touch_asyncio() -> None:
    found = [v for s in sources() for v in asyncio_violations(s)]
    assert not found, _report(found)


def test_no_module_imports_a_higher_layer() -> None:
    found = [v for s in sources() for v in layer_violations(s)]
    assert not found, _report(found)


#: Entry points and package markers: above every layer, or importing nothing of Fleet.
UNRANKED = {"fleet", "fleet.__main__", "fleet.server", "fleet.server.__main__", "fleet.server.http"}


def test_every_module_has_a_layer() -> None:
    found = [
        f"{s.rel}: {s.module} is in no layer of fleet/__init__.py's docstring"
        for s in sources()
        if s.module not in UNRANKED and layer_of(s.module) is None
    ]
    assert not found, _report(found)


def test_no_import_cycles() -> None:
    graph = import_graph(sources())
    assert len(graph) > 40  # the scan sees the whole package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_itself_both_ways() -> None:
    found = both_ways(import_graph(sources()))
    assert not found, _report(found)


def test_layers_match_the_package_docstring() -> None:
    doc = fleet.__doc__ or ""
    items = dict(re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |^\s*$)", doc, flags=re.M | re.S))
    assert len(items) == len(LAYERS), "fleet/__init__.py lists a different number of layers"
    for index, names in enumerate(LAYERS):
        for name in names:
            assert f"``{name}``" in items[str(index + 1)], f"{name} is not in layer {index + 1}"
    for module in GRPC_MODULES:
        assert f"``{module}``" in doc


# --- the scanner itself catches what it should ----------------------------------------------------


def _source(code: str, module: str) -> Source:
    return Source(ROOT / "core" / "_probe.py", module, ast.parse(code))


@pytest.mark.parametrize(
    "code",
    [
        "import time",
        "import os.path",
        "from time import monotonic",
        "import asyncio as aio",
        "from trio import lowlevel",
        "import logging.config",
        "from ..server import store",
        "from fleet.agent.link import Link",
        "from .. import server",
        "import random\n",
        "from datetime import datetime\nx = datetime.now()",
        "import datetime\nx = datetime.datetime.utcnow()",
        "import logging\nlogging.basicConfig()",
        "print('hi')",
        "with open('f') as f: pass",
        "def f():\n    import subprocess",
        "if True:\n    import socket",
    ],
)
def test_core_scanner_flags(code: str) -> None:
    assert core_violations(_source(code, "fleet.core._probe"))


@pytest.mark.parametrize(
    "code",
    [
        "from ._events import Tick",
        "from . import _events",
        "import logging\nlog = logging.getLogger(__name__)",
        "from datetime import datetime, timezone\nx = datetime.fromtimestamp(0, timezone.utc)",
        "from fleet.proto import agent_service",
        "from collections import deque",
    ],
)
def test_core_scanner_allows(code: str) -> None:
    assert core_violations(_source(code, "fleet.core._probe")) == []


def test_asyncio_rule_respects_the_two_modules_and_type_checking() -> None:
    code = "import grpclib\nfrom trio_asyncio import aio_as_trio"
    assert len(asyncio_violations(_source(code, "fleet.server.http.app"))) == 2
    assert asyncio_violations(_source(code, "fleet.server.rpc")) == []
    assert asyncio_violations(_source(code, "fleet.agent.link")) == []
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpclib\n"
    assert asyncio_violations(_source(typed, "fleet.server.http.app")) == []


@pytest.mark.parametrize("module", sorted(CLI_MODULES))
@pytest.mark.parametrize(
    "code",
    [
        "from fleet.server import store",
        "from fleet import server",
        "import quart",
        "from quart_trio import QuartTrio",
        "import hypercorn.trio",
        "from pony.orm import db_session",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fleet.server.http.app",
    ],
)
def test_cli_scanner_flags(module: str, code: str) -> None:
    assert cli_violations(_source(code, module))


def test_cli_scanner_allows() -> None:
    code = "import trio\nfrom trio_websocket import open_websocket_url\nfrom .client import x"
    for module in CLI_MODULES:
        assert cli_violations(_source(code, module)) == []
    assert cli_violations(_source("import quart", "fleet.server.http.app")) == []


def test_layer_rule() -> None:
    assert layer_violations(_source("from . import supervisor", "fleet.server.store"))
    assert layer_violations(_source("from ..serve import main", "fleet.server.http.app"))
    assert layer_violations(_source("from fleet.server import store", "fleet.agent.runner"))
    assert layer_violations(_source("import fleet.server.store", "fleet.cli"))
    assert layer_violations(_source("from fleet.server.http.app import x", "fleet.cli.main"))
    assert layer_violations(_source("from fleet import server", "fleet.cli.run"))
    assert layer_violations(_source("from .watch import follow", "fleet.cli.follow")) == []
    assert layer_violations(_source("from .store import Store", "fleet.server.supervisor")) == []
    assert layer_violations(_source("from fleet.core import Batch", "fleet.server.cli")) == []
    assert layer_violations(_source("from .serve import main", "fleet.server.cli")) == []
    assert layer_of("fleet.server.store.models") == 2
    assert layer_of("fleet.server.nothing_here") is None  # unlisted modules are not ranked


def test_cycle_finder() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]


def test_import_graph_resolves_names_and_skips_type_checking() -> None:
    a = Source(ROOT / "server" / "a.py", "fleet.server.a", ast.parse(
        "from .b import Thing\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .c import Other\n"
        "def f():\n    from fleet.server import c\n"
    ))  # fmt: skip
    b = Source(ROOT / "server" / "b.py", "fleet.server.b", ast.parse("import os"))
    c = Source(ROOT / "server" / "c.py", "fleet.server.c", ast.parse("from .a import f"))
    graph = import_graph([a, b, c])
    assert graph == {
        "fleet.server.a": {"fleet.server.b", "fleet.server.c"},
        "fleet.server.b": set(),
        "fleet.server.c": {"fleet.server.a"},
    }
    assert find_cycles(graph) == [["fleet.server.a", "fleet.server.c"]]


def test_both_ways_rule() -> None:
    routes, common = "fleet.server.http.routes_vps", "fleet.server.http.routes_batches"
    assert both_ways({routes: {common}, common: set()}) == []
    assert both_ways({routes: {common}, common: {routes}}) == [f"{common} <-> {routes} (layer 8)"]
    # Across layers, or inside one entry (a package's own modules), is another rule's business.
    assert (
        both_ways(
            {"fleet.agent.run": {"fleet.agent.link"}, "fleet.agent.link": {"fleet.agent.run"}}
        )
        == []
    )
    assert both_ways({"fleet.agent.run": {"fleet.cli"}, "fleet.cli": {"fleet.agent"}}) == [
        "fleet.agent <-> fleet.cli (layer 2)"
    ]
