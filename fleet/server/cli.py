"""``fleet-server``: flags and ``FLEET_*`` environment → ``ServerConfig`` → ``serve``."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

import fleet
from fleet import logformat
from fleet.logformat import FORMATS

from .config import ConfigError, ServerConfig
from .datadir import DataDirError, DataDirLock, lock_data_dir

__all__ = ["build_config", "main"]

logger = logging.getLogger("fleet.server")

# flag dest → (env var, converter)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "http": ("FLEET_HTTP", str),
    "grpc": ("FLEET_GRPC", str),
    "public_grpc": ("FLEET_PUBLIC_GRPC", str),
    "public_url": ("FLEET_PUBLIC_URL", str),
    "data_dir": ("FLEET_DATA_DIR", Path),
    "db_url": ("FLEET_DB", str),
    "tls_cert": ("FLEET_TLS_CERT", Path),
    "tls_key": ("FLEET_TLS_KEY", Path),
    "reconnect_grace_s": ("FLEET_RECONNECT_GRACE", float),
    "output_cap_bytes": ("FLEET_OUTPUT_CAP", int),
    "terminate_confirm_s": ("FLEET_TERMINATE_CONFIRM", float),
    "log_level": ("FLEET_LOG_LEVEL", str),
    "log_format": ("FLEET_LOG_FORMAT", str),
    "demo": ("FLEET_DEMO", int),
    "metrics": ("FLEET_METRICS", str),
    "cluster": ("FLEET_CLUSTER", lambda v: _flag(v, "FLEET_CLUSTER")),
    "node_name": ("FLEET_NODE_NAME", str),
    "node_lease_s": ("FLEET_NODE_LEASE", float),
}


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected 1/0, true/false, yes/no or on/off")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-server",
        description="Run Fleet's server: agents connect over gRPC, people use the web UI/REST.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--http", metavar="HOST:PORT", help="web UI and REST (127.0.0.1:8080)")
    p.add_argument("--grpc", metavar="HOST:PORT", help="agent streams (127.0.0.1:50051)")
    p.add_argument(
        "--public-grpc",
        dest="public_grpc",
        metavar="HOST:PORT",
        help="the gRPC address VPSes dial, when not --grpc's (shown in agent command lines)",
    )
    p.add_argument(
        "--public-url",
        dest="public_url",
        metavar="URL",
        help="the URL browsers open, behind a reverse proxy (https://fleet.example.com): "
        "the only origin the UI's cookie may write from",
    )
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="store and logs (./fleet-data)")
    p.add_argument("--db", dest="db_url", metavar="URL", help="postgres://… (default: SQLite)")
    p.add_argument("--tls-cert", dest="tls_cert", type=Path, metavar="PEM")
    p.add_argument("--tls-key", dest="tls_key", type=Path, metavar="PEM")
    p.add_argument(
        "--reconnect-grace",
        dest="reconnect_grace_s",
        type=float,
        metavar="S",
        help="how long a lost agent may take to come back mid-command (30)",
    )
    p.add_argument(
        "--output-cap",
        dest="output_cap_bytes",
        type=int,
        metavar="BYTES",
        help="per-stream log cap (64 MiB)",
    )
    p.add_argument(
        "--terminate-confirm",
        dest="terminate_confirm_s",
        type=float,
        metavar="S",
        help="how long to wait for an agent to confirm a terminate (15)",
    )
    p.add_argument("--log-level", dest="log_level", metavar="LEVEL")
    p.add_argument(
        "--log-format",
        dest="log_format",
        choices=FORMATS,
        help="text, or json: one JSON object per line (text)",
    )
    p.add_argument(
        "--demo", type=int, metavar="N", help="also run N local agents (demo-1..N) to try Fleet"
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT: 127.0.0.1; off)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="join the cluster of servers sharing --db postgres://… (see README: Run a cluster)",
    )
    p.add_argument(
        "--node-name",
        dest="node_name",
        metavar="NAME",
        help="this server's name in the cluster (host name plus gRPC port)",
    )
    p.add_argument(
        "--node-lease",
        dest="node_lease_s",
        type=float,
        metavar="S",
        help="a node silent this long is dead and its batches are adopted (10; 1-15)",
    )
    p.add_argument("--version", action="version", version=f"fleet {fleet.__version__}")
    return p


def build_config(argv: Sequence[str] | None, environ: dict[str, str]) -> ServerConfig:
    """Flags over ``FLEET_*`` environment over defaults. Raises ``ConfigError``."""
    args = vars(_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for dest, (env, convert) in _ENV.items():
        if dest in args:
            values[dest] = args[dest]
        elif environ.get(env):
            try:
                values[dest] = convert(environ[env])
            except ValueError as exc:
                raise ConfigError(f"{env}: invalid value {environ[env]!r}") from exc
    if values.get("demo") and "data_dir" not in values:
        values["data_dir"] = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    try:
        return ServerConfig(**values)
    except TypeError as exc:  # pragma: no cover - every key is a field
        raise ConfigError(str(exc)) from exc


def _setup_logging(level: str, log_format: str) -> None:
    logformat.configure(
        level=level.upper(),
        log_format=log_format,
        text_format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


async def _main(config: ServerConfig, lock: DataDirLock) -> None:
    from fleet.wire import open_loop

    from .serve import serve

    async with open_loop():
        async with trio.open_nursery() as nursery:
            endpoints = await nursery.start(functools.partial(serve, config, lock=lock))
            what = f" with {config.demo} demo agents" if config.demo else ""
            print(f"Fleet is ready{what}: {endpoints.login_url}", flush=True)
            print(f"Agents connect to {endpoints.grpc_address}", flush=True)
            if endpoints.metrics_url:
                print(f"Metrics at {endpoints.metrics_url}", flush=True)
            if config.demo:
                print(f"Demo data directory: {config.data_dir}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("received %s; shutting down", signal.Signals(signum).name)
                    break
            nursery.cancel_scope.cancel(reason="signal")


def _only_oserror(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    """The first error of ``group`` when every error in it is an ``OSError``, else None."""
    matched, rest = group.split(OSError)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, OSError) else None


def _cluster_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    from .cluster import ClusterError

    matched, _ = group.split(ClusterError)
    leaf: BaseException | None = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fleet-server``; returns the exit code."""
    try:
        config = build_config(argv, dict(os.environ))
    except ConfigError as exc:
        print(f"fleet-server: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level, config.log_format)
    os.umask(0o077)  # every file and directory the server creates is private (SPEC §6)
    try:
        lock = lock_data_dir(config.data_dir)
    except DataDirError as exc:
        print(f"fleet-server: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_main, config, lock)
    except OSError as exc:
        print(f"fleet-server: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A listener that cannot bind fails inside the server's nurseries: still one line.
        # So does a cluster node that lost its lease (another node runs its batches now).
        error: BaseException | None = _only_oserror(group) or _cluster_error(group)
        if error is None:
            raise
        print(f"fleet-server: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during shutdown
        return 130
    finally:
        lock.release()
    return 0
