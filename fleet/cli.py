"""``fleet``: run commands on your VPSes and manage Fleet from a terminal or a script.

The commands, their flags and their printing live here; the REST/WebSocket client is
``fleet.client``. Nothing here imports ``fleet.server``: the CLI ships in the light base install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import trio

import fleet

from .client import (
    STREAMS,
    BatchWatch,
    Chunk,
    ClientError,
    Ended,
    FleetClient,
    Gap,
    UsageError,
    WatchedChild,
    fill_gaps,
    follow,
    select_targets,
)

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SERVER", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # fleet run: at least one VPS did not succeed
EXIT_USAGE = 2  # bad flags or settings, or a request the server refused as invalid (4xx)
EXIT_SERVER = 3  # cannot reach the server, token refused, or a server error
EXIT_INTERRUPTED = 130

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
watching until it is over; twice stops watching at once.
"""


@dataclass(frozen=True)
class Settings:
    url: str
    token: str

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
    return Settings(base, token)


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
    r.add_argument("--target", action="append", default=[], metavar="ID|NAME,…")
    r.add_argument("--tag", action="append", default=[], metavar="TAG,…")
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
        client = FleetClient(settings.url, settings.token)
        code: int = trio.run(args.func, client, args)
        return code
    except ClientError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `fleet … | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if client is not None:
            client.close()


def _error(message: str) -> None:
    sys.stdout.flush()
    print(f"fleet: {message}", file=sys.stderr, flush=True)


# --- shared printing helpers (used by fleet._commands) ---------------------------------------


def colour(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text


def use_colour(stream: TextIO) -> bool:
    return "NO_COLOR" not in os.environ and _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """Rows in aligned columns (the last column is not padded)."""
    rows = [headers, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(start: str | None, end: str | None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return "-"
    seconds = max((b - a).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def ago(text: str | None) -> str:
    when = parse_time(text)
    if when is None:
        return "never"
    seconds = int((datetime.now(UTC) - when).total_seconds())
    if seconds < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return "just now"  # pragma: no cover - a clock ahead of the server's


STATUS_COLOUR = {"SUCCESS": "32", "COMPLETED_SUCCESSFULLY": "32", "TERMINATED": "33"}


def summary_table(children: Iterable[WatchedChild], *, paint: bool) -> str:
    rows = []
    for child in children:
        status = child.status.ljust(17)
        rows.append(
            [
                child.name,
                colour(status, STATUS_COLOUR.get(child.status, "31"), paint),
                "-" if child.exit_code is None else str(child.exit_code),
                duration(child.started_at, child.completed_at),
                (child.error_message or "").splitlines()[0] if child.error_message else "",
            ]
        )
    return table(["VPS", "STATUS".ljust(17), "EXIT", "TIME", "ERROR"], rows)


class Progress:
    """The one-line ``3/10 done · 2 failed · 5 running`` on a terminal's stderr, rewritten."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def draw(self, watch: BatchWatch, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        done, failed, running = watch.counts()
        total = len(watch.children)
        text = f"{done}/{total} done · {failed} failed · {running} running"
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


_PALETTE = ("36", "35", "34", "33", "32", "96", "95", "94", "93", "92")


class LiveOutput:
    """Prints chunks of output as whole lines, each prefixed by its VPS's name."""

    def __init__(self, watch: BatchWatch, out: TextIO, progress: Progress, *, show: bool) -> None:
        self._watch = watch
        self._out = out
        self._progress = progress
        self._show = show
        self._paint = use_colour(out)
        self._partial: dict[tuple[str, str], str] = {}
        self._prefix: dict[str, tuple[str, str]] = {}

    def _prefixes(self, child_id: str) -> tuple[str, str]:
        if child_id not in self._prefix:
            children = list(self._watch.children.values())
            width = min(max((len(c.name) for c in children), default=0), 24)
            for index, child in enumerate(children):
                name = colour(child.name.ljust(width), _PALETTE[index % len(_PALETTE)], self._paint)
                self._prefix[child.child_id] = (
                    f"{name} | ",
                    f"{name} {colour('!', '31', self._paint)} ",
                )
        return self._prefix[child_id]

    def __call__(self, items: Iterable[Chunk | Gap | Ended]) -> None:
        for item in items:
            if isinstance(item, Chunk) and self._show:
                self._chunk(item)
            elif isinstance(item, Ended):
                self._flush(item.child_id)
        self._out.flush()
        self._progress.draw(self._watch)

    def _chunk(self, chunk: Chunk) -> None:
        key = (chunk.child_id, chunk.stream)
        lines = (self._partial.pop(key, "") + chunk.text).split("\n")
        if lines[-1]:
            self._partial[key] = lines[-1]
        self._write(chunk.child_id, chunk.stream, lines[:-1])

    def _flush(self, child_id: str) -> None:
        for stream in STREAMS:
            rest = self._partial.pop((child_id, stream), "")
            if rest:
                self._write(child_id, stream, [rest])

    def flush_all(self) -> None:
        for child_id in list(self._watch.children):
            self._flush(child_id)
        self._out.flush()

    def _write(self, child_id: str, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        self._progress.clear()
        prefix = self._prefixes(child_id)[stream == "stderr"]
        self._out.write("".join(f"{prefix}{line}\n" for line in lines))


@contextlib.contextmanager
def interrupts() -> Iterator[AsyncIterator[int] | None]:
    """SIGINT as an async iterator while the block runs (``None`` off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    with trio.open_signal_receiver(signal.SIGINT) as receiver:
        yield receiver


# --- fleet run -------------------------------------------------------------------------------


async def cmd_run(client: FleetClient, args: argparse.Namespace) -> int:
    command = " ".join(args.command)
    if args.script and command.strip():
        raise UsageError("give either a command after -- or --script, not both")
    if not args.script and not command.strip():
        raise UsageError("nothing to run: put the command after -- (or use --script NAME)")
    refs = [r.strip() for t in args.target for r in t.split(",") if r.strip()]
    tags = [t.strip() for ts in args.tag for t in ts.split(",") if t.strip()]
    if not (refs or tags or args.all):
        raise UsageError("choose where to run: --target ID|NAME,…, --tag TAG or --all")
    vpses = await client.call("GET", "/api/vps")
    chosen = select_targets(vpses, refs, tags, everything=args.all, online_only=args.online_only)
    body: dict[str, Any] = {"target_vps_ids": [v["id"] for v in chosen]}
    if args.script:
        script = await client.find_script(args.script)
        body["script_id"] = script["id"]
        what = f"script {script['name']!r}"
    else:
        body["command_content"] = command
        what = repr(command if len(command) <= 60 else command[:57] + "...")
    for key, value in (
        ("working_directory", args.cwd),
        ("timeout_seconds", args.timeout),
        ("execution_alias", args.alias),
    ):
        if value is not None:
            body[key] = value
    err = sys.stderr
    with interrupts() as signals:
        accepted = await client.call("POST", "/api/batch_commands", body)
        batch_id = str(accepted["batch_command_id"])
        names = ", ".join(v["name"] for v in chosen[:5])
        more = f" and {len(chosen) - 5} more" if len(chosen) > 5 else ""
        print(f"fleet: batch {batch_id}: {what} on {names}{more}", file=err, flush=True)
        watch = BatchWatch(batch_id, output=not (args.json or args.no_stream))
        progress = Progress(err, enabled=_isatty(err))
        live = LiveOutput(watch, sys.stdout, progress, show=watch.output)
        stopped = await _watch(client, watch, live, progress, signals)
    if stopped:
        progress.clear()
        _error(f"stopped watching; the batch goes on terminating (fleet batches show {batch_id})")
        return EXIT_INTERRUPTED
    final = await client.call("GET", f"/api/batch_commands/{batch_id}")
    live(await fill_gaps(client, watch, watch.on_snapshot(final)))  # anything the feed missed
    live.flush_all()
    progress.clear()
    succeeded = final.get("overall_status") == "COMPLETED_SUCCESSFULLY" and all(
        c.status == "SUCCESS" for c in watch.children.values()
    )
    if args.json:
        print(json.dumps(final, indent=2), flush=True)
    else:
        _print_outcome(final, watch, err)
    return EXIT_OK if succeeded else EXIT_FAILED


async def _watch(
    client: FleetClient,
    watch: BatchWatch,
    live: LiveOutput,
    progress: Progress,
    signals: AsyncIterator[int] | None,
) -> bool:
    """Follow the batch until it is final; True when Ctrl-C was pressed twice (stop watching)."""
    presses = 0
    path = f"/api/batch_commands/{watch.batch_id}/terminate"

    async def terminate() -> None:
        try:
            await client.call("POST", path)
        except ClientError as exc:
            _error(f"could not terminate the batch: {exc}")

    async def on_interrupt(nursery: trio.Nursery) -> None:
        nonlocal presses
        if signals is None:
            return
        async for _ in signals:
            presses += 1
            progress.clear()
            if presses > 1:
                nursery.cancel_scope.cancel(reason="Ctrl-C pressed twice")
                return
            _error("terminating the batch... (Ctrl-C again to stop watching)")
            nursery.start_soon(terminate)

    error: ClientError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_interrupt, nursery)
        try:
            await follow(client, watch, live)
        except ClientError as exc:  # re-raised below: keeps it out of an exception group
            error = exc
        nursery.cancel_scope.cancel(reason="the batch is over")
    if error is not None:
        raise error
    return presses > 1


def _print_outcome(final: dict[str, Any], watch: BatchWatch, err: TextIO) -> None:
    paint = use_colour(err)
    err.write(summary_table(watch.children.values(), paint=paint) + "\n")
    done, failed, _ = watch.counts()
    status = str(final.get("overall_status"))
    status = colour(status, STATUS_COLOUR.get(status, "31"), paint)
    err.write(f"{status}: {done - failed} succeeded, {failed} did not ({watch.batch_id})\n")
    err.flush()


# --- fleet vps -------------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _print_agent_setup(vps_id: int, secret: str, agent_command: str) -> None:
    print(f"Agent secret (shown only this once): {secret}")
    print("On the VPS, store the secret in a root-only file and start the agent:")
    print(
        "  sudo install -d -m 700 /etc/fleet && printf '%s\\n' "
        f"{shlex.quote(secret)} | sudo install -m 600 /dev/stdin /etc/fleet/agent.secret"
    )
    print(f"  {agent_command}")


async def cmd_vps_add(client: FleetClient, args: argparse.Namespace) -> int:
    tags = [t.strip() for ts in args.tag for t in ts.split(",") if t.strip()]
    vps = await client.call("POST", "/api/vps", {"name": args.name, "tags": tags})
    if args.json:
        _print_json(vps)
        return EXIT_OK
    tagged = f" (tags: {', '.join(vps['tags'])})" if vps["tags"] else ""
    print(f"Added VPS {vps['id']} {vps['name']!r}{tagged}.")
    _print_agent_setup(vps["id"], vps["agent_secret"], vps["agent_command"])
    return EXIT_OK


async def cmd_vps_list(client: FleetClient, args: argparse.Namespace) -> int:
    vpses = await client.call("GET", "/api/vps")
    if args.json:
        _print_json(vpses)
        return EXIT_OK
    if not vpses:
        print("No VPS yet: add one with `fleet vps add NAME`.", file=sys.stderr)
        return EXIT_OK
    paint = use_colour(sys.stdout)
    rows = [
        [
            str(v["id"]),
            v["name"],
            ",".join(v.get("tags") or []) or "-",
            colour("yes", "32", paint) if v.get("online") else colour("no ", "31", paint),
            v.get("hostname") or "-",
            v.get("agent_version") or "-",
            "now" if v.get("online") else ago(v.get("last_seen_at")),
        ]
        for v in vpses
    ]
    print(table(["ID", "NAME", "TAGS", "ONLINE", "HOSTNAME", "AGENT", "LAST SEEN"], rows))
    return EXIT_OK


async def cmd_vps_rm(client: FleetClient, args: argparse.Namespace) -> int:
    vps = await client.find_vps(args.vps)
    await client.call("DELETE", f"/api/vps/{vps['id']}")
    print(f"Removed VPS {vps['id']} {vps['name']!r}.")
    return EXIT_OK


async def cmd_vps_rotate(client: FleetClient, args: argparse.Namespace) -> int:
    vps = await client.find_vps(args.vps)
    answer = await client.call("POST", f"/api/vps/{vps['id']}/rotate_secret")
    if args.json:
        _print_json(answer)
        return EXIT_OK
    print(f"New agent secret for VPS {vps['id']} {vps['name']!r}; the old one no longer works.")
    _print_agent_setup(vps["id"], answer["agent_secret"], answer["agent_command"])
    return EXIT_OK


# --- fleet scripts ---------------------------------------------------------------------------


def _content(args: argparse.Namespace) -> str | None:
    if args.content is not None:
        return str(args.content)
    if args.file is None:
        return None
    try:
        return sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from exc


async def cmd_scripts_list(client: FleetClient, args: argparse.Namespace) -> int:
    scripts = await client.call("GET", "/api/scripts")
    if args.json:
        _print_json(scripts)
    elif not scripts:
        print(
            "No saved script yet: add one with `fleet scripts add NAME --file F`.", file=sys.stderr
        )
    else:
        rows = [
            [str(s["id"]), s["name"], ago(s.get("updated_at")), (s.get("description") or "")[:60]]
            for s in scripts
        ]
        print(table(["ID", "NAME", "UPDATED", "DESCRIPTION"], rows))
    return EXIT_OK


async def cmd_scripts_show(client: FleetClient, args: argparse.Namespace) -> int:
    script = await client.find_script(args.script)
    if args.json:
        _print_json(script)
        return EXIT_OK
    # The content alone on stdout (so `> file` gives the script back); the rest on stderr.
    about = f" - {script['description']}" if script.get("description") else ""
    print(f"# script {script['id']} {script['name']!r}{about}", file=sys.stderr, flush=True)
    sys.stdout.write(
        script["content"] if script["content"].endswith("\n") else script["content"] + "\n"
    )
    return EXIT_OK


async def cmd_scripts_add(client: FleetClient, args: argparse.Namespace) -> int:
    body = {"name": args.name, "description": args.description or "", "content": _content(args)}
    script = await client.call("POST", "/api/scripts", body)
    print(f"Saved script {script['id']} {script['name']!r}.")
    return EXIT_OK


async def cmd_scripts_edit(client: FleetClient, args: argparse.Namespace) -> int:
    script = await client.find_script(args.script)
    content = _content(args)
    body = {
        "name": args.name if args.name is not None else script["name"],
        "description": (
            args.description if args.description is not None else script.get("description") or ""
        ),
        "content": content if content is not None else script["content"],
    }
    updated = await client.call("PUT", f"/api/scripts/{script['id']}", body)
    print(f"Updated script {updated['id']} {updated['name']!r}.")
    return EXIT_OK


async def cmd_scripts_rm(client: FleetClient, args: argparse.Namespace) -> int:
    script = await client.find_script(args.script)
    await client.call("DELETE", f"/api/scripts/{script['id']}")
    print(f"Deleted script {script['id']} {script['name']!r}.")
    return EXIT_OK


# --- fleet batches ---------------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "-"


def _what(batch: dict[str, Any]) -> str:
    text = batch.get("execution_alias") or (batch.get("command_content") or "").strip()
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= 50 and "\n" not in text else first[:47] + "..."


async def cmd_batches_list(client: FleetClient, args: argparse.Namespace) -> int:
    query = {"limit": max(args.limit, 1), "offset": args.offset}
    page = await client.call("GET", "/api/batch_commands", query=query)
    if args.json:
        _print_json(page)
        return EXIT_OK
    items = page.get("items", [])
    if not items:
        print("No batch yet.", file=sys.stderr)
        return EXIT_OK
    rows = [
        [
            b["batch_command_id"],
            b["overall_status"],
            str(b.get("target_count", "")),
            _counts(b.get("counts") or {}),
            ago(b.get("created_at")),
            _what(b),
        ]
        for b in items
    ]
    print(table(["ID", "STATUS", "VPS", "TASKS", "CREATED", "COMMAND"], rows))
    total = page.get("total", len(items))
    if total > len(items):
        first = args.offset + 1
        print(f"({first}-{args.offset + len(items)} of {total}; see --offset)", file=sys.stderr)
    return EXIT_OK


async def _batch(client: FleetClient, batch_id: str) -> dict[str, Any]:
    batch: dict[str, Any] = await client.call("GET", f"/api/batch_commands/{batch_id}")
    return batch


async def cmd_batches_show(client: FleetClient, args: argparse.Namespace) -> int:
    batch = await _batch(client, args.batch)
    if args.json:
        _print_json(batch)
        return EXIT_OK
    watch = BatchWatch(batch["batch_command_id"], output=False)
    watch.on_snapshot(batch)
    paint = use_colour(sys.stdout)
    status = batch["overall_status"]
    print(f"batch     {batch['batch_command_id']}")
    print(f"status    {colour(status, STATUS_COLOUR.get(status, '31'), paint)}")
    if batch.get("execution_alias"):
        print(f"alias     {batch['execution_alias']}")
    kind = "script" if batch.get("command_type") == "SAVED_SCRIPT" else "command"
    print(f"{kind:<9} {_what({'command_content': batch.get('command_content')})}")
    if batch.get("working_directory"):
        print(f"cwd       {batch['working_directory']}")
    print(f"created   {batch.get('created_at')}  ({ago(batch.get('created_at'))})")
    if batch.get("completed_at"):
        print(f"took      {duration(batch.get('created_at'), batch['completed_at'])}")
    print()
    print(summary_table(watch.children.values(), paint=paint))
    return EXIT_OK


def _task(batch: dict[str, Any], ref: str) -> dict[str, Any]:
    for task in batch.get("tasks", []):
        if ref in (task["child_command_id"], task["vps_name"], str(task["vps_id"])):
            return dict(task)
    raise UsageError(f"batch {batch['batch_command_id']} has no task for {ref!r}")


async def cmd_batches_terminate(client: FleetClient, args: argparse.Namespace) -> int:
    if args.child is None:
        answer = await client.call("POST", f"/api/batch_commands/{args.batch}/terminate")
        print(f"Batch {args.batch}: {answer.get('overall_status')}")
        return EXIT_OK
    task = _task(await _batch(client, args.batch), args.child)
    child = task["child_command_id"]
    path = f"/api/batch_commands/{args.batch}/tasks/{child}/terminate"
    answer = await client.call("POST", path)
    print(f"Task {child} on {task['vps_name']}: {answer.get('status')}")
    return EXIT_OK


async def cmd_batches_logs(client: FleetClient, args: argparse.Namespace) -> int:
    batch = await _batch(client, args.batch)
    tasks = [_task(batch, args.vps)] if args.vps else list(batch.get("tasks", []))
    out = sys.stdout
    out.flush()
    for task in tasks:
        data = await client.output(args.batch, task["child_command_id"], args.stream)
        if len(tasks) > 1:  # like tail(1) with several files; --vps gives the exact bytes
            out.buffer.write(f"==> {task['vps_name']} ({args.stream}) <==\n".encode())
            if data and not data.endswith(b"\n"):
                data += b"\n"
        out.buffer.write(data)
    out.buffer.flush()
    return EXIT_OK
