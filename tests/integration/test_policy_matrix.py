"""Every route × every role × in/out of scope, generated from the app's own route table.

The routes come from ``app.url_map``: a new route without a rule in ``policy.RULES`` fails
``test_every_route_has_a_rule``, and one without an example request here fails the matrix, so no
route can be added without deciding who may call it. For each route the matrix calls it as
nobody, as a viewer, an operator and an admin (unscoped), and as a viewer and an operator whose
``allowed_tags`` cover the ``web`` VPS but not the ``db`` one, on a resource in and out of that
scope, and checks the outcome against the rule.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, connect_websocket_url

from fleet.core import Role
from fleet.server.agents import hash_secret, new_secret
from fleet.server.http import policy
from fleet.server.http.app import create_app
from fleet.server.serve import Endpoints
from fleet.server.store import Store

from .conftest import add_vps

Request = tuple[str, str, Any]  # method, path, JSON body (or None)


@dataclass
class World:
    """Resources in (``web``) and out of (``db``) the scoped users' tags."""

    server: Endpoints
    admin: httpx.AsyncClient
    vps: dict[bool, int]
    batch: dict[bool, str]
    child: dict[bool, str]
    script: int
    counter: itertools.count[int]
    http: httpx.AsyncClient

    def name(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    async def new_vps(self, in_scope: bool) -> int:
        tags = ["web"] if in_scope else ["db"]
        return int((await add_vps(self.admin, self.name("v"), tags))["id"])

    async def new_script(self) -> int:
        body = {"name": self.name("s"), "content": "true"}
        return int((await self.admin.post("/api/scripts", json=body)).json()["id"])

    async def new_user(self) -> int:
        body = {"username": self.name("u"), "password": "x" * 12, "role": "viewer"}
        return int((await self.admin.post("/api/users", json=body)).json()["id"])


Example = Callable[[World, bool, "Caller"], Awaitable[Request]]


@dataclass(frozen=True)
class Caller:
    label: str
    role: Role | None  # None: no credentials
    scoped: bool = False
    token: str = ""


def _batch_path(suffix: str = "") -> Example:
    async def build(w: World, in_scope: bool, _c: Caller) -> Request:
        return "GET", f"/api/batch_commands/{w.batch[in_scope]}{suffix}", None

    return build


async def _own_token(w: World, _in: bool, caller: Caller) -> Request:
    # A token of the caller's own (any signed-in user may revoke their own).
    if caller.role is None:
        return "DELETE", "/api/tokens/1", None
    owner = await w.server.services.db.run(Store.token_user, hash_secret(caller.token), _now())
    assert owner is not None
    record = await w.server.services.db.run(
        Store.add_token, "spare", hash_secret(new_secret()), user_id=owner.id
    )
    return "DELETE", f"/api/tokens/{record.id}", None


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def _static(method: str, path: str, body: Any = None) -> Request:
    return method, path, body


#: One example request per route (method, Quart rule); ``in_scope`` picks the resource.
EXAMPLES: dict[tuple[str, str], Example] = {
    ("GET", "/"): lambda w, i, c: _static("GET", "/"),
    ("GET", "/ui/<path:name>"): lambda w, i, c: _static("GET", "/ui/app.js"),
    ("GET", "/favicon.ico"): lambda w, i, c: _static("GET", "/favicon.ico"),
    ("GET", "/api/openapi.json"): lambda w, i, c: _static("GET", "/api/openapi.json"),
    ("POST", "/api/login"): lambda w, i, c: _static(
        "POST", "/api/login", {"username": "viewer-all", "password": "p" * 12}
    ),
    ("POST", "/api/logout"): lambda w, i, c: _static("POST", "/api/logout", None),
    ("GET", "/api/me"): lambda w, i, c: _static("GET", "/api/me"),
    ("GET", "/api/tokens"): lambda w, i, c: _static("GET", "/api/tokens"),
    ("POST", "/api/tokens"): lambda w, i, c: _static("POST", "/api/tokens", {"name": "ci"}),
    ("DELETE", "/api/tokens/<token_id>"): _own_token,
    ("GET", "/api/users"): lambda w, i, c: _static("GET", "/api/users"),
    ("POST", "/api/users"): lambda w, i, c: _static(
        "POST", "/api/users", {"username": w.name("n"), "password": "y" * 12, "role": "viewer"}
    ),
    ("GET", "/api/users/<user_id>"): lambda w, i, c: _static("GET", "/api/users/1"),
    ("PUT", "/api/users/<user_id>"): lambda w, i, c: _user_change(w, "PUT"),
    ("DELETE", "/api/users/<user_id>"): lambda w, i, c: _user_change(w, "DELETE"),
    ("GET", "/api/audit"): lambda w, i, c: _static("GET", "/api/audit?limit=5"),
    ("GET", "/api/vps"): lambda w, i, c: _static("GET", "/api/vps"),
    ("POST", "/api/vps"): lambda w, i, c: _static(
        "POST", "/api/vps", {"name": w.name("nv"), "tags": ["web" if i else "db"]}
    ),
    ("GET", "/api/vps/<vps_id>"): lambda w, i, c: _static("GET", f"/api/vps/{w.vps[i]}"),
    ("PUT", "/api/vps/<vps_id>"): lambda w, i, c: _static(
        "PUT", f"/api/vps/{w.vps[i]}", {"tags": ["web"] if i else ["db"]}
    ),
    ("PATCH", "/api/vps/<vps_id>"): lambda w, i, c: _static(
        "PATCH", f"/api/vps/{w.vps[i]}", {"tags": ["web"] if i else ["db"]}
    ),
    ("DELETE", "/api/vps/<vps_id>"): lambda w, i, c: _vps_change(w, i, "DELETE", ""),
    ("POST", "/api/vps/<vps_id>/rotate_secret"): lambda w, i, c: _vps_change(
        w, i, "POST", "/rotate_secret"
    ),
    ("GET", "/api/scripts"): lambda w, i, c: _static("GET", "/api/scripts"),
    ("POST", "/api/scripts"): lambda w, i, c: _static(
        "POST", "/api/scripts", {"name": w.name("ns"), "content": "true"}
    ),
    ("GET", "/api/scripts/<script_id>"): lambda w, i, c: _static("GET", f"/api/scripts/{w.script}"),
    ("PUT", "/api/scripts/<script_id>"): lambda w, i, c: _static(
        "PUT", f"/api/scripts/{w.script}", {"name": "shared", "content": "true"}
    ),
    ("DELETE", "/api/scripts/<script_id>"): lambda w, i, c: _script_delete(w),
    ("GET", "/api/batch_commands"): lambda w, i, c: _static("GET", "/api/batch_commands"),
    ("POST", "/api/batch_commands"): lambda w, i, c: _static(
        "POST", "/api/batch_commands", {"command_content": "true", "target_vps_ids": [w.vps[i]]}
    ),
    ("GET", "/api/batch_commands/<batch_id>"): _batch_path(),
    ("POST", "/api/batch_commands/<batch_id>/terminate"): lambda w, i, c: _static(
        "POST", f"/api/batch_commands/{w.batch[i]}/terminate"
    ),
    ("POST", "/api/batch_commands/<batch_id>/rerun"): lambda w, i, c: _static(
        "POST", f"/api/batch_commands/{w.batch[i]}/rerun", {"only": "all"}
    ),
    ("POST", "/api/batch_commands/<batch_id>/tasks/<child_id>/terminate"): lambda w, i, c: _static(
        "POST", f"/api/batch_commands/{w.batch[i]}/tasks/{w.child[i]}/terminate"
    ),
    ("GET", "/api/batch_commands/<batch_id>/tasks/<child_id>/output"): lambda w, i, c: _static(
        "GET", f"/api/batch_commands/{w.batch[i]}/tasks/{w.child[i]}/output"
    ),
    ("WS", "/ws/vps"): lambda w, i, c: _static("WS", "/ws/vps"),
    ("WS", "/ws/batch_commands/<batch_id>"): lambda w, i, c: _static(
        "WS", f"/ws/batch_commands/{w.batch[i]}"
    ),
}


async def _user_change(w: World, method: str) -> Request:
    user_id = await w.new_user()
    return method, f"/api/users/{user_id}", {"role": "operator"} if method == "PUT" else None


async def _vps_change(w: World, in_scope: bool, method: str, suffix: str) -> Request:
    return method, f"/api/vps/{await w.new_vps(in_scope)}{suffix}", None


async def _script_delete(w: World) -> Request:
    return "DELETE", f"/api/scripts/{await w.new_script()}", None


def app_routes(server: Endpoints) -> set[tuple[str, str]]:
    """(method or ``WS``, rule) of every route the app answers (automatic HEAD/OPTIONS aside)."""
    routes = set()
    for rule in create_app(server.services).url_map.iter_rules():
        if rule.websocket:
            routes.add(("WS", rule.rule))
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, rule.rule))
    return routes


async def test_every_route_has_a_rule_and_an_example(server: Endpoints) -> None:
    routes = app_routes(server)
    assert routes - set(policy.RULES) == set(), "routes without an access rule"
    assert set(policy.RULES) - routes == set(), "rules for routes that do not exist"
    assert routes - set(EXAMPLES) == set(), "routes without an example in this matrix"


@pytest.fixture
async def world(server: Endpoints, client: httpx.AsyncClient) -> AsyncIterator[World]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        yield await _world(server, client, http)


async def _world(server: Endpoints, client: httpx.AsyncClient, http: httpx.AsyncClient) -> World:
    w = World(server, client, {}, {}, {}, 0, itertools.count(), http)
    for in_scope in (True, False):
        w.vps[in_scope] = await w.new_vps(in_scope)
        response = await client.post(
            "/api/batch_commands",
            json={"command_content": "true", "target_vps_ids": [w.vps[in_scope]]},
        )
        w.batch[in_scope] = response.json()["batch_command_id"]
        body = (await client.get(f"/api/batch_commands/{w.batch[in_scope]}")).json()
        w.child[in_scope] = body["tasks"][0]["child_command_id"]
    script = await client.post("/api/scripts", json={"name": "shared", "content": "true"})
    w.script = script.json()["id"]
    return w


async def _caller(w: World, role: Role, scoped: bool) -> Caller:
    label = f"{role.value}-{'web' if scoped else 'all'}"
    body = {
        "username": label,
        "password": "p" * 12,
        "role": role.value,
        "allowed_tags": ["web"] if scoped else [],
    }
    user = (await w.admin.post("/api/users", json=body)).json()
    token = new_secret()
    await w.server.services.db.run(Store.add_token, "t", hash_secret(token), user_id=user["id"])
    return Caller(label, role, scoped, token)


async def _call(w: World, caller: Caller, request: Request) -> tuple[int, Any]:
    method, path, body = request
    headers = {"Authorization": f"Bearer {caller.token}"} if caller.role else {}
    if method == "WS":
        return await _ws_call(w.server.http_url.replace("http://", "ws://") + path, headers)
    response = await w.http.request(method, path, json=body, headers=headers)
    w.http.cookies.clear()  # a login's session cookie must not follow into the next call
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


async def _ws_call(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """(101 and the first message) or (the close code) or (the refusal's HTTP status).

    The socket is dropped by cancelling its nursery rather than closed: trio-websocket 0.12
    fails a graceful close when the server's keepalive ping crosses it (it answers the ping in
    LOCAL_CLOSING), and that failure escapes as a bare Cancelled.
    """
    result: tuple[int, Any] = (0, None)
    try:
        async with trio.open_nursery() as nursery:
            ws = await connect_websocket_url(nursery, url, extra_headers=list(headers.items()))
            try:
                result = (101, json.loads(await ws.get_message()))
            except ConnectionClosed as closed:
                result = (closed.reason.code, None)
            nursery.cancel_scope.cancel()
    except* ConnectionRejected as group:
        rejected = group.exceptions[0]
        assert isinstance(rejected, ConnectionRejected)
        result = (rejected.status_code, None)
    return result


def _listed(key: tuple[str, str], body: Any, w: World) -> set[Any]:
    if key == ("GET", "/api/vps"):
        return {v["id"] for v in body}
    if key == ("WS", "/ws/vps"):
        return {v["id"] for v in body["vps"]}
    return {b["batch_command_id"] for b in body["items"]}


async def test_role_route_scope_matrix(server: Endpoints, world: World) -> None:
    w = world
    callers = [Caller("anonymous", None)]
    for role, scoped in [
        (Role.VIEWER, False),
        (Role.OPERATOR, False),
        (Role.ADMIN, False),
        (Role.VIEWER, True),
        (Role.OPERATOR, True),
    ]:
        callers.append(await _caller(w, role, scoped))
    failures: list[str] = []
    checked = 0
    with trio.fail_after(120):
        for key, rule in sorted(policy.RULES.items(), key=lambda kv: kv[0]):
            for caller, in_scope in itertools.product(callers, (True, False)):
                request = await EXAMPLES[key](w, in_scope, caller)
                status, body = await _call(w, caller, request)
                checked += 1
                expected = _expect(rule, caller, in_scope, websocket=key[0] == "WS")
                where = f"{key} as {caller.label} ({'in' if in_scope else 'out of'} scope)"
                if 500 <= status < 600:
                    failures.append(f"{where}: {status}")
                elif expected == "allowed" and status in (401, 403):
                    failures.append(f"{where}: refused {status} {body}")
                elif expected in (401, 403, 404) and status != expected:
                    failures.append(f"{where}: {status}, expected {expected}")
                elif expected == "hidden" and status != 1008:
                    failures.append(f"{where}: feed {status}, expected a close 1008")
                elif expected == "filtered":
                    listed = _listed(key, body, w)
                    inside = w.vps[True] if "vps" in key[1] else w.batch[True]
                    outside = w.vps[False] if "vps" in key[1] else w.batch[False]
                    if inside not in listed or (caller.scoped and outside in listed):
                        failures.append(f"{where}: listed {sorted(map(str, listed))}")
    assert failures == []
    assert checked == len(policy.RULES) * len(callers) * 2


def _expect(rule: policy.Rule, caller: Caller, in_scope: bool, *, websocket: bool) -> Any:
    """What the rule promises this caller: a status, "allowed", "filtered" or "hidden"."""
    if rule.access is policy.Access.PUBLIC:
        return "allowed"
    if caller.role is None:
        return 401
    needed = {
        policy.Access.VIEWER: Role.VIEWER,
        policy.Access.OPERATOR: Role.OPERATOR,
        policy.Access.ADMIN: Role.ADMIN,
    }.get(rule.access)
    if needed is not None and not caller.role.at_least(needed):
        return 403
    if rule.scope in (policy.Scope.VPS_LIST, policy.Scope.BATCH_LIST):
        return "filtered"
    if caller.scoped and not in_scope:
        if rule.scope is policy.Scope.TARGETS:
            return 403
        if rule.scope in (policy.Scope.VPS, policy.Scope.BATCH):
            return "hidden" if websocket else 404
    return "allowed"


def test_examples_name_only_real_rules() -> None:
    assert set(EXAMPLES) == set(policy.RULES)
