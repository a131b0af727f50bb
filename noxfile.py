"""Project sessions: ``nox -s tests`` is the whole test suite (what CI runs)."""

from __future__ import annotations

import pathlib

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

ROOT = pathlib.Path(__file__).parent
PROTO_DIR = ROOT / "fleet" / "proto"
PROTO_SOURCES = ["batch_command.proto", "handshake.proto", "messages.proto", "service.proto"]


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
    session.run("pytest", "tests/browser", "--cov-append", *common)
    session.run("coverage", "report", "--skip-covered")
    session.run("coverage", "json", "-o", ".nox/coverage.json")
    session.run("python", "tests/coverage_core.py", ".nox/coverage.json")


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
