"""The ``fleet`` commands. Each ``cmd_*`` takes the client and the parsed flags and returns the
exit code; ``fleet.cli`` parses the flags and runs it in ``trio.run``.

A command that cannot go on raises a ``ClientError``, which ``fleet.cli.main`` prints as one line.
What the commands print is shaped in ``fleet.console``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio

from .client import ClientError, FleetClient, UsageError, batch_path, select_targets
from .console import (
    LiveOutput,
    Progress,
    batches_table,
    isatty,
    print_agent_setup,
    print_batch,
    print_error,
    print_json,
    print_outcome,
    scripts_table,
    use_colour,
    vps_table,
)
from .watch import BatchWatch, fill_gaps, follow

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "cmd_batches_follow",
    "cmd_batches_list",
    "cmd_batches_logs",
    "cmd_batches_show",
    "cmd_batches_terminate",
    "cmd_run",
    "cmd_scripts_add",
    "cmd_scripts_edit",
    "cmd_scripts_list",
    "cmd_scripts_rm",
    "cmd_scripts_show",
    "cmd_vps_add",
    "cmd_vps_list",
    "cmd_vps_rm",
    "cmd_vps_rotate",
]

EXIT_OK = 0
EXIT_FAILED = 1  # fleet run: at least one VPS did not succeed
EXIT_USAGE = 2  # bad flags or settings, or a request the server refused as invalid (4xx)
EXIT_SERVER = 3  # cannot reach the server, token refused, or a server error
EXIT_INTERRUPTED = 130

TERMINATE_TIMEOUT_S = 10  # Ctrl-C's terminate request, which even a second Ctrl-C waits for


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
    with interrupts() as signals:
        accepted = await client.call("POST", "/api/batch_commands", body)
        batch_id = str(accepted["batch_command_id"])
        names = ", ".join(v["name"] for v in chosen[:5])
        more = f" and {len(chosen) - 5} more" if len(chosen) > 5 else ""
        print(f"fleet: batch {batch_id}: {what} on {names}{more}", file=sys.stderr, flush=True)
        return await _follow_batch(client, batch_id, args, signals, terminate=True)


async def cmd_batches_follow(client: FleetClient, args: argparse.Namespace) -> int:
    with interrupts() as signals:
        return await _follow_batch(client, args.batch, args, signals, terminate=False)


async def _follow_batch(
    client: FleetClient,
    batch_id: str,
    args: argparse.Namespace,
    signals: AsyncIterator[int] | None,
    *,
    terminate: bool,
) -> int:
    """Stream the batch until it is final, then print its outcome; ``fleet run``'s exit code."""
    err = sys.stderr
    watch = BatchWatch(batch_id, output=not (args.json or args.no_stream))
    progress = Progress(err, enabled=isatty(err))
    live = LiveOutput(watch, sys.stdout, progress, show=watch.output)
    if await _watch(client, watch, live, progress, signals, terminate=terminate):
        progress.clear()
        going = "goes on terminating" if terminate else "goes on"
        print_error(f"stopped watching; the batch {going} (fleet batches follow {batch_id})")
        return EXIT_INTERRUPTED
    final = await client.call("GET", batch_path(batch_id))
    live(await fill_gaps(client, watch, watch.on_snapshot(final)))  # anything the feed missed
    live.flush_all()
    progress.clear()
    succeeded = final.get("overall_status") == "COMPLETED_SUCCESSFULLY" and all(
        c.status == "SUCCESS" for c in watch.children.values()
    )
    if args.json:
        print(json.dumps(final, indent=2), flush=True)
    else:
        print_outcome(final, watch, err)
    return EXIT_OK if succeeded else EXIT_FAILED


async def _watch(
    client: FleetClient,
    watch: BatchWatch,
    live: LiveOutput,
    progress: Progress,
    signals: AsyncIterator[int] | None,
    *,
    terminate: bool,
) -> bool:
    """Follow the batch until it is final; True when the user stopped watching.

    With ``terminate``, the first Ctrl-C terminates the batch and the second stops watching;
    without, the first stops watching.
    """
    presses = 0
    path = batch_path(watch.batch_id, "terminate")

    async def send_terminate() -> None:
        # Shielded: a second Ctrl-C right after the first must not cancel the request.
        with trio.move_on_after(TERMINATE_TIMEOUT_S, shield=True):
            try:
                await client.call("POST", path)
            except ClientError as exc:
                print_error(f"could not terminate the batch: {exc}")

    async def on_interrupt(nursery: trio.Nursery) -> None:
        nonlocal presses
        if signals is None:
            return
        async for _ in signals:
            presses += 1
            progress.clear()
            if presses > 1 or not terminate:
                nursery.cancel_scope.cancel(reason="Ctrl-C")
                return
            print_error("terminating the batch... (Ctrl-C again to stop watching)")
            nursery.start_soon(send_terminate)

    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_interrupt, nursery)
        nursery.start_soon(progress.tick, watch)
        try:
            await follow(client, watch, live)
        except Exception as exc:  # re-raised below, outside the nursery: no exception group
            error = exc
        nursery.cancel_scope.cancel(reason="the batch is over")
    if error is not None:
        raise error
    return presses > int(terminate)


# --- fleet vps -------------------------------------------------------------------------------


async def cmd_vps_add(client: FleetClient, args: argparse.Namespace) -> int:
    tags = [t.strip() for ts in args.tag for t in ts.split(",") if t.strip()]
    vps = await client.call("POST", "/api/vps", {"name": args.name, "tags": tags})
    if args.json:
        print_json(vps)
        return EXIT_OK
    tagged = f" (tags: {', '.join(vps['tags'])})" if vps["tags"] else ""
    print(f"Added VPS {vps['id']} {vps['name']!r}{tagged}.")
    print_agent_setup(vps["agent_secret"], vps["agent_command"], vps.get("agent_install"))
    return EXIT_OK


async def cmd_vps_list(client: FleetClient, args: argparse.Namespace) -> int:
    vpses = await client.call("GET", "/api/vps")
    if args.json:
        print_json(vpses)
        return EXIT_OK
    if not vpses:
        print("No VPS yet: add one with `fleet vps add NAME`.", file=sys.stderr)
        return EXIT_OK
    print(vps_table(vpses, paint=use_colour(sys.stdout)))
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
        print_json(answer)
        return EXIT_OK
    print(f"New agent secret for VPS {vps['id']} {vps['name']!r}; the old one no longer works.")
    print_agent_setup(answer["agent_secret"], answer["agent_command"], answer.get("agent_install"))
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
        print_json(scripts)
    elif not scripts:
        print(
            "No saved script yet: add one with `fleet scripts add NAME --file F`.", file=sys.stderr
        )
    else:
        print(scripts_table(scripts))
    return EXIT_OK


async def cmd_scripts_show(client: FleetClient, args: argparse.Namespace) -> int:
    script = await client.find_script(args.script)
    if args.json:
        print_json(script)
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


async def cmd_batches_list(client: FleetClient, args: argparse.Namespace) -> int:
    query = {"limit": max(args.limit, 1), "offset": args.offset}
    page = await client.call("GET", "/api/batch_commands", query=query)
    if args.json:
        print_json(page)
        return EXIT_OK
    items = page.get("items", [])
    if not items:
        print("No batch yet.", file=sys.stderr)
        return EXIT_OK
    print(batches_table(items))
    total = page.get("total", len(items))
    if total > len(items):
        first = args.offset + 1
        print(f"({first}-{args.offset + len(items)} of {total}; see --offset)", file=sys.stderr)
    return EXIT_OK


async def _batch(client: FleetClient, batch_id: str) -> dict[str, Any]:
    batch: dict[str, Any] = await client.call("GET", batch_path(batch_id))
    return batch


async def cmd_batches_show(client: FleetClient, args: argparse.Namespace) -> int:
    batch = await _batch(client, args.batch)
    if args.json:
        print_json(batch)
        return EXIT_OK
    print_batch(batch)
    return EXIT_OK


def _task(batch: dict[str, Any], ref: str) -> dict[str, Any]:
    for task in batch.get("tasks", []):
        if ref in (task["child_command_id"], task["vps_name"], str(task["vps_id"])):
            return dict(task)
    raise UsageError(f"batch {batch['batch_command_id']} has no task for {ref!r}")


async def cmd_batches_terminate(client: FleetClient, args: argparse.Namespace) -> int:
    if args.child is None:
        answer = await client.call("POST", batch_path(args.batch, "terminate"))
        print(f"Batch {args.batch}: {answer.get('overall_status')}")
        return EXIT_OK
    task = _task(await _batch(client, args.batch), args.child)
    child = task["child_command_id"]
    path = batch_path(args.batch, "tasks", child, "terminate")
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
