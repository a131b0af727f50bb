"""Teams over HTTP: logins and sessions, users, personal tokens, the
audit log and ``created_by``. The role × route × scope matrix is ``test_policy_matrix``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from fleet.server.agents import hash_secret
from fleet.server.logins import LoginThrottle
from fleet.server.serve import Endpoints
from fleet.server.store import Store

from .conftest import add_vps

PASSWORD = "correct horse battery"


async def add_user(
    client: httpx.AsyncClient, name: str, role: str = "viewer", tags: list[str] | None = None
) -> dict[str, Any]:
    body = {"username": name, "password": PASSWORD, "role": role, "allowed_tags": tags or []}
    response = await client.post("/api/users", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def browser(server: Endpoints) -> httpx.AsyncClient:
    origin = server.http_url
    # What the UI sends: its own Origin, and JSON on every write (even a DELETE).
    headers = {"Origin": origin, "Content-Type": "application/json"}
    return httpx.AsyncClient(base_url=origin, headers=headers, timeout=10)


async def audit(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/api/audit", params=query)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_password_login_session_and_logout(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        await add_user(client, "alice", "operator", ["web"])
        async with browser(server) as web:
            response = await web.post(
                "/api/login", json={"username": "alice", "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            assert response.json() == {
                "id": response.json()["id"],
                "username": "alice",
                "role": "operator",
                "allowed_tags": ["web"],
            }
            session = web.cookies["fleet_session"]
            assert session != PASSWORD
            assert "HttpOnly" in response.headers["set-cookie"]
            me = (await web.get("/api/me")).json()
            assert (me["username"], me["role"], me["allowed_tags"]) == (
                "alice",
                "operator",
                ["web"],
            )
            assert (await web.post("/api/logout", json={})).status_code == 204
        # The session is revoked on the server, not just forgotten by the browser.
        async with httpx.AsyncClient(base_url=server.http_url) as replay:
            replay.cookies.set("fleet_session", session)
            assert (await replay.get("/api/me")).status_code == 401
        actions = [(e["actor"], e["action"]) for e in await audit(client, actor="alice")]
        assert actions == [("alice", "logout"), ("alice", "login")]


async def test_token_url_and_token_login_exchange_the_token_for_a_session(
    server: Endpoints,
) -> None:
    with trio.fail_after(20):
        async with browser(server) as web:
            response = await web.get(f"/?token={server.token}")
            assert response.status_code == 303
            cookie = web.cookies["fleet_session"]
            assert cookie
            assert cookie != server.token
            assert (await web.get("/api/me")).json()["username"] == "admin"
            assert (await web.post("/api/logout", json={})).status_code == 204
            assert (await web.get("/api/me")).status_code == 401
            response = await web.post("/api/login", json={"token": server.token})
            assert response.status_code == 200
            assert web.cookies["fleet_session"] not in (cookie, server.token)
        # The admin token still works as a bearer token, for automation.
        async with httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {server.token}"}
        ) as bearer:
            assert (await bearer.get("/api/me")).json()["role"] == "admin"


async def test_wrong_logins_are_refused_alike_audited_and_throttled(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    now = [1000.0]
    server.services.throttle = LoginThrottle(clock=lambda: now[0])
    with trio.fail_after(30):
        await add_user(client, "bob")
        async with browser(server) as web:
            unknown = await web.post("/api/login", json={"username": "nobody", "password": "x"})
            wrong = await web.post("/api/login", json={"username": "bob", "password": "nope"})
            assert unknown.status_code == wrong.status_code == 401
            assert unknown.json() == wrong.json()  # no hint whether the user exists
            for _ in range(8):
                await web.post("/api/login", json={"username": "bob", "password": "nope"})
            # Ten failures from this address: even the right password waits now.
            locked = await web.post("/api/login", json={"username": "bob", "password": PASSWORD})
            assert locked.status_code == 429
            assert 1 <= int(locked.headers["retry-after"]) <= 300
            now[0] += 301
            ok = await web.post("/api/login", json={"username": "bob", "password": PASSWORD})
            assert ok.status_code == 200
        failed = await audit(client, action="login_failed")
        assert len(failed) == 10
        assert {e["outcome"] for e in failed} == {"failure"}
        assert "nope" not in json.dumps(failed)


async def test_user_bad_input_is_a_clear_4xx(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        await add_user(client, "carol", "admin")
        cases = [
            ({"username": "carol", "password": PASSWORD, "role": "viewer"}, 409),
            ({"username": "dave", "password": "short", "role": "viewer"}, 422),
            ({"username": "dave", "password": PASSWORD, "role": "root"}, 422),
            ({"username": "bad name", "password": PASSWORD, "role": "viewer"}, 422),
            (
                {"username": "dave", "password": PASSWORD, "role": "admin", "allowed_tags": ["x"]},
                422,
            ),
            ({"username": "dave", "password": PASSWORD, "role": "viewer", "extra": 1}, 422),
            ([], 422),
        ]
        for body, status in cases:
            response = await client.post("/api/users", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"] in ("validation_error", "conflict")
        users = {u["username"]: u["id"] for u in (await client.get("/api/users")).json()}
        assert (await client.delete(f"/api/users/{users['carol']}")).status_code == 204
        # The built-in admin owns the first-start token, which keeps working: it stays an admin
        # (so there is always one), and the token cannot be revoked through the API.
        last = await client.delete(f"/api/users/{users['admin']}")
        assert last.status_code == 409
        assert "first-start admin token" in last.json()["detail"][0]["reason"]
        demote = await client.put(f"/api/users/{users['admin']}", json={"role": "operator"})
        assert demote.status_code == 409
        builtin = (await client.get("/api/tokens")).json()[0]
        assert (await client.delete(f"/api/tokens/{builtin['id']}")).status_code == 409
        assert (await client.get("/api/me")).status_code == 200
        assert (await client.get("/api/users/999")).status_code == 404
        assert (await client.put("/api/users/x", json={})).status_code == 404


async def test_personal_tokens_act_as_their_owner_until_revoked_or_expired(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        erin = await add_user(client, "erin", "viewer")
        async with browser(server) as web:
            await web.post("/api/login", json={"username": "erin", "password": PASSWORD})
            soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            made = await web.post("/api/tokens", json={"name": "ci", "expires_at": soon})
            assert made.status_code == 201, made.text
            token = made.json()["token"]
            listed = (await web.get("/api/tokens")).json()
            assert [t["name"] for t in listed] == ["ci"]
            assert "token" not in listed[0]
            past = await web.post("/api/tokens", json={"name": "x", "expires_at": "2000-01-01"})
            assert past.status_code == 422
            async with httpx.AsyncClient(
                base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}
            ) as ci:
                assert (await ci.get("/api/me")).json()["username"] == "erin"
                assert (await ci.get("/api/vps")).status_code == 200
                assert (
                    await ci.post("/api/scripts", json={"name": "s", "content": "x"})
                ).status_code == 403
                # Expired: the store says so at its expiry.
                later = datetime.now(UTC) + timedelta(hours=2)
                assert (
                    await server.services.db.run(Store.token_user, hash_secret(token), later)
                    is None
                )
                token_id = made.json()["id"]
                assert (await web.delete(f"/api/tokens/{token_id}")).status_code == 204
                assert (await ci.get("/api/me")).status_code == 401
            # An admin sees everyone's tokens (the admin token included); others only theirs.
            owners = {t["owner"] for t in (await client.get("/api/tokens")).json()}
            assert owners == {"admin"}
        assert erin["has_password"]
        entries = await audit(client, action="token.create")
        assert entries[0]["details"]["owner"] == "erin"
        assert token not in json.dumps(await audit(client))


async def test_created_by_and_the_batch_audit_entry(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "web-1", ["web"])
        await add_user(client, "frank", "operator", ["web"])
        async with browser(server) as web:
            await web.post("/api/login", json={"username": "frank", "password": PASSWORD})
            response = await web.post(
                "/api/batch_commands",
                json={"command_content": "uptime", "target_vps_ids": [vps["id"]]},
            )
            assert response.status_code == 202, response.text
            batch_id = response.json()["batch_command_id"]
            batch = (await web.get(f"/api/batch_commands/{batch_id}")).json()
            assert batch["created_by"] == "frank"
            listed = (await web.get("/api/batch_commands")).json()["items"]
            assert listed[0]["created_by"] == "frank"
        entry = (await audit(client, action="batch.create"))[0]
        assert entry["actor"] == "frank"
        assert entry["target_id"] == batch_id
        assert entry["details"]["command"] == "uptime"
        assert entry["details"]["target_vps_ids"] == [vps["id"]]
        assert entry["source_ip"] == "127.0.0.1"


async def test_audit_query_filters_pages_and_refuses_bad_input(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        for i in range(5):
            await client.post("/api/scripts", json={"name": f"s{i}", "content": "x"})
        first = (await client.get("/api/audit", params={"limit": 2})).json()
        assert [e["action"] for e in first["items"]] == ["script.create"] * 2
        second = (
            await client.get("/api/audit", params={"limit": 2, "before": first["next"]})
        ).json()
        assert second["items"][0]["id"] < first["items"][-1]["id"]
        since = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert (await client.get("/api/audit", params={"since": since})).json()["items"] == []
        for query in ({"since": "yesterday"}, {"limit": "0"}, {"action": "nope"}, {"x": "1"}):
            response = await client.get("/api/audit", params=query)
            assert response.status_code == 422, query


@pytest.mark.parametrize("tags", [["web"]])
async def test_scoped_users_see_only_their_vpses(
    server: Endpoints, client: httpx.AsyncClient, tags: list[str]
) -> None:
    with trio.fail_after(20):
        web_vps = await add_vps(client, "web-1", ["web"])
        db_vps = await add_vps(client, "db-1", ["db"])
        await add_user(client, "gina", "operator", tags)
        async with browser(server) as web:
            await web.post("/api/login", json={"username": "gina", "password": PASSWORD})
            assert [v["id"] for v in (await web.get("/api/vps")).json()] == [web_vps["id"]]
            refused = await web.post(
                "/api/batch_commands",
                json={"command_content": "true", "target_vps_ids": [web_vps["id"], db_vps["id"]]},
            )
            assert refused.status_code == 403
            assert refused.json()["detail"]["vps_ids"] == [db_vps["id"]]
