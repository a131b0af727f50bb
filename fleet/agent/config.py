"""The agent's configuration: one frozen dataclass validated when built (like grpclib's).

``cli.main`` builds it from flags and ``FLEET_AGENT_*`` variables; the server's demo mode and the
tests build it directly. Nothing here reads the environment or the clock.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.logformat import FORMATS

__all__ = [
    "AgentConfig",
    "ConfigError",
    "Secret",
    "default_state_dir",
    "parse_server_address",
]

KIB = 1024
MIB = 1024 * KIB

#: Largest output chunk the runner sends (a quarter of the per-command output buffer, so up to
#: four chunks are in flight while a stream is read; bounded by the 4 MiB message limit). Fewer,
#: bigger messages are what makes a long stream cheap on both ends (bench ``throughput``).
MAX_CHUNK_BYTES = 256 * KIB
#: Smallest output chunk, and the smallest per-command output buffer (it holds one chunk).
MIN_CHUNK_BYTES = 64 * KIB


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line meant for the operator."""


class Secret:
    """A credential whose ``repr``/``str`` never shows the value (starlette's ``Secret``).

    Args:
        value: the secret text; ``reveal()`` gives it back.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """Return the secret text (only where it goes on the wire)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def parse_server_address(server: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[v6]:PORT``) into host and port.

    Raises:
        ConfigError: the address is not of that form or the port is out of range.
    """
    text = server.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"server must be HOST:PORT, got {server!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"server has an invalid IPv6 address: {server!r}") from None
    elif ":" in host:
        raise ConfigError(f"write an IPv6 server address as [ADDR]:PORT, got {server!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"server port must be 1-65535, got {port}")
    return host, port


def default_state_dir(environ: Mapping[str, str], euid: int, home: Path) -> Path:
    """Where the agent keeps its journal when ``--state-dir`` is not given (SPEC §6).

    ``/var/lib/fleet-agent`` for root, else ``$XDG_STATE_HOME/fleet-agent`` (an absolute
    ``XDG_STATE_HOME`` only, as the XDG spec says), else ``~/.local/state/fleet-agent``.
    """
    if euid == 0:
        return Path("/var/lib/fleet-agent")
    xdg = environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".local" / "state"
    return base / "fleet-agent"


_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; invalid values raise :class:`ConfigError` at construction.

    Durations are seconds (``_s``), sizes bytes. Defaults suit a production VPS;
    :meth:`for_test` shortens the timeouts.
    """

    #: ``HOST:PORT`` of the server's gRPC listener, or several, comma-separated (the servers of
    #: one cluster): the agent connects to one and moves on to the next when it fails.
    server: str
    #: This VPS's id in the server's database (``vps_db_id`` on the wire).
    vps_id: int
    #: The VPS's agent secret, sent with every message.
    secret: Secret
    #: Connect with TLS (system CAs, or ``ca_file``); the server name is the HOST part.
    tls: bool = False
    #: PEM file of the CA that signed the server's certificate (needs ``tls``).
    ca_file: Path | None = None
    #: Interpreter for commands without a ``#!`` line.
    shell: str = "/bin/sh"
    #: Commands running at once; more are rejected (``BatchCommandAck(accepted=false)``).
    max_concurrent: int = 32
    #: Seconds between SIGTERM and SIGKILL to a command's process group.
    terminate_grace_s: float = 5.0
    #: Reject every command (for machines that must never run remote commands).
    no_exec: bool = False
    #: Level of the ``fleet.agent`` loggers (applied by ``cli.main``).
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one JSON object per line; applied by ``cli.main``).
    log_format: str = "text"
    #: First reconnect delay; doubles per failed attempt up to ``reconnect_max_s`` (with jitter).
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: HTTP/2 ping interval and how long an unanswered ping may wait before the link is dropped.
    keepalive_time_s: float = 20.0
    keepalive_timeout_s: float = 10.0
    #: Bound on connecting plus the handshake answer.
    connect_timeout_s: float = 15.0
    #: Per command and per kind (not yet sent / sent but kept for re-sending after a reconnect).
    output_buffer_bytes: int = 1 * MIB
    #: How long to keep reading a command's pipes after its main process exited (a background
    #: process may hold them open).
    output_drain_s: float = 2.0
    #: Final results kept until the server's ``BatchResultAck``; beyond, the oldest are dropped.
    max_unacked_results: int = 1000
    #: Directory of the journal (``fleet.agent.journal``), created mode 0700. None keeps no
    #: journal: a restarted agent then cannot vouch for what it ran (the handshake says so).
    #: ``fleet-agent`` always sets one (:func:`default_state_dir`).
    state_dir: Path | None = None
    #: ``HOST:PORT`` (or a bare ``PORT``, on 127.0.0.1) of the agent's Prometheus endpoint.
    metrics: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.server, str):
            raise ConfigError(f"server must be HOST:PORT, got {self.server!r}")
        for address in self.server.split(","):
            parse_server_address(address)
        if len(self.servers) > 64:
            raise ConfigError("at most 64 servers")
        if isinstance(self.vps_id, bool) or not isinstance(self.vps_id, int):
            raise ConfigError(f"vps id must be an integer, got {self.vps_id!r}")
        if not 1 <= self.vps_id <= _INT32_MAX:
            raise ConfigError(f"vps id must be between 1 and {_INT32_MAX}, got {self.vps_id}")
        if not isinstance(self.secret, Secret):
            raise ConfigError("secret must be a Secret")
        if not self.secret.reveal().strip():
            raise ConfigError("secret must not be empty")
        if self.ca_file is not None:
            if not self.tls:
                raise ConfigError("a CA file needs TLS (--tls)")
            if not Path(self.ca_file).is_file():
                raise ConfigError(f"CA file not found: {self.ca_file}")
        if not self.shell or not os.path.isabs(self.shell):
            raise ConfigError(f"shell must be an absolute path, got {self.shell!r}")
        if not os.access(self.shell, os.X_OK):
            raise ConfigError(f"shell is not executable: {self.shell}")
        if isinstance(self.max_concurrent, bool) or not isinstance(self.max_concurrent, int):
            raise ConfigError("max concurrent must be an integer")
        if self.max_concurrent < 1:
            raise ConfigError(f"max concurrent must be at least 1, got {self.max_concurrent}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"log level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in FORMATS:
            raise ConfigError(f"log format must be text or json, got {self.log_format!r}")
        _non_negative("terminate grace", self.terminate_grace_s)
        _non_negative("output drain", self.output_drain_s)
        for name, value in (
            ("reconnect min", self.reconnect_min_s),
            ("reconnect max", self.reconnect_max_s),
            ("keepalive time", self.keepalive_time_s),
            ("keepalive timeout", self.keepalive_timeout_s),
            ("connect timeout", self.connect_timeout_s),
        ):
            _positive(name, value)
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("reconnect max must not be below reconnect min")
        if self.output_buffer_bytes < MIN_CHUNK_BYTES:
            raise ConfigError(f"output buffer must be at least {MIN_CHUNK_BYTES} bytes")
        if self.max_unacked_results < 1:
            raise ConfigError("max unacked results must be at least 1")
        self.metrics_endpoint  # noqa: B018 - validates
        if self.state_dir is not None and not os.path.isabs(self.state_dir):
            raise ConfigError(f"state dir must be an absolute path, got {str(self.state_dir)!r}")

    @property
    def servers(self) -> list[str]:
        """Every server address, in the order they are tried."""
        return [address.strip() for address in self.server.split(",")]

    @property
    def chunk_bytes(self) -> int:
        """The largest output chunk a command's reader sends: a quarter of the output buffer,
        between ``MIN_CHUNK_BYTES`` and ``MAX_CHUNK_BYTES``."""
        return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, self.output_buffer_bytes // 4))

    @property
    def host(self) -> str:
        """The HOST part of the first server (also the TLS server name)."""
        return parse_server_address(self.servers[0])[0]

    @property
    def port(self) -> int:
        """The PORT part of the first server."""
        return parse_server_address(self.servers[0])[1]

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """Where ``--metrics`` listens (a bare port means loopback), or None when it is off."""
        if self.metrics is None:
            return None
        text = f"127.0.0.1:{self.metrics}" if self.metrics.isdigit() else self.metrics
        host, _, port = text.rpartition(":")
        try:
            if port == "0":  # any free port (the agent logs the one it got)
                return parse_server_address(f"{host}:1")[0], 0
            return parse_server_address(text)
        except ConfigError:
            raise ConfigError(f"metrics must be HOST:PORT or PORT, got {self.metrics!r}") from None

    @property
    def log_level_number(self) -> int:
        """``log_level`` as a :mod:`logging` level number."""
        return int(getattr(logging, self.log_level.upper()))  # getLevelNamesMapping is 3.11+

    def replace(self, **changes: Any) -> AgentConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_test(
        cls,
        server: str,
        *,
        vps_id: int = 1,
        secret: str = "test-secret",
        **overrides: Any,
    ) -> AgentConfig:
        """A config with short timeouts for tests (grpclib's ``__for_test__``)."""
        values: dict[str, Any] = {
            "terminate_grace_s": 1.0,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.4,
            "keepalive_time_s": 1.0,
            "keepalive_timeout_s": 2.0,
            "connect_timeout_s": 5.0,
            "output_drain_s": 0.5,
        }
        values.update(overrides)
        return cls(server=server, vps_id=vps_id, secret=Secret(secret), **values)


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
