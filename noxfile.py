"""Project sessions: ``nox -s tests`` is the whole test suite (what CI runs)."""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "compat", "agent310"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

ROOT = pathlib.Path(__file__).parent
PROTO_DIR = ROOT / "fleet" / "proto"
PROTO_SOURCES = ["batch_command.proto", "handshake.proto", "messages.proto", "service.proto"]
#: What installs and runs on Python 3.10 (Ubuntu 22.04): the agent, the `fleet` CLI and what
#: they import (mypy follows the imports from these modules and packages).
COMPAT_310_MYPY = ["-p", "fleet.agent", "-p", "fleet.core", "-m", "fleet", "-p", "fleet.cli",
                   "-m", "fleet.__main__", "-m", "fleet.logformat", "-m", "fleet.wire",
                   "-m", "fleet.wellformed"]  # fmt: skip
COMPAT_310_RUFF = ["fleet/__init__.py", "fleet/__main__.py", "fleet/logformat.py",
                   "fleet/wellformed.py",
                   "fleet/server/__init__.py", "fleet/agent", "fleet/core",
                   "fleet/cli", "fleet/wire.py"]  # fmt: skip
#: The tests that run on Python 3.10 (they import neither the server nor its dependencies).
TESTS_310 = ["tests/agent", "tests/core", "tests/test_python310.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Install the project with its dev extras and run every test (unit to browser).

    The browser tests run in a second pytest process: Playwright's sync API drives its own
    asyncio loop, which must not share a process with trio-asyncio's patched asyncio.
    """
    session.install("-e", ".[dev]")
    common = ["--cov=fleet", "--cov-report=", *session.posargs]
    session.run("pytest", "--ignore=tests/browser", *common)
    if session.posargs:
        return  # a chosen subset: no browser run, no coverage gate
    session.notify("compat")  # quick: ruff + mypy as Python 3.10
    session.notify("agent310")  # the agent's tests on 3.10 (skipped, saying why, without one)
    session.run("pytest", "tests/browser", "--cov-append", *common)
    session.run("coverage", "report", "--skip-covered")
    session.run("coverage", "json", "-o", ".nox/coverage.json")
    session.run("python", "tests/coverage_core.py", ".nox/coverage.json")


@nox.session
def fuzz(session: nox.Session) -> None:
    """schemathesis (every check) against a live server, longer than the run in ``nox -s tests``.

    ``nox -s fuzz -- 2000 7`` picks the examples per operation and the seed.
    """
    session.install("-e", ".[dev]")
    examples, seed = [*session.posargs, "300", "20261130"][:2]
    session.env.update(
        SCHEMATHESIS_MAX_EXAMPLES=examples, SCHEMATHESIS_SEED=seed, SCHEMATHESIS_TIMEOUT="3600"
    )
    session.run("pytest", "-q", "-s", "-o", "faulthandler_timeout=0", "tests/fuzz")


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection suite (tests/faults): real ``fleet-server`` and ``fleet-agent``
    processes killed, restarted, cut off by a loopback proxy, out of disk (a tmpfs: needs root)
    and losing PostgreSQL (127.0.0.1:5432) under running batches; each case skips, saying why,
    when what it needs is missing. Prints its table and writes ``test-artifacts/faults.md``.
    """
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "faults", "tests/faults", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def compat(session: nox.Session) -> None:
    """The agent and the `fleet` CLI stay Python 3.10 code: ruff and mypy with a 3.10 target."""
    # exceptiongroup: what Python 3.10 imports where 3.11 has the built-in (mypy checks both).
    session.install(
        "-e", ".", "ruff>=0.6", "mypy>=1.11", "prometheus-client>=0.20", "exceptiongroup>=1.2"
    )
    paths = [path for path in COMPAT_310_RUFF if os.path.exists(path)]
    session.run("ruff", "check", "--target-version", "py310", *paths)
    session.run("mypy", "--python-version", "3.10", *COMPAT_310_MYPY)


def _python310() -> str | None:
    """A working Python 3.10: ``$FLEET_PYTHON310``, ``python3.10`` on PATH, or pyenv's."""
    candidates = [
        os.environ.get("FLEET_PYTHON310"),
        shutil.which("python3.10"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10"))),
    ]
    for candidate in candidates:
        if not candidate:
            continue
        probe = [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"]
        # A pyenv shim answers on PATH even when 3.10 is not selected, hence the probe.
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return candidate
    return None


@nox.session(python=False)
def agent310(session: nox.Session) -> None:
    """The agent's and core's tests on Python 3.10, installed without the server extras.

    Skipped, saying why, when no 3.10 interpreter is found (``FLEET_PYTHON310=/path`` picks
    one). ``tests/test_python310.py`` also checks there that the server refuses to start.
    """
    python = _python310()
    if python is None:
        session.skip("no Python 3.10 interpreter (set FLEET_PYTHON310=/path/to/python3.10)")
    venv = ROOT / ".nox" / "agent310-venv"
    if not (venv / "bin" / "python").exists():
        session.run(python, "-m", "venv", str(venv), external=True)
    py = str(venv / "bin" / "python")
    # `.` without extras is what a VPS installs: the agent (and the CLI), no Quart/Pony.
    session.run(py, "-m", "pip", "install", "-q", ".", "pytest>=8", "pytest-trio>=0.8",
                "trustme>=1.1", "hypothesis>=6.100", external=True)  # fmt: skip
    session.run(py, "-m", "pip", "check", external=True)
    session.run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS_310, *session.posargs,
                external=True)  # fmt: skip


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate fleet/proto from its .proto sources (grpcio-tools' protoc + betterproto2)."""
    session.install("grpcio-tools>=1.66", "betterproto2-compiler>=0.10,<0.11")
    session.chdir(PROTO_DIR)
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        "-I.",
        "--python_betterproto2_out=client_generation=none:.",
        *PROTO_SOURCES,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks in bench/ and print their figures (pass names to pick some)."""
    session.install("-e", ".[dev]", "asyncssh")
    session.run("python", "-m", "bench", *session.posargs)
