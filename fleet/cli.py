"""``fleet``: run commands on your VPSes and manage Fleet from a terminal or a script.

Here are ``main``, the settings (flags and ``FLEET_*`` variables) and the argument parser, which
dispatches to ``fleet.commands``. The REST client is ``fleet.client``, the live feed
``fleet.watch``, the printing ``fleet.console``. None of them imports ``fleet.server``: the CLI
ships in the light base install.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import fleet

from .client import STREAMS, ClientError, FleetClient, UsageError
from .commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_USAGE,
    cmd_batches_follow,
    cmd_batches_list,
    cmd_batches_logs,
    cmd_batches_show,
    cmd_batches_terminate,
    cmd_run,
    cmd_scripts_add,
    cmd_scripts_edit,
    cmd_scripts_list,
    cmd_scripts_rm,
    cmd_scripts_show,
    cmd_vps_add,
    cmd_vps_list,
    cmd_vps_rm,
    cmd_vps_rotate,
)
from .console import print_error

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SERVER", "EXIT_USAGE", "main"]

EPILOG = """\
settings: --url / FLEET_URL is the server (http://HOST:PORT, as printed by fleet-server);
  --token / FLEET_TOKEN, or --token-file / FLEET_TOKEN_FILE, is the API token (the server keeps
  it in <data-dir>/admin.token). Flags win over the environment.

exit codes:
  0    success (fleet run: every VPS succeeded)
  1    fleet run: at least one VPS did not succeed (failed, unreachable, rejected, terminated)
  2    usage error: bad flags, missing URL/token, unknown name, or a request the server refused
  3    the server cannot be reached, refused the token, or failed
  130  interrupted (Ctrl-C)
"""

RUN_EPILOG = """\
The command after -- runs through /bin/sh on every selected VPS (several words are joined with
spaces, as ssh does). Output is streamed live on stdout, each line prefixed by the VPS name:
"NAME | line" for stdout and "NAME ! line" for stderr. The batch id, the progress line (on a
terminal) and the final per-VPS summary go to stderr. Selectors add up: --target 1,web-2 --tag db
runs on VPS 1, web-2 and every VPS tagged db. Ctrl-C once terminates the batch and keeps
watching until it is over; twice stops watching at once (`fleet batches follow ID` attaches
again).

exit codes: 0 every VPS succeeded; 1 at least one did not (failed, unreachable, rejected,
terminated); 2 usage error; 3 the server cannot be reached, refused the token, or failed;
130 stopped watching.
"""


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    ca_file: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"Settings(url={self.url!r}, token='***')"


# --- settings --------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Server URL and token: flag > ``FLEET_*`` variable > a ``?token=`` in the URL.

    Raises:
        UsageError: saying which flag or variable to set.
    """
    url = getattr(args, "url", None) or environ.get("FLEET_URL", "")
    if not url:
        raise UsageError("no server URL: pass --url URL or set FLEET_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the server URL must look like http://HOST:PORT, not {url!r}")
    token = getattr(args, "token", None)
    if not token and getattr(args, "token_file", None):
        token = _read_token(args.token_file, "--token-file")
    if not token:
        token = environ.get("FLEET_TOKEN")
    if not token and environ.get("FLEET_TOKEN_FILE"):
        token = _read_token(environ["FLEET_TOKEN_FILE"], "FLEET_TOKEN_FILE")
    if not token:  # the login URL fleet-server prints carries the token
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
    if not token:
        raise UsageError(
            "no API token: pass --token TOKEN or --token-file FILE, or set FLEET_TOKEN "
            "(the server keeps it in <data-dir>/admin.token)"
        )
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    ca_file = getattr(args, "ca_file", None) or environ.get("FLEET_CA_FILE") or None
    return Settings(base, token, ca_file)


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use the CA file {settings.ca_file}: {exc}") from exc


def _read_token(path: str, where: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot read the token file {path} ({where}): {exc}") from exc
    if not token:
        raise UsageError(f"the token file {path} ({where}) is empty")
    return token


# --- the parser ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--url", help="the Fleet server (FLEET_URL)")
    common.add_argument("--token", help="the API token (FLEET_TOKEN)")
    common.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    common.add_argument("--ca-file", metavar="PEM", help="trust this CA for https (FLEET_CA_FILE)")
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="fleet",
        description="Run a command on many VPSes at once, and manage Fleet.",
        epilog=EPILOG,
        formatter_class=fmt,
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"fleet {fleet.__version__}")
    sub = p.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def leaf(
        parent: Any, name: str, func: Callable[..., Awaitable[int]], help: str, **kw: Any
    ) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, parents=[common], formatter_class=fmt, **kw
        )
        q.set_defaults(func=func)
        return q

    def group(name: str, help: str) -> Any:
        q = sub.add_parser(name, help=help, description=help)
        return q.add_subparsers(dest="action", metavar="ACTION", required=True)

    r = leaf(
        sub, "run", cmd_run, "run a command or a saved script on many VPSes", epilog=RUN_EPILOG
    )
    r.add_argument("--target", action="append", default=[], metavar="ID|NAME,…", help="these VPSes")
    r.add_argument("--tag", action="append", default=[], metavar="TAG,…", help="VPSes tagged so")
    r.add_argument("--all", action="store_true", help="every VPS")
    r.add_argument("--online-only", action="store_true", help="skip VPSes that are offline")
    r.add_argument("--script", metavar="NAME|ID", help="run a saved script")
    r.add_argument("--cwd", metavar="DIR", help="working directory on the VPSes")
    r.add_argument("--timeout", type=_seconds, metavar="S", help="kill after S seconds")
    r.add_argument("--alias", metavar="A", help="a name for this batch")
    r.add_argument("--json", action="store_true", help="print the final batch as JSON")
    r.add_argument("--no-stream", action="store_true", help="do not show the output")
    r.add_argument("command", nargs="*", metavar="-- COMMAND", help="the shell command")

    v = group("vps", "add, list, remove VPSes and rotate their agent secrets")
    q = leaf(v, "add", cmd_vps_add, "register a VPS; prints the agent command line")
    q.add_argument("name")
    q.add_argument("--tag", action="append", default=[], metavar="TAG")
    q.add_argument("--json", action="store_true")
    q = leaf(v, "list", cmd_vps_list, "list VPSes")
    q.add_argument("--json", action="store_true")
    q = leaf(v, "rm", cmd_vps_rm, "remove a VPS")
    q.add_argument("vps", metavar="ID|NAME")
    q = leaf(v, "rotate-secret", cmd_vps_rotate, "issue a new agent secret (the old one stops)")
    q.add_argument("vps", metavar="ID|NAME")
    q.add_argument("--json", action="store_true")

    s = group("scripts", "manage saved scripts")
    q = leaf(s, "list", cmd_scripts_list, "list saved scripts")
    q.add_argument("--json", action="store_true")
    q = leaf(s, "show", cmd_scripts_show, "print a script's content (details with --json)")
    q.add_argument("script", metavar="ID|NAME")
    q.add_argument("--json", action="store_true")
    for name, func, what in (("add", cmd_scripts_add, "save a script"), ("edit", cmd_scripts_edit,
                             "change a script")):  # fmt: skip
        q = leaf(s, name, func, what)
        if name == "add":
            q.add_argument("name")
        else:
            q.add_argument("script", metavar="ID|NAME")
            q.add_argument("--name", help="rename it")
        content = q.add_mutually_exclusive_group(required=name == "add")
        content.add_argument("--file", metavar="F", help="read the content from F (- for stdin)")
        content.add_argument("--content", metavar="C", help="the content itself")
        q.add_argument("--description", metavar="D")
    q = leaf(s, "rm", cmd_scripts_rm, "delete a saved script")
    q.add_argument("script", metavar="ID|NAME")

    b = group("batches", "list, inspect and terminate batches; fetch their logs")
    q = leaf(b, "list", cmd_batches_list, "list batches, newest first")
    q.add_argument("--limit", type=_count, default=20, metavar="N")
    q.add_argument("--offset", type=_count, default=0, metavar="N")
    q.add_argument("--json", action="store_true")
    q = leaf(b, "show", cmd_batches_show, "show a batch and each VPS's outcome")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--json", action="store_true")
    q = leaf(b, "follow", cmd_batches_follow, "stream a batch's output until it is over")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--json", action="store_true", help="print the final batch as JSON")
    q.add_argument("--no-stream", action="store_true", help="do not show the output")
    q = leaf(b, "terminate", cmd_batches_terminate, "terminate a batch (or one VPS's task)")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--child", metavar="CHILD", help="a task id, or the VPS's name or id")
    q = leaf(b, "logs", cmd_batches_logs, "write the full logs, byte-exact, to stdout")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--vps", metavar="NAME|ID", help="one VPS (or task id) only")
    q.add_argument("--stream", choices=STREAMS, default="stdout")
    return p


def _seconds(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a whole number of seconds (0 = no limit)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a whole number")
    return int(text)


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fleet``; returns the exit code (see ``EPILOG``)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):  # output may hold any text; never crash on it
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    client: FleetClient | None = None
    try:
        settings = settings_from(args, dict(os.environ))
        client = FleetClient(settings.url, settings.token, ssl_context=_tls(settings))
        code: int = trio.run(args.func, client, args)
        return code
    except ClientError as exc:
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `fleet … | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line (FLEET_DEBUG=1 shows the traceback)
        if os.environ.get("FLEET_DEBUG"):
            raise
        print_error(f"unexpected error: {type(exc).__name__}: {exc} (FLEET_DEBUG=1 shows more)")
        return EXIT_SERVER
    finally:
        if client is not None:
            client.close()
