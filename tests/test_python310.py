"""The server refuses Python 3.10 with one line; the agent and the CLI import there.

On 3.11+ the old interpreter is simulated (``sys.version_info`` replaced before the import);
``nox -s agent310`` runs this file on a real 3.10 too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PRETEND_310 = "import sys; sys.version_info = (3, 10, 13, 'final', 0); "


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_server_on_310_is_one_line_and_status_2() -> None:
    prefix = PRETEND_310 if sys.version_info >= (3, 11) else ""
    for code in ("import fleet.server", "import runpy; runpy.run_module('fleet.server')"):
        result = _python(prefix + code)
        assert result.returncode == 2, result
        assert result.stderr == (
            "fleet-server: needs Python 3.11 or newer, this is Python 3.10"
            " (the agent and the fleet CLI run on 3.10)\n"
        )
        assert result.stdout == ""


def test_agent_and_cli_import_without_the_server() -> None:
    code = (
        "import sys, fleet.agent.cli, fleet.agent.run, fleet.cli.main; "
        "assert not [m for m in sys.modules if m.startswith(('fleet.server', 'quart', 'pony'))]"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


#: What a VPS does not install: the tests that ``nox -s agent310`` runs must not need it.
SERVER_ONLY = ("fleet.server", "tests.integration", "tests.server", "tests.fakeagent", "httpx",
               "quart", "quart_trio", "hypercorn", "pony")  # fmt: skip


def test_the_tests_run_on_310_import_nothing_of_the_server() -> None:
    tests = Path(__file__).parent
    found = []
    for path in sorted([*tests.glob("agent/*.py"), *tests.glob("core/*.py"), tests / "aioloop.py"]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(tests)}:{node.lineno} imports {name}"
                for name in names
                if name.startswith(SERVER_ONLY)
            ]
    assert not found, "\n".join(found)
