"""``fleet login`` / ``logout``, ``fleet users …``, ``fleet tokens …``, ``fleet audit``.

``fleet login`` signs in with a username and password (asked on the terminal, or one line on
stdin with ``--password-stdin``), makes a personal API token for this machine with that session,
ends the session, and stores the token for the server (``settings.store_token``: 0600). Later
commands use it when no other token is given. ``fleet logout`` revokes it and forgets it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import urllib.parse
from http.cookies import SimpleCookie
from typing import Any

import trio

from .args import CommandTree, split_list
from .client import EXIT_OK, ApiError, FleetClient, TokenRefused, UsageError, check
from .console import print_json, table
from .settings import forget_token, store_token

__all__ = ["add_commands"]

ROLES = ("viewer", "operator", "admin")
ACTIONS = (
    "login", "login_failed", "logout", "batch.create", "batch.terminate", "child.terminate",
    "batch.rerun", "script.create", "script.update", "script.delete", "vps.create", "vps.delete",
    "vps.rotate_secret", "user.create", "user.update", "user.delete", "token.create",
    "token.delete",
)  # fmt: skip


def add_commands(tree: CommandTree) -> None:
    q = tree.leaf(tree.top, "login", cmd_login, "log in; stores an API token for this server")
    q.add_argument("--username", "-u", help="your user name (asked when omitted)")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    q.add_argument("--expires", metavar="ISO-8601", help="when the stored token expires")
    q.set_defaults(need_token=False)
    q = tree.leaf(
        tree.top, "logout", cmd_logout, "revoke and forget the token `fleet login` stored"
    )
    q.set_defaults(need_token=False)

    u = tree.group("users", "manage users and their roles (admin)")
    q = tree.leaf(u, "list", cmd_users_list, "list users")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(u, "add", cmd_users_add, "create a user (the password is asked)")
    q.add_argument("username")
    q.add_argument("--role", choices=ROLES, default="viewer")
    q.add_argument("--tag", action="append", default=[], metavar="TAG", help="allowed tag")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    q = tree.leaf(u, "set", cmd_users_set, "change a user's role, tags or password")
    q.add_argument("username")
    q.add_argument("--role", choices=ROLES)
    q.add_argument("--tag", action="append", default=None, metavar="TAG", help="allowed tag")
    q.add_argument("--all-vpses", action="store_true", help="clear the allowed tags")
    q.add_argument("--password", action="store_true", help="set a new password (asked)")
    q.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    q = tree.leaf(u, "rm", cmd_users_rm, "delete a user (their sessions and tokens end)")
    q.add_argument("username")

    t = tree.group("tokens", "your personal API tokens (an admin: everyone's)")
    q = tree.leaf(t, "list", cmd_tokens_list, "list tokens")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(t, "create", cmd_tokens_create, "create a token (printed once)")
    q.add_argument("name")
    q.add_argument("--expires", metavar="ISO-8601", help="expiry, e.g. 2027-01-31T00:00:00Z")
    q.add_argument("--json", action="store_true")
    q = tree.leaf(t, "revoke", cmd_tokens_revoke, "revoke a token")
    q.add_argument("id", type=int)

    q = tree.leaf(tree.top, "audit", cmd_audit, "read the audit log, newest first (admin)")
    q.add_argument("--actor")
    q.add_argument("--action", choices=ACTIONS, metavar="ACTION")
    q.add_argument("--since", metavar="ISO-8601")
    q.add_argument("--until", metavar="ISO-8601")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")


async def ask_password(args: argparse.Namespace, prompt: str, *, confirm: bool = False) -> str:
    """One line of stdin (``--password-stdin``), or asked on the terminal without echo."""
    return await trio.to_thread.run_sync(_password, args, prompt, confirm)


def _password(args: argparse.Namespace, prompt: str, confirm: bool) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password on: use --password-stdin")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


# -- login / logout ------------------------------------------------------------------------------


async def cmd_login(client: FleetClient, args: argparse.Namespace) -> int:
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("pass --username NAME")
        username = (await trio.to_thread.run_sync(input, "username: ")).strip()
    password = await ask_password(args, f"password for {username}: ")
    answer = await client.request(
        "POST", "/api/login", body={"username": username, "password": password}
    )
    if answer.status == 401:
        raise TokenRefused("wrong username or password")
    check(answer)
    cookie = SimpleCookie(answer.headers.get("set-cookie", "")).get("fleet_session")
    if cookie is None:
        raise ApiError(answer.status, "no_session", "the server set no session cookie")
    me = json.loads(answer.body)
    # The session is the browser's way in; a machine keeps a token: make one, end the session.
    parts = urllib.parse.urlsplit(client.url)
    origin = f"{parts.scheme}://{parts.netloc}"  # the session's writes are checked for CSRF
    session = {"Cookie": f"fleet_session={cookie.value}", "Origin": origin}
    name = f"fleet login on {socket.gethostname()}"[:100]
    body: dict[str, Any] = {"name": name}
    if args.expires:
        body["expires_at"] = args.expires
    made = await client.request("POST", "/api/tokens", body=body, headers=session)
    try:
        check(made)
    finally:
        await client.request("POST", "/api/logout", body={}, headers=session)
    token = json.loads(made.body)
    entry = {"token": token["token"], "id": token["id"], "username": me["username"]}
    path = store_token(dict(os.environ), client.url, entry)
    tags = f", tags {', '.join(me['allowed_tags'])}" if me["allowed_tags"] else ""
    print(f"Logged in to {client.url} as {me['username']} ({me['role']}{tags}).")
    print(f"Token {token['id']} stored in {path}.")
    return EXIT_OK


async def cmd_logout(client: FleetClient, args: argparse.Namespace) -> int:
    entry = forget_token(dict(os.environ), client.url)
    if entry is None:
        print(f"Not logged in to {client.url} with `fleet login`.", file=sys.stderr)
        return EXIT_OK
    revoke = FleetClient(client.url, str(entry["token"]))
    try:
        await revoke.call("DELETE", f"/api/tokens/{entry['id']}")
    except (ApiError, TokenRefused):
        pass  # already revoked or expired: forgetting it is all that is left
    finally:
        revoke.close()
    print(f"Logged out of {client.url}: token {entry['id']} revoked and forgotten.")
    return EXIT_OK


# -- users ---------------------------------------------------------------------------------------


async def _find_user(client: FleetClient, username: str) -> dict[str, Any]:
    for user in await client.call("GET", "/api/users"):
        if user["username"] == username:
            return dict(user)
    raise UsageError(f"no user named {username!r}")


async def cmd_users_list(client: FleetClient, args: argparse.Namespace) -> int:
    users = await client.call("GET", "/api/users")
    if args.json:
        print_json(users)
        return EXIT_OK
    rows = [
        [str(u["id"]), u["username"], u["role"], ", ".join(u["allowed_tags"]) or "(every VPS)"]
        for u in users
    ]
    print(table(["ID", "USER", "ROLE", "ALLOWED TAGS"], rows))
    return EXIT_OK


async def cmd_users_add(client: FleetClient, args: argparse.Namespace) -> int:
    password = await ask_password(args, f"password for {args.username}: ", confirm=True)
    body = {
        "username": args.username,
        "password": password,
        "role": args.role,
        "allowed_tags": split_list(args.tag),
    }
    user = await client.call("POST", "/api/users", body)
    print(f"Created {user['username']} ({user['role']}).")
    return EXIT_OK


async def cmd_users_set(client: FleetClient, args: argparse.Namespace) -> int:
    user = await _find_user(client, args.username)
    body: dict[str, Any] = {}
    if args.role:
        body["role"] = args.role
    if args.all_vpses:
        body["allowed_tags"] = []
    elif args.tag is not None:
        body["allowed_tags"] = split_list(args.tag)
    if args.password or args.password_stdin:
        prompt = f"new password for {args.username}: "
        body["password"] = await ask_password(args, prompt, confirm=True)
    if not body:
        raise UsageError("nothing to change: give --role, --tag, --all-vpses or --password")
    changed = await client.call("PUT", f"/api/users/{user['id']}", body)
    tags = ", ".join(changed["allowed_tags"]) or "every VPS"
    print(f"{changed['username']}: {changed['role']}, {tags}.")
    return EXIT_OK


async def cmd_users_rm(client: FleetClient, args: argparse.Namespace) -> int:
    user = await _find_user(client, args.username)
    await client.call("DELETE", f"/api/users/{user['id']}")
    print(f"Deleted {user['username']}.")
    return EXIT_OK


# -- tokens --------------------------------------------------------------------------------------


async def cmd_tokens_list(client: FleetClient, args: argparse.Namespace) -> int:
    tokens = await client.call("GET", "/api/tokens")
    if args.json:
        print_json(tokens)
        return EXIT_OK
    rows = [
        [str(t["id"]), t["name"], t["owner"], t["created_at"] or "", t["expires_at"] or "never"]
        for t in tokens
    ]
    print(table(["ID", "NAME", "OWNER", "CREATED", "EXPIRES"], rows))
    return EXIT_OK


async def cmd_tokens_create(client: FleetClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.expires:
        body["expires_at"] = args.expires
    token = await client.call("POST", "/api/tokens", body)
    if args.json:
        print_json(token)
        return EXIT_OK
    print(token["token"])
    print(f"Token {token['id']} {token['name']!r}: shown once, keep it safe.", file=sys.stderr)
    return EXIT_OK


async def cmd_tokens_revoke(client: FleetClient, args: argparse.Namespace) -> int:
    await client.call("DELETE", f"/api/tokens/{args.id}")
    print(f"Token {args.id} revoked.")
    return EXIT_OK


# -- audit ---------------------------------------------------------------------------------------


async def cmd_audit(client: FleetClient, args: argparse.Namespace) -> int:
    query = {
        k: v
        for k, v in (
            ("actor", args.actor),
            ("action", args.action),
            ("since", args.since),
            ("until", args.until),
            ("limit", args.limit),
        )
        if v is not None
    }
    page = await client.call("GET", "/api/audit", query=query)
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = []
    for e in page["items"]:
        target = f"{e['target_type']} {e['target_id'] or ''}".strip() if e["target_type"] else ""
        details = "; ".join(f"{k}={v}" for k, v in e["details"].items() if v not in (None, ""))
        rows.append(
            [e["at"], e["actor"], e["action"], target, e["outcome"], e["source_ip"] or "",
             details[:80]]
        )  # fmt: skip
    print(table(["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "FROM", "DETAILS"], rows))
    return EXIT_OK
