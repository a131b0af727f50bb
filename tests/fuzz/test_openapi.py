"""schemathesis, every check, against a real ``fleet-server`` and its ``/api/openapi.json``.

The server runs as a subprocess on loopback ports chosen by the OS, with no agent (a generated
command can never run anywhere: every target is offline). schemathesis runs as a subprocess too
(its own event loop and ``requests`` stay out of this trio test process). ``nox -s tests`` runs a
bounded, seeded run; ``nox -s fuzz`` a longer one (``SCHEMATHESIS_MAX_EXAMPLES``,
``SCHEMATHESIS_SEED``). Zero failures, zero errors: the document is exactly as strict as the
server, and nothing answers a 500.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
READY = re.compile(r"Fleet is ready[^:]*: (https?://\S+)")
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261130"))
#: The whole run's bound: the default run takes ~45 s on 2 idle cores (~95 s under heavy load;
#: each request may take 30 s before it counts as a network error).
RUN_TIMEOUT_S = int(os.environ.get("SCHEMATHESIS_TIMEOUT", "300"))


def _start_server(data_dir: pathlib.Path) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    argv = [sys.executable, "-m", "fleet.server", "--http", "127.0.0.1:0", "--grpc",
            "127.0.0.1:0", "--data-dir", str(data_dir), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 60
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break
        if match := READY.search(line):
            parts = urllib.parse.urlsplit(match.group(1))
            token = urllib.parse.parse_qs(parts.query)["token"][0]
            return proc, f"{parts.scheme}://{parts.netloc}", token
    proc.kill()
    proc.wait(timeout=10)
    pytest.fail("fleet-server did not start:\n" + "".join(output[-40:]))


def test_schemathesis_finds_no_failure(tmp_path: pathlib.Path) -> None:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which(
        "schemathesis"
    )
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    proc, url, token = _start_server(tmp_path / "data")
    try:
        argv = [
            st, "--config-file", str(HERE / "schemathesis.toml"), "run",
            f"{url}/api/openapi.json", "--header", f"Authorization: Bearer {token}",
            "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
            "--generation-database", "none", "--request-timeout", "30", "--no-color",
            "--workers", "1",
        ]  # fmt: skip
        started = time.monotonic()
        run = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    report = run.stdout + run.stderr
    summary = re.search(r"(\d+) generated, (\d+) (?:passed|found)", report)
    print(f"schemathesis: {summary.group(0) if summary else '?'} in {elapsed:.1f} s")
    assert run.returncode == 0, report[-8000:]
    assert summary is not None, report[-3000:]
    assert int(summary.group(1)) > 0
    assert "Network Error" not in report, report[-8000:]
