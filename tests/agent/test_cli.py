"""Configuration, flags, environment, and what importing the agent pulls in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from fleet.agent.cli import build_config, main
from fleet.agent.config import AgentConfig, ConfigError, Secret, parse_server_address
from fleet.proto import agent_service as pb

from .fakeserver import FakeServer
from .helpers import alive


def secret_file(tmp_path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secret_is_masked() -> None:
    secret = Secret("hunter2")
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    config = AgentConfig(server="h:1", vps_id=1, secret=secret)
    assert "hunter2" not in repr(config)
    assert Secret("a") == Secret("a") != Secret("b")


def test_config_defaults_and_for_test() -> None:
    config = AgentConfig(server="fleet.example.com:50051", vps_id=3, secret=Secret("x"))
    assert (config.host, config.port) == ("fleet.example.com", 50051)
    assert (config.shell, config.max_concurrent, config.terminate_grace_s) == ("/bin/sh", 32, 5.0)
    assert (config.reconnect_min_s, config.reconnect_max_s) == (1.0, 60.0)
    assert not config.tls
    assert not config.no_exec
    fast = AgentConfig.for_test("127.0.0.1:1")
    assert fast.reconnect_max_s < 1
    assert fast.terminate_grace_s <= 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"server": "nohost"}, "HOST:PORT"),
        ({"server": "h:70000"}, "1-65535"),
        ({"vps_id": 0}, "vps id"),
        ({"secret": Secret("  ")}, "secret must not be empty"),
        ({"max_concurrent": 0}, "max concurrent"),
        ({"terminate_grace_s": -1}, "terminate grace"),
        ({"log_level": "LOUD"}, "log level"),
        ({"shell": "sh"}, "absolute path"),
        ({"ca_file": Path("/etc/hostname")}, "needs TLS"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect max"),
        ({"output_buffer_bytes": 10}, "output buffer"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"server": "h:1", "vps_id": 1, "secret": Secret("x"), **changes}
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**values)


def test_ipv6_server_address() -> None:
    assert parse_server_address("[::1]:50051") == ("::1", 50051)
    with pytest.raises(ConfigError):
        parse_server_address("::1:50051")


def test_flags_override_environment_which_overrides_defaults(tmp_path: Path) -> None:
    environ = {
        "FLEET_AGENT_SERVER": "env-host:1",
        "FLEET_AGENT_VPS_ID": "7",
        "FLEET_AGENT_SECRET_FILE": str(secret_file(tmp_path)),
        "FLEET_AGENT_MAX_CONCURRENT": "4",
        "FLEET_AGENT_NO_EXEC": "true",
    }
    config = build_config(["--server", "flag-host:2", "--terminate-grace", "1.5"], environ)
    assert config.server == "flag-host:2"
    assert config.vps_id == 7
    assert config.secret.reveal() == "s3cret"
    assert config.max_concurrent == 4
    assert config.terminate_grace_s == 1.5
    assert config.no_exec
    assert config.shell == "/bin/sh"
    assert build_config(["--max-concurrent", "9"], environ).max_concurrent == 9


def test_secret_flag_wins_over_secret_file_environment(tmp_path: Path) -> None:
    environ = {"FLEET_AGENT_SECRET_FILE": str(secret_file(tmp_path))}
    config = build_config(["--server", "h:1", "--vps-id", "1", "--secret", "direct"], environ)
    assert config.secret.reveal() == "direct"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--server"),
        (["--server", "h:1"], "--vps-id"),
        (["--server", "h:1", "--vps-id", "1"], "--secret"),
        (["--server", "h:1", "--vps-id", "x", "--secret", "s"], "integer"),
        (["--server", "h:1", "--vps-id", "1", "--secret", "s", "--bogus"], "unrecognized"),
        (["--server", "h:1", "--vps-id", "1", "--secret", "s", "--secret-file", "f"], "not both"),
    ],
)
def test_bad_settings_raise_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(argv, {})


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        build_config(["--server", "h:1", "--vps-id", "1", "--secret-file", str(path)], {})


def test_main_returns_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", "h:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fleet-agent: error: ")


def _run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fleet.agent", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--server", "h:1", "--vps-id", "abc", "--secret", "s"],
        ["--server", "h:99999", "--vps-id", "1", "--secret", "s"],
        [],
    ],
)
def test_bad_flags_exit_2_without_traceback(args: list[str]) -> None:
    completed = _run_module(*args)
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith("fleet-agent: error:")


def test_open_secret_file_exits_2(tmp_path: Path) -> None:
    path = secret_file(tmp_path, mode=0o640)
    completed = _run_module("--server", "h:1", "--vps-id", "1", "--secret-file", str(path))
    assert completed.returncode == 2
    assert "group or others" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_importing_the_agent_pulls_in_no_server_dependencies() -> None:
    code = (
        "import sys, fleet.agent.run, fleet.agent.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'quart', 'quart_trio', 'hypercorn', 'pony', 'trio_websocket'} "
        "or m.startswith('fleet.server'))\n"
        "print(','.join(bad))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert completed.stdout.strip() == ""


async def test_sigterm_stops_the_agent_process_gracefully(aio_loop: Any, tmp_path: Path) -> None:
    """The real ``python -m fleet.agent``: SIGTERM terminates commands, reports, exits 0."""
    server = FakeServer(secret="s3cret")
    await server.start()
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                process = await nursery.start(
                    _agent_process,
                    server,
                    secret_file(tmp_path),
                )
                await server.wait_connected()
                await server.run_command("c", "trap '' TERM; echo up; sleep 300")
                await server.wait_for(lambda: server.of_kind("batch_command_output_stream", "c"))
                started = server.of_kind("batch_command_started", "c")[0]
                process.send_signal(signal.SIGTERM)
                await server.wait_result("c")
            assert process.returncode == 0
        result = server.result("c")
        assert result is not None
        assert result.status == pb.CommandStatus.TERMINATED
        assert not alive(started.pid)
    finally:
        await server.stop()


async def _agent_process(
    server: FakeServer, secret: Path, *, task_status: trio.TaskStatus[trio.Process]
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ.update(
        FLEET_AGENT_SERVER=server.address,
        FLEET_AGENT_VPS_ID="1",
        FLEET_AGENT_SECRET_FILE=str(secret),
        FLEET_AGENT_TERMINATE_GRACE="0.5",
        FLEET_AGENT_STATE_DIR=str(secret.parent / "agent-state"),
    )
    await trio.run_process(
        [sys.executable, "-m", "fleet.agent", "--log-level", "debug"],
        env=environ,
        task_status=task_status,
        check=False,
    )
