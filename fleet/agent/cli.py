"""``fleet-agent``: flags and ``FLEET_AGENT_*`` variables → :class:`AgentConfig` → the agent.

Precedence is flag > environment variable > default. A bad or missing setting prints one line
on stderr and exits with status 2 (no traceback), and so does a state directory that cannot be
used (or that another agent uses). SIGTERM or SIGINT stops the agent gracefully
(its commands are terminated and reported); a second signal, or the grace running out, stops it
at once. The exit status is then 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

import fleet
from fleet import logformat

from .config import AgentConfig, ConfigError, Secret, default_state_dir
from .link import open_loop
from .metrics import AgentStats, serve_metrics
from .run import SHUTDOWN_REPORT_S, run_agent
from .statedir import Journal, JournalError

__all__ = ["build_config", "main"]

logger = logging.getLogger("fleet.agent")

_PROG = "fleet-agent"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="Fleet agent: keeps a link to the Fleet server and runs its commands.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override env/defaults
    )
    add = parser.add_argument
    add(
        "--server",
        metavar="HOST:PORT[,HOST:PORT…]",
        help="server gRPC address; a cluster: several, tried in turn [FLEET_AGENT_SERVER]",
    )
    add("--vps-id", metavar="N", help="this VPS's id on the server [FLEET_AGENT_VPS_ID]")
    add("--secret", help="agent secret (prefer --secret-file) [FLEET_AGENT_SECRET]")
    add(
        "--secret-file",
        metavar="PATH",
        help="file holding the secret, mode 0600 or stricter [FLEET_AGENT_SECRET_FILE]",
    )
    add("--tls", action="store_true", help="connect with TLS [FLEET_AGENT_TLS]")
    add("--ca-file", metavar="PEM", help="CA certificate for TLS [FLEET_AGENT_CA_FILE]")
    add("--shell", metavar="PATH", help="interpreter without #! (/bin/sh) [FLEET_AGENT_SHELL]")
    add(
        "--max-concurrent",
        metavar="N",
        help="commands running at once (32) [FLEET_AGENT_MAX_CONCURRENT]",
    )
    add(
        "--terminate-grace",
        metavar="SECONDS",
        help="SIGTERM→SIGKILL grace (5) [FLEET_AGENT_TERMINATE_GRACE]",
    )
    add("--no-exec", action="store_true", help="reject every command [FLEET_AGENT_NO_EXEC]")
    add(
        "--state-dir",
        metavar="PATH",
        help="journal directory, mode 0700 (/var/lib/fleet-agent as root, else "
        "$XDG_STATE_HOME/fleet-agent) [FLEET_AGENT_STATE_DIR]",
    )
    add("--log-level", metavar="LEVEL", help="DEBUG, INFO, ... (INFO) [FLEET_AGENT_LOG_LEVEL]")
    add("--log-format", metavar="FORMAT", help="text or json (text) [FLEET_AGENT_LOG_FORMAT]")
    add(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics; a bare PORT: 127.0.0.1 "
        "(off) [FLEET_AGENT_METRICS]",
    )
    add("--version", action="version", version=f"%(prog)s {fleet.__version__}")
    return parser


def build_config(argv: Sequence[str], environ: Mapping[str, str]) -> AgentConfig:
    """Build the configuration from command-line arguments and environment variables.

    Raises:
        ConfigError: a setting is missing or invalid (the message is one line).
    """
    given = vars(_parser().parse_args(list(argv)))

    def setting(flag: str, env: str) -> Any:
        if flag in given:
            return given[flag]
        return environ.get(f"FLEET_AGENT_{env}")

    server = setting("server", "SERVER")
    if not server:
        raise ConfigError("--server (or FLEET_AGENT_SERVER) is required")
    vps_id = setting("vps_id", "VPS_ID")
    if vps_id is None or vps_id == "":
        raise ConfigError("--vps-id (or FLEET_AGENT_VPS_ID) is required")
    values: dict[str, Any] = {
        "server": server,
        "vps_id": _integer("vps id", vps_id),
        "secret": _secret(given, environ),
    }
    if (tls := setting("tls", "TLS")) is not None:
        values["tls"] = _boolean("FLEET_AGENT_TLS", tls)
    if ca_file := setting("ca_file", "CA_FILE"):
        values["ca_file"] = Path(ca_file)
    if shell := setting("shell", "SHELL"):
        values["shell"] = shell
    if (limit := setting("max_concurrent", "MAX_CONCURRENT")) is not None:
        values["max_concurrent"] = _integer("max concurrent", limit)
    if (grace := setting("terminate_grace", "TERMINATE_GRACE")) is not None:
        values["terminate_grace_s"] = _number("terminate grace", grace)
    if (no_exec := setting("no_exec", "NO_EXEC")) is not None:
        values["no_exec"] = _boolean("FLEET_AGENT_NO_EXEC", no_exec)
    if level := setting("log_level", "LOG_LEVEL"):
        values["log_level"] = str(level).upper()
    if log_format := setting("log_format", "LOG_FORMAT"):
        values["log_format"] = str(log_format).lower()
    if metrics := setting("metrics", "METRICS"):
        values["metrics"] = str(metrics)
    state_dir = setting("state_dir", "STATE_DIR")
    if state_dir:
        values["state_dir"] = Path(state_dir).absolute()
    else:
        values["state_dir"] = default_state_dir(environ, os.geteuid(), Path.home())
    return AgentConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fleet-agent`` and ``python -m fleet.agent``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        config = build_config(args, os.environ)
    except ConfigError as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help / --version
        return exit_.code if isinstance(exit_.code, int) else 0
    logformat.configure(
        level=config.log_level_number,
        log_format=config.log_format,
        text_format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    journal = Journal(config.state_dir, max_results=config.max_unacked_results)
    try:
        if not _given("--state-dir", args) and not os.environ.get("FLEET_AGENT_STATE_DIR"):
            _make_parents(journal.directory)  # ~/.local/state may not exist yet
        journal.open()  # before anything starts, so that a refusal is one line
    except JournalError as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return 2
    if _given("--secret", args):
        logger.warning("--secret is visible to every user in the process list; use --secret-file")
    logger.info(
        "fleet-agent %s: vps=%d server=%s tls=%s no_exec=%s state_dir=%s",
        fleet.__version__,
        config.vps_id,
        config.server,
        config.tls,
        config.no_exec,
        config.state_dir,
    )
    stats = AgentStats()
    endpoint = None
    if (where := config.metrics_endpoint) is not None:
        try:
            endpoint = serve_metrics(stats, *where)
        except OSError as error:
            journal.close()
            print(f"{_PROG}: error: --metrics {config.metrics}: {error}", file=sys.stderr)
            return 2
        if not _loopback(where[0]):
            logger.warning("metrics on %s: anyone who can reach it reads them", config.metrics)
    try:
        trio.run(_serve, config, journal, stats)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
    except Exception:
        logger.exception("fleet-agent crashed")
        return 1
    finally:
        journal.close()
        if endpoint is not None:
            endpoint.close()
    return 0


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(config: AgentConfig, journal: Journal, stats: AgentStats) -> None:
    async with open_loop():
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, config, stop, nursery.cancel_scope)
            await run_agent(config, stop=stop, journal=journal, stats=stats)
            nursery.cancel_scope.cancel()
    logger.info("vps=%d stopped", config.vps_id)


async def _watch_signals(config: AgentConfig, stop: trio.Event, scope: trio.CancelScope) -> None:
    """First SIGTERM/SIGINT: graceful stop with a deadline; the second: stop at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                logger.warning("%s again: stopping now", signal.Signals(signum).name)
                scope.cancel(reason="second signal")
                return
            logger.info("%s: stopping gracefully", signal.Signals(signum).name)
            stop.set()
            # Past this, cancel: run_agent's shielded cleanup still kills the process groups.
            scope.deadline = (
                trio.current_time()
                + config.terminate_grace_s
                + config.output_drain_s
                + SHUTDOWN_REPORT_S
                + 3
            )


def _given(flag: str, args: Sequence[str]) -> bool:
    return flag in args or any(arg.startswith(flag + "=") for arg in args)


def _make_parents(directory: Path) -> None:
    """Create the default state directory's missing parents, private (XDG: mode 0700)."""
    try:
        os.makedirs(directory.parent, mode=0o700, exist_ok=True)
    except OSError:
        pass  # Journal.open() says what is wrong with the directory itself


def _secret(given: Mapping[str, Any], environ: Mapping[str, str]) -> Secret:
    if "secret" in given and "secret_file" in given:
        raise ConfigError("give --secret or --secret-file, not both")
    if "secret" in given:
        return _secret_text(given["secret"], "--secret")
    if "secret_file" in given:
        return _read_secret_file(Path(given["secret_file"]))
    if environ.get("FLEET_AGENT_SECRET"):
        return _secret_text(environ["FLEET_AGENT_SECRET"], "FLEET_AGENT_SECRET")
    if environ.get("FLEET_AGENT_SECRET_FILE"):
        return _read_secret_file(Path(environ["FLEET_AGENT_SECRET_FILE"]))
    raise ConfigError("--secret-file or --secret (or FLEET_AGENT_SECRET[_FILE]) is required")


def _secret_text(text: str, where: str) -> Secret:
    if not text.strip():
        raise ConfigError(f"{where} is empty")
    return Secret(text.strip())


def _read_secret_file(path: Path) -> Secret:
    try:
        info = path.stat()
    except OSError as error:
        raise ConfigError(f"cannot read secret file {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"secret file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"secret file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read secret file {path}: {error}") from None
    return _secret_text(text, f"secret file {path}")


def _integer(name: str, value: Any) -> int:
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _number(name: str, value: Any) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")
