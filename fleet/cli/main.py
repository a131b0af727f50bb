"""``fleet``: run commands on your VPSes and manage Fleet from a terminal or a script.

``main`` parses the flags and runs the command in ``trio.run``. The package, lowest first:
``client`` (REST calls, the error tree, exit codes), ``watch`` (one batch's live feed),
``console`` (what is printed), ``settings`` and ``args`` (flags), ``follow`` (watching a batch to
its end), then one module per command group: ``run``, ``vps``, ``scripts``, ``batches``,
``accounts`` (login, users, tokens, audit). None of
them imports ``fleet.server``: the CLI ships in the light base install.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import trio

import fleet

from . import accounts, batches, run, scripts, vps
from .args import FORMATTER, CommandTree
from .client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SERVER, EXIT_USAGE, ClientError, FleetClient
from .console import print_error
from .settings import settings_from, tls_context

__all__ = ["main"]

EPILOG = """\
settings: --url / FLEET_URL is the server (http://HOST:PORT, as printed by fleet-server);
  --token / FLEET_TOKEN, or --token-file / FLEET_TOKEN_FILE, is the API token (the server keeps
  the admin's in <data-dir>/admin.token); without one, the token `fleet login` stored for that
  server ($XDG_CONFIG_HOME/fleet/credentials.json, mode 0600). Flags win over the environment.

exit codes:
  0    success (fleet run: every VPS succeeded)
  1    fleet run: at least one VPS did not succeed (failed, unreachable, rejected, terminated)
  2    usage error: bad flags, missing URL/token, unknown name, or a request the server refused
  3    the server cannot be reached, refused the token, or failed
  130  interrupted (Ctrl-C)
"""


def parser() -> argparse.ArgumentParser:
    """``fleet``'s flags: the settings (also accepted after any command) and the command tree."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--url", help="the Fleet server (FLEET_URL)")
    common.add_argument("--token", help="the API token (FLEET_TOKEN)")
    common.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    common.add_argument("--ca-file", metavar="PEM", help="trust this CA for https (FLEET_CA_FILE)")
    p = argparse.ArgumentParser(
        prog="fleet",
        description="Run a command on many VPSes at once, and manage Fleet.",
        epilog=EPILOG,
        formatter_class=FORMATTER,
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"fleet {fleet.__version__}")
    tree = CommandTree(p, common)
    for group in (run, vps, scripts, batches, accounts):
        group.add_commands(tree)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fleet``; returns the exit code (see ``EPILOG``)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):  # output may hold any text; never crash on it
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    client: FleetClient | None = None
    try:
        need_token = getattr(args, "need_token", True)
        settings = settings_from(args, dict(os.environ), need_token=need_token)
        client = FleetClient(settings.url, settings.token, ssl_context=tls_context(settings))
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
