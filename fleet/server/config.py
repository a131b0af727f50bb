"""The server's configuration: one frozen dataclass, validated once at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fleet.logformat import FORMATS

__all__ = ["ConfigError", "ServerConfig", "parse_hostport"]


class ConfigError(ValueError):
    """A setting is invalid; the message is one line for the operator."""


def parse_hostport(value: str, *, name: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 asks the OS for a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_origin_url(url: str) -> bool:
    """Whether ``url`` is ``http(s)://HOST[:PORT]`` with at most a ``/`` after it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


_NODE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``fleet-server`` needs to run.

    Durations are seconds (``_s``), sizes bytes.
    """

    http: str = "127.0.0.1:8080"
    grpc: str = "127.0.0.1:50051"
    #: The gRPC address agents should dial (shown in the agent command line), when the
    #: listener's own address is not reachable from the VPSes (0.0.0.0, NAT, a proxy).
    public_grpc: str | None = None
    #: The URL browsers open (``https://fleet.example.com``) when it is not the listener's own,
    #: behind a reverse proxy that terminates TLS: the origin cookie-authenticated writes and
    #: WebSocket handshakes must come from. Unset: the request's scheme and ``Host``.
    public_url: str | None = None
    data_dir: Path = Path("fleet-data")
    db_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    reconnect_grace_s: float = 30.0
    output_cap_bytes: int = 64 * 1024 * 1024
    summary_lines: int = 20
    terminate_confirm_s: float = 15.0
    result_slack_s: float = 60.0
    handshake_timeout_s: float = 10.0
    #: A request body not fully received within this is answered 408 (30 s).
    body_timeout_s: float = 30.0
    flush_interval_s: float = 0.1
    keepalive_s: float = 20.0
    keepalive_timeout_s: float = 10.0
    shutdown_grace_s: float = 5.0
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one JSON object per line: ``fleet.logformat``).
    log_format: str = "text"
    demo: int = 0
    #: ``HOST:PORT`` (or a bare ``PORT``, on 127.0.0.1) of the Prometheus endpoint; off if None.
    metrics: str | None = None
    #: Join the cluster of servers on the same PostgreSQL database (``fleet.server.cluster``).
    cluster: bool = False
    #: This server's name in the cluster (default: the host name plus the gRPC port).
    node_name: str | None = None
    #: How long a node's lease lasts without renewal; then a live node adopts its batches.
    node_lease_s: float = 10.0
    #: argon2id cost of password hashes (OWASP's floor is 19 MiB and 2 passes).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536

    def __post_init__(self) -> None:
        self.http_endpoint  # noqa: B018 - validates
        self.grpc_endpoint  # noqa: B018
        if self.public_grpc is not None:
            parse_hostport(self.public_grpc, name="--public-grpc")
        self.metrics_endpoint  # noqa: B018 - validates
        if self.public_url is not None and not _is_origin_url(self.public_url):
            raise ConfigError(
                f"--public-url: expected http(s)://HOST[:PORT], got {self.public_url!r}"
            )
        for name in (
            "reconnect_grace_s",
            "terminate_confirm_s",
            "result_slack_s",
            "handshake_timeout_s",
            "body_timeout_s",
            "flush_interval_s",
            "keepalive_s",
            "keepalive_timeout_s",
            "shutdown_grace_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or value != value:
                raise ConfigError(f"{name}: must be a number of seconds ≥ 0, got {value!r}")
        if self.output_cap_bytes < 0:
            raise ConfigError("output cap: must be ≥ 0 bytes")
        if not 1 <= self.summary_lines <= 1000:
            raise ConfigError("summary lines: must be between 1 and 1000")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file not found: {path}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log level: unknown {self.log_level!r}")
        if self.log_format not in FORMATS:
            raise ConfigError(f"--log-format: expected text or json, got {self.log_format!r}")
        if not (1 <= self.argon2_time_cost <= 100 and 8 <= self.argon2_memory_kib <= 4 << 20):
            raise ConfigError("argon2: time cost 1-100, memory 8 KiB - 4 GiB")
        if not 0 <= self.demo <= 1000:
            raise ConfigError("--demo: between 0 and 1000 agents")
        if self.db_url is not None and not self.db_url.startswith(
            ("sqlite:", "postgres://", "postgresql://")
        ):
            raise ConfigError(
                f"--db: expected postgres://… or sqlite:PATH, got {self.db_url.split(':')[0]!r}"
            )
        if self.cluster and not (self.db_url or "").startswith(("postgres://", "postgresql://")):
            raise ConfigError("--cluster needs --db postgres://… (the cluster's shared database)")
        if self.node_name is not None and not _NODE_NAME.fullmatch(self.node_name):
            raise ConfigError(
                "--node-name: 1-64 characters of letters, digits, '.', '_', ':' or '-',"
                f" got {self.node_name!r}"
            )
        lease = self.node_lease_s
        if not isinstance(lease, int | float) or not 1.0 <= lease <= 15.0:
            raise ConfigError(f"--node-lease: between 1 and 15 seconds, got {lease!r}")

    @property
    def http_endpoint(self) -> tuple[str, int]:
        return parse_hostport(self.http, name="--http")

    @property
    def grpc_endpoint(self) -> tuple[str, int]:
        return parse_hostport(self.grpc, name="--grpc")

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """Where ``--metrics`` listens (a bare port means loopback), or None when it is off."""
        if self.metrics is None:
            return None
        if self.metrics.isdigit():
            return parse_hostport(f"127.0.0.1:{self.metrics}", name="--metrics")
        return parse_hostport(self.metrics, name="--metrics")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def public_listeners(self) -> list[str]:
        """Listeners bound beyond loopback (worth a warning without TLS)."""
        out = []
        for name, (host, _port) in (("http", self.http_endpoint), ("grpc", self.grpc_endpoint)):
            if not _is_loopback(host):
                out.append(f"{name} on {host}")
        return out

    @property
    def public_metrics(self) -> bool:
        """The metrics endpoint (no authentication, no TLS) listens beyond loopback."""
        endpoint = self.metrics_endpoint
        return endpoint is not None and not _is_loopback(endpoint[0])

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def for_test(cls, data_dir: Path, **changes: object) -> ServerConfig:
        """Port 0 everywhere and short timeouts, for tests."""
        base = cls(
            http="127.0.0.1:0",
            grpc="127.0.0.1:0",
            data_dir=data_dir,
            reconnect_grace_s=2.0,
            terminate_confirm_s=5.0,
            handshake_timeout_s=5.0,
            flush_interval_s=0.02,
            shutdown_grace_s=2.0,
            argon2_time_cost=1,
            argon2_memory_kib=1024,
        )
        return base.replace(**changes)
