"""``fleet batches``: list, inspect, follow and terminate batches; fetch their logs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fleet.core import STREAMS

from .args import CommandTree, add_param_flag, count, parameters
from .client import EXIT_OK, FleetClient, UsageError, batch_path
from .console import batches_table, print_batch, print_json
from .follow import follow_batch, interrupts

__all__ = ["add_commands"]


def add_commands(tree: CommandTree) -> None:
    b = tree.group("batches", "list, inspect and terminate batches; fetch their logs")
    q = tree.leaf(b, "list", cmd_batches_list, "list batches, newest first")
    q.add_argument("--limit", type=count, default=20, metavar="N")
    q.add_argument("--offset", type=count, default=0, metavar="N")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(b, "show", cmd_batches_show, "show a batch and each VPS's outcome")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(b, "follow", cmd_batches_follow, "stream a batch's output until it is over")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--json", action="store_true", help="print the final batch as JSON")
    q.add_argument("--no-stream", action="store_true", help="do not show the output")
    q = tree.leaf(b, "terminate", cmd_batches_terminate, "terminate a batch (or one VPS's task)")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--child", metavar="CHILD", help="a task id, or the VPS's name or id")
    q = tree.leaf(
        b, "rerun", cmd_batches_rerun, "run a finished batch again where it did not succeed"
    )
    q.add_argument("batch", metavar="ID")
    q.add_argument("--all", action="store_true", help="on every VPS of the batch")
    add_param_flag(q, "a secret parameter's value (secrets are not kept)")
    q.add_argument("--json", action="store_true", help="print the final batch as JSON")
    q.add_argument("--no-stream", action="store_true", help="do not show the output")
    q = tree.leaf(b, "logs", cmd_batches_logs, "write the full logs, byte-exact, to stdout")
    q.add_argument("batch", metavar="ID")
    q.add_argument("--vps", metavar="NAME|ID", help="one VPS (or task id) only")
    q.add_argument("--stream", choices=STREAMS, default="stdout")


async def cmd_batches_follow(client: FleetClient, args: argparse.Namespace) -> int:
    with interrupts() as signals:
        return await follow_batch(client, args.batch, args, signals, terminate=False)


async def cmd_batches_rerun(client: FleetClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"only": "all" if args.all else "not_succeeded"}
    if args.param:
        body["parameters"] = parameters(args.param)
    with interrupts() as signals:
        accepted = await client.call("POST", batch_path(args.batch, "rerun"), body)
        batch_id = str(accepted["batch_command_id"])
        print(f"fleet: batch {batch_id}: re-run of {args.batch}", file=sys.stderr, flush=True)
        return await follow_batch(client, batch_id, args, signals, terminate=True)


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
