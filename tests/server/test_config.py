from __future__ import annotations

from pathlib import Path

import pytest

from fleet.server.cli import build_config, main
from fleet.server.config import ConfigError, ServerConfig, parse_hostport


def test_defaults_are_loopback() -> None:
    config = ServerConfig()
    assert config.http_endpoint == ("127.0.0.1", 8080)
    assert config.grpc_endpoint == ("127.0.0.1", 50051)
    assert config.public_listeners() == []


def test_flags_beat_env_beat_defaults(tmp_path: Path) -> None:
    env = {
        "FLEET_HTTP": "0.0.0.0:9000",
        "FLEET_RECONNECT_GRACE": "5",
        "FLEET_DATA_DIR": str(tmp_path),
    }
    config = build_config(["--http", "127.0.0.1:9100"], env)
    assert config.http == "127.0.0.1:9100"
    assert config.reconnect_grace_s == 5
    assert config.data_dir == tmp_path
    assert build_config([], env).public_listeners() == ["http on 0.0.0.0"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--http", "nope"],
        ["--grpc", "host:99999"],
        ["--reconnect-grace", "-1"],
        ["--output-cap", "-5"],
        ["--log-level", "LOUD"],
        ["--db", "mysql://x"],
        ["--tls-cert", "/no/such.pem"],
        ["--demo", "100000"],
    ],
)
def test_bad_settings_are_one_clear_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fleet-server: ")
    assert "\n" not in err


def test_bad_env_value() -> None:
    with pytest.raises(ConfigError, match="FLEET_RECONNECT_GRACE"):
        build_config([], {"FLEET_RECONNECT_GRACE": "soon"})


def test_demo_gets_a_temporary_data_dir() -> None:
    config = build_config(["--demo", "2"], {})
    assert config.demo == 2
    assert "fleet-demo-" in str(config.data_dir)
    config.data_dir.rmdir()


def test_ipv6_and_tls_pairing(tmp_path: Path) -> None:
    assert parse_hostport("[::1]:80", name="x") == ("::1", 80)
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        ServerConfig(tls_cert=cert)


def test_secrets_never_look_like_flags() -> None:
    from fleet.server.agents import new_secret

    tokens = {new_secret() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(t.startswith("fleet_") and len(t) >= 48 for t in tokens)
