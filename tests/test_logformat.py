"""``--log-format json``: one JSON object per line with the text format's fields."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from fleet.logformat import JsonFormatter, configure


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("fleet.test.logformat")
    yield log
    log.handlers.clear()


def _record(logger: logging.Logger, fmt: logging.Formatter, emit: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit()  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def test_a_record_is_one_json_line_with_the_text_fields(logger: logging.Logger) -> None:
    out = _record(logger, JsonFormatter(), lambda: logger.warning("vps=%s %s", 12, "line\none"))
    assert out.count("\n") == 1
    entry = json.loads(out)
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "fleet.test.logformat"
    assert entry["message"] == "vps=12 line\none"
    at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert at.utcoffset() == timedelta(0)


def test_an_exception_is_kept_in_the_same_line(logger: logging.Logger) -> None:
    def emit() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed")

    out = _record(logger, JsonFormatter(), emit)
    assert out.count("\n") == 1
    entry = json.loads(out)
    assert entry["message"] == "crashed"
    assert "ValueError: boom" in entry["exception"]
    assert "Traceback" in entry["exception"]


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure(level="INFO", log_format="xml", text_format="%(message)s")


def _agent_log_lines(tmp_path: Path, *args: str) -> list[str]:
    """Start ``fleet-agent`` against a port nobody listens on; return its first log lines."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ["FLEET_AGENT_STATE_DIR"] = str(tmp_path / "agent-state")  # not the machine's
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet.agent", "--server", "127.0.0.1:9", "--vps-id", "1",
         "--secret-file", str(secret), *args],
        stderr=subprocess.PIPE, text=True, env=environ,
    )  # fmt: skip
    assert process.stderr is not None
    deadline = threading.Timer(30, process.kill)  # bounds the reads below
    deadline.start()
    try:
        # The agent logs its start, then the failed connection attempt: two lines at least.
        lines = [process.stderr.readline(), process.stderr.readline()]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        deadline.cancel()
    return lines


def test_the_agent_writes_json_lines(tmp_path: Path) -> None:
    lines = _agent_log_lines(tmp_path, "--log-format", "json")
    entries = [json.loads(line) for line in lines]
    assert entries[0]["logger"] == "fleet.agent"
    assert entries[0]["level"] == "INFO"
    assert entries[0]["message"].startswith("fleet-agent ")
    assert "vps=1 server=127.0.0.1:9" in entries[0]["message"]


def test_the_agent_writes_text_by_default(tmp_path: Path) -> None:
    first = _agent_log_lines(tmp_path)[0]
    assert " INFO fleet.agent: fleet-agent " in first
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_the_agent_refuses_an_unknown_format(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet.agent", "--server", "127.0.0.1:9", "--vps-id", "1",
         "--secret", "x", "--log-format", "xml"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "fleet-agent: error: log format must be text or json, got 'xml'\n"


def test_server_log_format_setting() -> None:
    from fleet.server.cli import build_config
    from fleet.server.config import ConfigError

    assert build_config([], {}).log_format == "text"
    assert build_config(["--log-format", "json"], {}).log_format == "json"
    assert build_config([], {"FLEET_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="--log-format"):
        build_config([], {"FLEET_LOG_FORMAT": "xml"})
