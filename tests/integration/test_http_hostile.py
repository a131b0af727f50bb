"""Hostile HTTP input: forged browser writes, 500s from bad input, slow bodies, log lines,
``Allow``, and an OpenAPI document exactly as strict as the server."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from fleet.logformat import TextFormatter
from fleet.server.http.app import create_app
from fleet.server.serve import Endpoints
from fleet.server.store import Store

from .conftest import add_vps

UUID = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
JSON = {"Content-Type": "application/json"}


async def _batch_count(server: Endpoints) -> int:
    _, total = await server.services.db.run(Store.list_batches, limit=1, offset=0)
    return int(total)


@asynccontextmanager
async def _cookie_client(server: Endpoints) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in the way a browser is: by the token URL, then only the cookie."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as browser:
        assert (await browser.get(f"/?token={server.token}")).status_code == 303
        assert browser.cookies
        yield browser


# --- Cross-site request forgery (finding 1) ---------------------------------------------------


async def test_cookie_writes_must_be_json_from_this_origin(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "csrf-1")
        body = json.dumps({"command_content": "id", "target_vps_ids": [vps["id"]]})
        own = server.http_url
        port = int(own.rsplit(":", 1)[1])
        async with _cookie_client(server) as browser:
            # The attack once seen to work: a text/plain form auto-submitted from a sibling port.
            sibling = f"http://127.0.0.1:{port + 1}"
            for content_type in (
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                None,
            ):
                headers = {"Origin": sibling}
                if content_type is not None:
                    headers["Content-Type"] = content_type
                forged = await browser.post("/api/batch_commands", content=body, headers=headers)
                assert forged.status_code == 415, content_type
                assert forged.json()["error"] == "unsupported_media_type"
            # JSON, but from another origin, another scheme, or with no Origin at all.
            for origin in (
                sibling,
                own.replace("http://", "https://"),
                "null",
                "http://localhost:" + str(port),
                None,
            ):
                headers = dict(JSON)
                if origin is not None:
                    headers["Origin"] = origin
                forged = await browser.post("/api/batch_commands", content=body, headers=headers)
                assert forged.status_code == 403, origin
                assert forged.json()["error"] == "forbidden"
            # Every other write is held the same way (no body needed to be refused).
            for method, path in (
                ("DELETE", f"/api/vps/{vps['id']}"),
                ("POST", f"/api/vps/{vps['id']}/rotate_secret"),
                ("POST", f"/api/batch_commands/{UUID}/terminate"),
                ("POST", "/api/logout"),
            ):
                refused = await browser.request(method, path, headers={"Origin": sibling})
                assert refused.status_code == 415, (method, path)
            assert await _batch_count(server) == 0
            # Reading needs no Origin; the UI's own JSON write from its own origin runs.
            assert (await browser.get("/api/vps")).status_code == 200
            ok = await browser.post(
                "/api/batch_commands", content=body, headers={**JSON, "Origin": own + "/"}
            )
            assert ok.status_code == 202, ok.text
            assert await _batch_count(server) == 1
        # A bearer token needs neither: automation posts JSON without Content-Type or Origin.
        bare = await client.post("/api/batch_commands", content=body)
        assert bare.status_code == 202, bare.text


async def test_a_foreign_page_cannot_log_a_browser_in(server: Endpoints) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=server.http_url) as browser:
            body = json.dumps({"token": server.token})
            forged = await browser.post(
                "/api/login", content=body, headers={"Origin": "http://127.0.0.1:1"}
            )
            assert forged.status_code == 415
            forged = await browser.post(
                "/api/login", content=body, headers={**JSON, "Origin": "http://127.0.0.1:1"}
            )
            assert forged.status_code == 403
            assert not browser.cookies
            # A client that is not a browser sends no Origin and logs in.
            assert (await browser.post("/api/login", content=body)).status_code == 200


def _ws(server: Endpoints, path: str) -> str:
    return server.http_url.replace("http://", "ws://") + path


async def test_cookie_websocket_needs_this_origin_scheme_included(server: Endpoints) -> None:
    with trio.fail_after(20):
        async with _cookie_client(server) as browser:
            cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        own = server.http_url
        for origin in (own.replace("http://", "https://"), "http://127.0.0.1:1", None):
            headers = [("Cookie", cookie)] + ([("Origin", origin)] if origin else [])
            with pytest.raises(ConnectionRejected) as info:
                async with open_websocket_url(_ws(server, "/ws/vps"), extra_headers=headers):
                    raise AssertionError(f"a handshake from {origin} was accepted")
            assert info.value.status_code == 403, origin
        headers = [("Cookie", cookie), ("Origin", own)]
        async with open_websocket_url(_ws(server, "/ws/vps"), extra_headers=headers) as ws:
            assert json.loads(await ws.get_message())["type"] == "VPS_SNAPSHOT"


# --- 500s from bad input (finding 4) -----------------------------------------------------------

BAD_BATCH_IDS = [
    UUID + "X",  # 37 characters
    "%20%20%20",
    "%09",
    "a" * 5000,
    "x%0Aforged%20log%20line",
    "%C3%A9",
    "..%2F..%2Fetc",
    "-leading-dash",
]


async def test_malformed_batch_and_task_ids_are_404(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        for bad in BAD_BATCH_IDS:
            for method, path in (
                ("GET", f"/api/batch_commands/{bad}"),
                ("POST", f"/api/batch_commands/{bad}/terminate"),
                ("POST", f"/api/batch_commands/{bad}/tasks/{UUID}/terminate"),
                ("POST", f"/api/batch_commands/{UUID}/tasks/{bad}/terminate"),
                ("GET", f"/api/batch_commands/{bad}/tasks/{UUID}/output"),
                ("GET", f"/api/batch_commands/{UUID}/tasks/{bad}/output"),
                ("GET", f"/api/vps/{bad}"),
                ("DELETE", f"/api/scripts/{bad}"),
            ):
                response = await client.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"] == "not_found"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_websocket_with_a_malformed_id_is_closed_cleanly(
    server: Endpoints, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = [("Authorization", f"Bearer {server.token}")]
    with trio.fail_after(20):
        for bad in (UUID + "X", "%20", "a%0Ab", UUID):
            async with open_websocket_url(
                _ws(server, f"/ws/batch_commands/{bad}"), extra_headers=headers
            ) as ws:
                with pytest.raises(Exception) as info:
                    await ws.get_message()
            assert getattr(info.value, "reason", None) is not None, info.value
            assert info.value.reason.code == 1008, bad
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


HUGE = "1" * 5000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/batch_commands", f'{{"command_content": "x", "target_vps_ids": [{HUGE}]}}'),
        (
            "/api/batch_commands",
            f'{{"command_content": "x", "target_vps_ids": [1], "timeout_seconds": {HUGE}}}',
        ),
        ("/api/batch_commands", '{"command_content": "x", "target_vps_ids": [1' + "0" * 20 + "]}"),
        ("/api/batch_commands", f'{{"script_id": {HUGE}.5e3, "target_vps_ids": [1]}}'),
        ("/api/vps", f'{{"name": "v", "tags": {HUGE}}}'),
        ("/api/vps", f'{{"name": -{HUGE}}}'),
        ("/api/scripts", f'{{"name": "s", "content": "x", "description": {HUGE}}}'),
    ],
)
async def test_numbers_of_more_than_20_digits_are_422(
    client: httpx.AsyncClient, path: str, body: str
) -> None:
    with trio.fail_after(10):
        response = await client.post(path, content=body, headers=JSON)
        assert response.status_code == 422, response.text
        assert "20 digits" in response.text


async def test_query_numbers_are_checked_before_conversion(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for query in (f"limit={HUGE}", f"offset={HUGE}", "limit=0", "limit=", "limit=%C2%B2"):
            response = await client.get(f"/api/batch_commands?{query}")
            assert response.status_code == 422, (query, response.text)
        assert (await client.get(f"/api/batch_commands?offset={'9' * 9}")).status_code == 200


async def test_nan_and_infinity_are_not_json(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for literal in ("NaN", "Infinity", "-Infinity"):
            body = (
                f'{{"command_content": "x", "target_vps_ids": [1], "timeout_seconds": {literal}}}'
            )
            response = await client.post("/api/batch_commands", content=body)
            assert response.status_code == 400, literal


# --- Slow request bodies (finding 5) -----------------------------------------------------------


@pytest.mark.parametrize("server_config", [{"body_timeout_s": 0.3}], indirect=True)
async def test_a_body_slower_than_the_timeout_is_408(server: Endpoints) -> None:
    assert server.services.config.body_timeout_s == 0.3  # 30 s by default
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            head = (
                f"POST /api/vps HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {server.token}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n"
            )
            await stream.send_all(head.encode() + b'{"name": ')  # and nothing more
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(4096)
                assert chunk, f"closed without an answer: {received!r}"
                received += chunk
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"connection: close" in received.lower()  # this connection cannot go on
        assert not await server.services.db.run(Store.list_vps)


# --- Log lines (finding 4) -------------------------------------------------------------------


async def test_request_text_never_forges_a_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    with trio.fail_after(20):
        for path in (
            "/api/batch_commands/x%0A2026-11-30%20INFO%20forged",
            "/api/nothing%0D%0Aforged",
            "/api/vps/1%1B%5B31m",
            "/ws/batch_commands/%0Aforged",
        ):
            for method in ("GET", "POST", "TRACE", "PUT"):
                response = await client.request(method, path)
                assert response.status_code < 500
    for record in caplog.records:
        line = formatter.formatMessage(_with_message(record))
        assert not any(ch in line for ch in "\n\r\x1b"), line


def _with_message(record: logging.LogRecord) -> logging.LogRecord:
    record.message = record.getMessage()
    record.asctime = "t"
    return record


def test_the_text_log_format_escapes_control_characters() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "fleet.server", logging.WARNING, __file__, 1, "path %s", ("/x\nINFO forged\x1b[2J",), None
    )
    assert formatter.format(record) == "WARNING path /x\\nINFO forged\\x1b[2J"


# --- Allow and TRACE (finding 5) ---------------------------------------------------------------


def _allow(response: httpx.Response) -> set[str]:
    return {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}


async def test_405_and_trace_carry_allow(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for method, path, allowed in (
            ("TRACE", "/api/vps", {"GET", "HEAD", "OPTIONS", "POST"}),
            ("DELETE", "/api/batch_commands", {"GET", "HEAD", "OPTIONS", "POST"}),
            ("TRACE", f"/api/batch_commands/{UUID}", {"GET", "HEAD", "OPTIONS"}),
            ("PUT", "/api/me", {"GET", "HEAD", "OPTIONS"}),
            ("GET", "/api/logout", {"POST", "OPTIONS"}),
        ):
            response = await client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.json()["error"] == "method_not_allowed"
            assert _allow(response) == allowed, (method, path, response.headers)


async def test_allow_lists_exactly_the_documented_methods(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    """For every path of the OpenAPI document, ``OPTIONS`` answers exactly its operations (plus
    the implicit HEAD of a GET, and OPTIONS)."""
    with trio.fail_after(20):
        doc = (await client.get("/api/openapi.json")).json()
        for template, operations in doc["paths"].items():
            path = template.format(
                vps_id=1, script_id=1, batch_id=UUID, child_id=UUID, user_id=1, token_id=1
            )
            declared = {m.upper() for m in operations if m in _HTTP_METHODS}
            expected = declared | {"OPTIONS"} | ({"HEAD"} if "GET" in declared else set())
            response = await client.options(path)
            assert _allow(response) == expected, (template, response.headers.get("allow"))


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


async def test_the_document_lists_every_route_the_server_answers(server: Endpoints) -> None:
    """Every HTTP route under ``/api/`` is in the OpenAPI document with exactly its methods."""
    from fleet.server.http import openapi

    doc = openapi.document()
    served: dict[str, set[str]] = {}
    for rule in create_app(server.services).url_map.iter_rules():
        if rule.rule.startswith("/api/") and not rule.websocket:
            template = rule.rule.replace("<", "{").replace(">", "}")
            served.setdefault(template, set()).update(rule.methods or ())
    documented = {
        path: {m.upper() for m in ops if m in _HTTP_METHODS} for path, ops in doc["paths"].items()
    }
    assert set(served) == set(documented)
    for path, methods in served.items():
        assert methods - {"HEAD", "OPTIONS"} == documented[path], path


# --- The OpenAPI document is exactly as strict as the server (finding 5) -------------------------

# (schema, path, body): the server refuses the body (4xx) exactly when the schema does.
STRICTNESS = [
    ("VpsCreate", "/api/vps", {"name": ""}),
    ("VpsCreate", "/api/vps", {"name": "   "}),
    ("VpsCreate", "/api/vps", {"name": "a\nb"}),
    ("VpsCreate", "/api/vps", {"name": "x" * 101}),
    ("VpsCreate", "/api/vps", {"name": "ok", "extra": 1}),
    ("VpsCreate", "/api/vps", {"name": "ok", "tags": ["a b"]}),
    ("VpsCreate", "/api/vps", {"name": "ok", "tags": ["t" * 65]}),
    ("VpsCreate", "/api/vps", {"name": " fine ", "tags": [" web ", "", "web"]}),
    ("ScriptBody", "/api/scripts", {"name": "s", "content": " \t\n"}),
    ("ScriptBody", "/api/scripts", {"name": "s", "content": "x\x00"}),
    ("ScriptBody", "/api/scripts", {"name": "s", "content": "echo", "extra": 1}),
    ("ScriptBody", "/api/scripts", {"name": "s2", "content": "echo", "id": "anything"}),
    ("BatchCreate", "/api/batch_commands", {"command_content": "id", "target_vps_ids": [0]}),
    ("BatchCreate", "/api/batch_commands", {"command_content": "id", "target_vps_ids": ["0"]}),
    ("BatchCreate", "/api/batch_commands", {"command_content": "id", "target_vps_ids": []}),
    ("BatchCreate", "/api/batch_commands", {"command_content": "id", "target_vps_ids": [2**31]}),
    ("BatchCreate", "/api/batch_commands", {"command_content": "", "target_vps_ids": [1]}),
    ("BatchCreate", "/api/batch_commands", {"command_content": " ", "target_vps_ids": [1]}),
    (
        "BatchCreate",
        "/api/batch_commands",
        {"script_id": 1, "command_content": "id", "target_vps_ids": [1]},
    ),
    (
        "BatchCreate",
        "/api/batch_commands",
        {"command_content": "id", "target_vps_ids": [1], "extra": True},
    ),
    (
        "BatchCreate",
        "/api/batch_commands",
        {"command_content": "id", "target_vps_ids": [1], "timeout_seconds": -1},
    ),
    (
        "BatchCreate",
        "/api/batch_commands",
        {
            "command_content": "id",
            "target_vps_ids": ["01"],
            "timeout_seconds": 5.0,
            "script_id": None,
        },
    ),
]


async def test_schema_and_server_refuse_the_same_bodies(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    import jsonschema_rs

    doc = (await client.get("/api/openapi.json")).json()
    with trio.fail_after(20):
        await add_vps(client, "strict-1")  # id 1: a batch naming it is valid
        for schema, path, body in STRICTNESS:
            root = {"components": doc["components"], "$ref": f"#/components/schemas/{schema}"}
            schema_ok = jsonschema_rs.validator_for(root).is_valid(body)
            response = await client.post(path, json=body)
            assert response.status_code < 500, (body, response.text)
            server_ok = response.status_code < 400
            assert schema_ok == server_ok, (schema, body, response.status_code, response.text)
        # Queries: limit=0 and offset=-1 refused by both (the schema's minimum).
        page = doc["paths"]["/api/batch_commands"]["get"]["parameters"]
        assert {p["name"]: p["schema"]["minimum"] for p in page} == {"limit": 1, "offset": 0}


async def test_a_taken_name_is_a_409(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        await add_vps(client, "taken")
        again = await client.post("/api/vps", json={"name": "taken"})
        assert again.status_code == 409
        assert again.json()["error"] == "conflict"


async def test_an_unread_body_never_stalls_the_connection(client: httpx.AsyncClient) -> None:
    """An answer given before the body is read (a 404 for the path) leaves the keep-alive
    connection usable: the next request on it is answered (schemathesis found it hanging)."""
    with trio.fail_after(20):
        for attempt in range(30):
            refused = await client.patch(f"/api/vps/null,{attempt}", json={"name": "x" * 50})
            assert refused.status_code == 404
            assert (await client.get("/api/vps")).status_code == 200


async def test_a_body_over_4_mib_is_413(client: httpx.AsyncClient) -> None:
    with trio.fail_after(20):
        big = b'{"name": "' + b"x" * (4 * 1024 * 1024) + b'"}'
        response = await client.post("/api/vps", content=big, headers=JSON)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert response.json()["error"]
        assert (await client.get("/api/vps")).status_code == 200


async def test_text_limits_are_bytes_of_utf8_and_the_schema_bounds_them(
    client: httpx.AsyncClient,
) -> None:
    """The schema's maxLength counts characters; the server's limit is UTF-8 bytes (the same
    number): what is over in characters is over in bytes, refused by both."""
    doc = (await client.get("/api/openapi.json")).json()
    content = doc["components"]["schemas"]["ScriptBody"]["properties"]["content"]
    with trio.fail_after(20):
        limit = content["maxLength"]
        over = {"name": "big", "content": "x" * (limit + 1)}
        assert (await client.post("/api/scripts", json=over)).status_code == 422
        wide = {"name": "wide", "content": "é" * (limit // 2 + 1)}  # within maxLength, > bytes
        refused = await client.post("/api/scripts", json=wide)
        assert refused.status_code == 422
        assert "bytes" in refused.text
