"""``fleet run``: run a command or a saved script on many VPSes and follow it live."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import (
    CommandTree,
    add_param_flag,
    concurrency,
    error_limit,
    parameters,
    seconds,
    split_list,
)
from .client import FleetClient, UsageError, select_targets
from .follow import follow_batch, interrupts

__all__ = ["add_commands", "cmd_run"]

RUN_EPILOG = """\
The command after -- runs through /bin/sh on every selected VPS (several words are joined with
spaces, as ssh does). Output is streamed live on stdout, each line prefixed by the VPS name:
"NAME | line" for stdout and "NAME ! line" for stderr. The batch id, the progress line (on a
terminal) and the final per-VPS summary go to stderr. Selectors add up: --target 1,web-2 --tag db
runs on VPS 1, web-2 and every VPS tagged db (tags are resolved by the server when the batch is
created, except with --online-only). Rollout: --max-concurrency 10 (or 10%) runs at most that
many at once, --max-errors 0 stops dispatching after the first error (the rest are SKIPPED),
--wait-for-agent 600 lets a target whose agent is offline wait up to 600 s for it. -p NAME=VALUE
passes a script parameter as the environment variable FLEET_PARAM_NAME. Ctrl-C once terminates
the batch and keeps watching until it is over; twice stops watching at once (`fleet batches
follow ID` attaches again).

exit codes: 0 every VPS succeeded; 1 at least one did not (failed, unreachable, rejected,
terminated, skipped); 2 usage error; 3 the server cannot be reached, refused the token, or failed;
130 stopped watching.
"""


def add_commands(tree: CommandTree) -> None:
    r = tree.leaf(
        tree.top, "run", cmd_run, "run a command or a saved script on many VPSes",
        epilog=RUN_EPILOG,
    )  # fmt: skip
    r.add_argument("--target", action="append", default=[], metavar="ID|NAME,…", help="these VPSes")
    r.add_argument("--tag", action="append", default=[], metavar="TAG,…", help="VPSes tagged so")
    r.add_argument("--all", action="store_true", help="every VPS")
    r.add_argument("--online-only", action="store_true", help="skip VPSes that are offline")
    r.add_argument("--script", metavar="NAME|ID", help="run a saved script")
    r.add_argument("--cwd", metavar="DIR", help="working directory on the VPSes")
    r.add_argument("--timeout", type=seconds, metavar="S", help="kill after S seconds")
    r.add_argument("--alias", metavar="A", help="a name for this batch")
    r.add_argument(
        "--max-concurrency", type=concurrency, metavar="N|N%", help="at most N running at once"
    )
    r.add_argument(
        "--max-errors", type=error_limit, metavar="N|N%", help="stop dispatching after N errors"
    )
    r.add_argument(
        "--wait-for-agent", type=seconds, metavar="S", help="wait S s for an offline agent"
    )
    add_param_flag(r, "a parameter, as the environment variable FLEET_PARAM_NAME")
    r.add_argument("--json", action="store_true", help="print the final batch as JSON")
    r.add_argument("--no-stream", action="store_true", help="do not show the output")
    r.add_argument("command", nargs="*", metavar="-- COMMAND", help="the shell command")


async def cmd_run(client: FleetClient, args: argparse.Namespace) -> int:
    command = " ".join(args.command)
    if args.script and command.strip():
        raise UsageError("give either a command after -- or --script, not both")
    if not args.script and not command.strip():
        raise UsageError("nothing to run: put the command after -- (or use --script NAME)")
    refs, tags = split_list(args.target), split_list(args.tag)
    if not (refs or tags or args.all):
        raise UsageError("choose where to run: --target ID|NAME,…, --tag TAG or --all")
    vpses = await client.call("GET", "/api/vps")
    params = parameters(args.param) if args.param else None
    chosen = select_targets(vpses, refs, tags, everything=args.all, online_only=args.online_only)
    body: dict[str, Any] = {"target_vps_ids": [v["id"] for v in chosen]}
    if tags and not args.online_only:
        # Tags are resolved by the server when it creates the batch.
        explicit = select_targets(vpses, refs, [], everything=args.all) if refs or args.all else []
        body = {"target_vps_ids": [v["id"] for v in explicit], "target_tags": tags}
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
        ("max_concurrency", args.max_concurrency),
        ("max_errors", args.max_errors),
        ("wait_for_agent_seconds", args.wait_for_agent),
        ("parameters", params),
    ):
        if value is not None:
            body[key] = value
    with interrupts() as signals:
        accepted = await client.call("POST", "/api/batch_commands", body)
        batch_id = str(accepted["batch_command_id"])
        names = ", ".join(v["name"] for v in chosen[:5])
        more = f" and {len(chosen) - 5} more" if len(chosen) > 5 else ""
        print(f"fleet: batch {batch_id}: {what} on {names}{more}", file=sys.stderr, flush=True)
        return await follow_batch(client, batch_id, args, signals, terminate=True)
