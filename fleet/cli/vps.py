"""``fleet vps``: add, list and remove VPSes; rotate their agent secrets."""

from __future__ import annotations

import argparse
import sys

from .args import CommandTree, split_list
from .client import EXIT_OK, FleetClient
from .console import print_agent_setup, print_json, use_colour, vps_table

__all__ = ["add_commands"]


def add_commands(tree: CommandTree) -> None:
    v = tree.group("vps", "add, list, remove VPSes and rotate their agent secrets")
    q = tree.leaf(v, "add", cmd_vps_add, "register a VPS; prints the agent command line")
    q.add_argument("name")
    q.add_argument("--tag", action="append", default=[], metavar="TAG")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(v, "list", cmd_vps_list, "list VPSes")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(v, "rm", cmd_vps_rm, "remove a VPS")
    q.add_argument("vps", metavar="ID|NAME")
    q = tree.leaf(
        v, "rotate-secret", cmd_vps_rotate, "issue a new agent secret (the old one stops)"
    )
    q.add_argument("vps", metavar="ID|NAME")
    q.add_argument("--json", action="store_true")


async def cmd_vps_add(client: FleetClient, args: argparse.Namespace) -> int:
    vps = await client.call("POST", "/api/vps", {"name": args.name, "tags": split_list(args.tag)})
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
