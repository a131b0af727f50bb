"""``fleet scripts``: manage saved scripts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .args import CommandTree
from .client import EXIT_OK, FleetClient, UsageError
from .console import print_json, scripts_table

__all__ = ["add_commands"]


def add_commands(tree: CommandTree) -> None:
    s = tree.group("scripts", "manage saved scripts")
    q = tree.leaf(s, "list", cmd_scripts_list, "list saved scripts")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(s, "show", cmd_scripts_show, "print a script's content (details with --json)")
    q.add_argument("script", metavar="ID|NAME")
    q.add_argument("--json", action="store_true")
    for name, func, what in (("add", cmd_scripts_add, "save a script"), ("edit", cmd_scripts_edit,
                             "change a script")):  # fmt: skip
        q = tree.leaf(s, name, func, what)
        if name == "add":
            q.add_argument("name")
        else:
            q.add_argument("script", metavar="ID|NAME")
            q.add_argument("--name", help="rename it")
        content = q.add_mutually_exclusive_group(required=name == "add")
        content.add_argument("--file", metavar="F", help="read the content from F (- for stdin)")
        content.add_argument("--content", metavar="C", help="the content itself")
        q.add_argument("--description", metavar="D")
        q.add_argument(
            "--params-file",
            metavar="F",
            help="declared parameters: a JSON list of {name, description, required, default, "
            "pattern, secret}",
        )
    q = tree.leaf(s, "rm", cmd_scripts_rm, "delete a saved script")
    q.add_argument("script", metavar="ID|NAME")


def _content(args: argparse.Namespace) -> str | None:
    if args.content is not None:
        return str(args.content)
    if args.file is None:
        return None
    try:
        return sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from exc


def _declared(args: argparse.Namespace) -> list[Any] | None:
    if args.params_file is None:
        return None
    try:
        text = sys.stdin.read() if args.params_file == "-" else Path(args.params_file).read_text()
        value = json.loads(text)
    except (OSError, UnicodeError, ValueError) as exc:
        raise UsageError(f"cannot read {args.params_file}: {exc}") from exc
    if not isinstance(value, list):
        raise UsageError(f"{args.params_file}: expected a JSON list of parameters")
    return value


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
    body: dict[str, Any] = {
        "name": args.name,
        "description": args.description or "",
        "content": _content(args),
    }
    if (declared := _declared(args)) is not None:
        body["parameters"] = declared
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
    if (declared := _declared(args)) is not None:
        body["parameters"] = declared
    updated = await client.call("PUT", f"/api/scripts/{script['id']}", body)
    print(f"Updated script {updated['id']} {updated['name']!r}.")
    return EXIT_OK


async def cmd_scripts_rm(client: FleetClient, args: argparse.Namespace) -> int:
    script = await client.find_script(args.script)
    await client.call("DELETE", f"/api/scripts/{script['id']}")
    print(f"Deleted script {script['id']} {script['name']!r}.")
    return EXIT_OK
