"""Settings and errors: one clear line on stderr, the documented exit code, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server, bounded_main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = bounded_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_url_or_token(capsys: pytest.CaptureFixture[str], server: Server) -> None:
    code, out, err = run(capsys, "vps", "list")
    assert (code, out) == (2, "")
    assert err == "fleet: no server URL: pass --url URL or set FLEET_URL\n"
    code, out, err = run(capsys, "--url", server.url, "vps", "list")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "--token" in err
    assert "FLEET_TOKEN" in err


def test_token_sources(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(server.token + "\n")
    ok = ("vps", "list", "--json")
    assert run(capsys, "--url", server.url, "--token-file", str(token_file), *ok)[0] == 0
    assert run(capsys, "--url", f"{server.url}/?token={server.token}", *ok)[0] == 0
    monkeypatch.setenv("FLEET_URL", server.url)
    monkeypatch.setenv("FLEET_TOKEN", "wrong")
    assert run(capsys, "vps", "list", "--token", server.token)[0] == 0  # the flag wins
    monkeypatch.setenv("FLEET_TOKEN", server.token)
    code, _, err = run(capsys, "--token-file", str(tmp_path / "missing"), "vps", "list")
    assert code == 2
    assert err.startswith("fleet: cannot read the token file")


def test_wrong_token(capsys: pytest.CaptureFixture[str], server: Server) -> None:
    for argv in (("vps", "list"), ("run", "--tag", "demo", "--", "true")):
        code, out, err = run(capsys, "--url", server.url, "--token", "wrong", *argv)
        assert (code, out) == (3, "")
        assert err == "fleet: the token was refused by the server (check --token / FLEET_TOKEN)\n"


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, out, err = run(capsys, "--url", url, "--token", "t", "batches", "list")
    assert (code, out) == (3, "")
    assert err == f"fleet: cannot reach the Fleet server at {url} (connection refused)\n"


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("--nope",), ("run", "--timeout", "soon", "--", "x"), ("vps",), ()):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert "usage: fleet" in err
        assert "Traceback" not in err
    code, _out, _ = run(capsys, "--url", "ftp://x", "--token", "t", "vps", "list")
    assert code == 2


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    assert "FLEET_URL" in out
    assert "FLEET_TOKEN" in out
    code, out, _ = run(capsys, "run", "--help")
    assert code == 0
    assert "NAME | line" in out
    assert "Ctrl-C" in out


def test_python_m_fleet_and_light_imports() -> None:
    """``python -m fleet`` works and loads nothing of the server's stack."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['fleet', '--version']\n"
        "try:\n"
        "    runpy.run_module('fleet', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = ('fleet.server', 'quart', 'quart_trio', 'hypercorn', 'pony', 'grpclib')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('fleet.server'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fleet ")
