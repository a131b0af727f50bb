"""The REST API: auth, inventory, batches, errors (never a 500 for bad input)."""

from __future__ import annotations

import httpx
import pytest
import trio

import fleet
from fleet.server.serve import Endpoints
from tests.fakeagent import FakeAgent

from .conftest import add_vps, wait_batch, wait_online


async def test_every_api_needs_a_token(server: Endpoints) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=server.http_url) as anon:
            for method, path in [
                ("GET", "/api/vps"),
                ("POST", "/api/vps"),
                ("GET", "/api/scripts"),
                ("GET", "/api/batch_commands"),
                ("POST", "/api/batch_commands"),
                ("GET", "/api/batch_commands/x"),
                ("POST", "/api/batch_commands/x/terminate"),
                ("GET", "/api/batch_commands/x/tasks/y/output"),
                ("GET", "/api/me"),
            ]:
                response = await anon.request(method, path)
                assert response.status_code == 401, (method, path)
                assert response.json()["error"] == "unauthorized"
            wrong = await anon.get("/api/vps", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            # The OpenAPI document is public documentation.
            doc = await anon.get("/api/openapi.json")
            assert doc.status_code == 200
            assert "/api/batch_commands" in doc.json()["paths"]


async def test_login_url_sets_an_httponly_cookie(server: Endpoints) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=server.http_url) as browser:
            response = await browser.get(f"/?token={server.token}")
            assert response.status_code == 303
            cookie = response.headers["set-cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert (await browser.get("/api/me")).status_code == 200
            bad = await browser.get("/?token=wrong")
            assert bad.headers["location"].startswith("/#/login")
            assert (await browser.post("/api/login", json={"token": "x"})).status_code == 401
            same_origin = {"Content-Type": "application/json", "Origin": server.http_url}
            assert (await browser.post("/api/logout", headers=same_origin)).status_code == 204


async def test_ui_is_served_with_a_strict_csp(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        page = await client.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "<html" in page.text.lower()


async def test_vps_crud_and_rotate_secret(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(15):
        vps = await add_vps(client, "web-1", ["web", "eu"])
        assert vps["agent_secret"]
        assert f"--vps-id {vps['id']}" in vps["agent_command"]
        # The index's "fleet" is another project: the agent is "fleet-run", this version.
        assert vps["agent_install"] == f"python3 -m pip install 'fleet-run=={fleet.__version__}'"
        listed = (await client.get("/api/vps")).json()
        assert [v["name"] for v in listed] == ["web-1"]
        assert "agent_secret" not in listed[0]
        assert listed[0]["online"] is False
        dup = await client.post("/api/vps", json={"name": "web-1"})
        assert dup.status_code == 409  # the name is taken
        agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert (await agent.open()).authentication_successful
        await wait_online(server, vps["id"])
        assert (await client.get(f"/api/vps/{vps['id']}")).json()["online"] is True
        rotated = (await client.post(f"/api/vps/{vps['id']}/rotate_secret")).json()
        assert rotated["agent_secret"] != vps["agent_secret"]
        assert await agent.receive() is None  # the live stream was closed
        await agent.close()
        old = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert not (await old.open()).authentication_successful
        await old.close()
        new = FakeAgent(server.grpc_address, vps["id"], rotated["agent_secret"])
        assert (await new.open()).authentication_successful
        assert (await client.delete(f"/api/vps/{vps['id']}")).status_code == 204
        assert await new.receive() is None
        await new.close()
        assert (await client.get(f"/api/vps/{vps['id']}")).status_code == 404
        assert (await client.delete(f"/api/vps/{vps['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "tags": "web"}, "tags"),
        ({"name": "x", "extra": 1}, "extra"),
        ([], "body"),
    ],
)
async def test_vps_validation(client: httpx.AsyncClient, body: object, field: str) -> None:
    with trio.fail_after(10):
        response = await client.post("/api/vps", json=body)
        assert response.status_code == 422
        assert field in [e["field"] for e in response.json()["detail"]]


async def test_scripts_crud(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        body = {"name": "up", "description": "uptime", "content": "#!/bin/sh\nuptime\n"}
        created = await client.post("/api/scripts", json=body)
        assert created.status_code == 201
        sid = created.json()["id"]
        assert (await client.get(f"/api/scripts/{sid}")).json()["content"] == body["content"]
        edited = await client.put(f"/api/scripts/{sid}", json=body | {"content": "uname -a"})
        assert edited.json()["content"] == "uname -a"
        assert len((await client.get("/api/scripts")).json()) == 1
        assert (await client.post("/api/scripts", json=body)).status_code == 409  # duplicate
        assert (await client.post("/api/scripts", json={"name": "x"})).status_code == 422
        assert (await client.delete(f"/api/scripts/{sid}")).status_code == 204
        assert (await client.get(f"/api/scripts/{sid}")).status_code == 404
        assert (await client.get("/api/scripts/abc")).status_code == 404


async def test_batch_validation_errors(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        vps = await add_vps(client, "a")
        cases = [
            ({"target_vps_ids": [vps["id"]]}, "command_content"),
            (
                {"command_content": "x", "script_id": 1, "target_vps_ids": [vps["id"]]},
                "command_content",
            ),
            ({"command_content": "x", "target_vps_ids": []}, "target_vps_ids"),
            ({"command_content": "x"}, "target_vps_ids"),
            ({"command_content": "x", "target_vps_ids": [vps["id"], 999]}, "target_vps_ids"),
            ({"script_id": 42, "target_vps_ids": [vps["id"]]}, "script_id"),
            ({"command_content": "x", "target_vps_ids": ["a"]}, "target_vps_ids"),
            (
                {"command_content": "x", "target_vps_ids": [1], "timeout_seconds": -1},
                "timeout_seconds",
            ),
        ]
        for body, field in cases:
            response = await client.post("/api/batch_commands", json=body)
            assert response.status_code == 422, (body, response.text)
            detail = response.json()["detail"]
            assert field in [e["field"] for e in detail], (body, detail)
        unknown = await client.post(
            "/api/batch_commands", json={"command_content": "x", "target_vps_ids": [998, "999"]}
        )
        assert unknown.json()["detail"][0]["unknown_ids"] == [998, 999]
        malformed = await client.post(
            "/api/batch_commands", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert malformed.json()["error"] == "bad_request"
        not_utf8 = await client.post("/api/batch_commands", content=b"\xff\xfe")
        assert not_utf8.status_code == 400
        huge = await client.post("/api/batch_commands", content=b"x" * (5 * 1024 * 1024))
        assert huge.status_code == 413


async def test_batch_lifecycle_over_rest(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(15):
        vps = await add_vps(client, "a")
        script = (
            await client.post("/api/scripts", json={"name": "s", "content": "echo from-script"})
        ).json()
        agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert (await agent.open()).authentication_successful
        await wait_online(server, vps["id"])
        response = await client.post(
            "/api/batch_commands",
            json={
                "script_id": str(script["id"]),
                "target_vps_ids": [str(vps["id"])],
                "execution_alias": "nightly",
            },
        )
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status"] == "PENDING"
        batch_id = accepted["batch_command_id"]
        request = await agent.receive_payload("batch_agent_command_request")
        assert request.type == 2  # SAVED_SCRIPT, sent with its content
        assert request.content == "echo from-script"
        body = (await client.get(f"/api/batch_commands/{batch_id}")).json()
        assert set(body) >= {"batch_command_id", "overall_status", "execution_alias", "tasks"}
        task = body["tasks"][0]
        assert set(task) >= {
            "child_command_id",
            "vps_id",
            "vps_name",
            "status",
            "exit_code",
            "output_stream_summary",
            "error_message",
            "created_at",
            "updated_at",
        }
        assert task["created_at"].endswith("Z")
        assert body["execution_alias"] == "nightly"
        await agent.send(FakeAgent.output(request.command_id, b"\x00\xffbin", 0))
        await agent.send(FakeAgent.result(request.command_id, 1, 0))
        await wait_batch(server, batch_id)
        log = await client.get(
            f"/api/batch_commands/{batch_id}/tasks/{request.command_id}/output?stream=stdout"
        )
        assert log.content == b"\x00\xffbin"
        assert "attachment" in log.headers["content-disposition"]
        empty = await client.get(
            f"/api/batch_commands/{batch_id}/tasks/{request.command_id}/output?stream=stderr"
        )
        assert empty.content == b""
        bad_stream = await client.get(
            f"/api/batch_commands/{batch_id}/tasks/{request.command_id}/output?stream=x"
        )
        assert bad_stream.status_code == 422
        # Terminating what is finished is a harmless no-op answered with its status.
        again = await client.post(f"/api/batch_commands/{batch_id}/terminate")
        assert again.status_code == 202
        assert again.json()["overall_status"] == "COMPLETED_SUCCESSFULLY"
        child = await client.post(
            f"/api/batch_commands/{batch_id}/tasks/{request.command_id}/terminate"
        )
        assert child.json()["status"] == "SUCCESS"
        assert (
            await client.post(f"/api/batch_commands/{batch_id}/tasks/nope/terminate")
        ).status_code == 404
        assert (await client.get("/api/batch_commands/nope")).status_code == 404
        await agent.close()


async def test_list_batches_newest_first_paginated(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(15):
        vps = await add_vps(client, "off")
        ids = []
        for i in range(5):
            r = await client.post(
                "/api/batch_commands",
                json={"command_content": f"echo {i}", "target_vps_ids": [vps["id"]]},
            )
            ids.append(r.json()["batch_command_id"])
        for batch_id in ids:
            await wait_batch(server, batch_id)
        page = (await client.get("/api/batch_commands?limit=2")).json()
        assert page["total"] == 5
        assert [b["batch_command_id"] for b in page["items"]] == ids[::-1][:2]
        page2 = (await client.get("/api/batch_commands?limit=2&offset=2")).json()
        assert [b["batch_command_id"] for b in page2["items"]] == ids[::-1][2:4]
        assert page["items"][0]["counts"] == {"AGENT_UNREACHABLE": 1}
        assert (await client.get("/api/batch_commands?limit=0")).status_code == 422
        assert (await client.get("/api/batch_commands?offset=-1")).status_code == 422


async def test_unknown_routes_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        missing = await client.get("/api/nothing")
        assert missing.status_code == 404
        assert missing.json()["error"]
        wrong = await client.delete("/api/batch_commands")
        assert wrong.status_code == 405
        assert wrong.json()["error"]


NASTY_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,
    b"null",
    b"0",
    b'"x"',
    b'{"name": "\\ud800"}',
    b'{"name": {"a": 1}, "tags": [null]}',
    b'{"name": "x", "tags": ["\\u0000"]}',
    b'{"command_content": "\\ud800", "target_vps_ids": [1]}',
    b'{"command_content": "x", "target_vps_ids": [1e308]}',
    b'{"command_content": "x", "target_vps_ids": [99999999999999999999999]}',
    b'{"command_content": "x", "target_vps_ids": [1], "timeout_seconds": 1e400}',
    b'{"script_id": 1e3, "target_vps_ids": [1]}',
    b'{"name": "s", "description": "\\ud800", "content": "a"}',
    b'{"token": 5}',
]


async def test_no_body_ever_gets_a_500(client: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        await client.post("/api/vps", json={"name": "v"})
        await client.post("/api/scripts", json={"name": "s", "content": "x"})
        paths = [
            "/api/vps",
            "/api/vps/1",
            "/api/vps/1/rotate_secret",
            "/api/scripts",
            "/api/scripts/1",
            "/api/batch_commands",
            "/api/batch_commands/x/terminate",
            "/api/login",
        ]
        bad = []
        for path in paths:
            for body in NASTY_BODIES:
                for method in ("POST", "PUT", "PATCH"):
                    response = await client.request(
                        method, path, content=body, headers={"content-type": "application/json"}
                    )
                    if response.status_code >= 500:
                        bad.append((method, path, body[:30], response.status_code))
        assert not bad
