"""Logging in and out: ``POST /api/login``, ``POST /api/logout``,
``GET /api/me``.

A login by password or by token makes a new session (``auth.start_session``); failures are
audited ``login_failed`` (never with the password or token) and throttled per username and per
address (``fleet.server.logins``): past the limit → 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

from quart import Response
from quart_trio import QuartTrio

import fleet
from fleet import core
from fleet.server.agents import hash_secret
from fleet.server.records import UserRecord
from fleet.server.store import Store

from .auth import audit_note, clear_cookie, current, source_ip, start_session
from .common import ApiError, Services, error_response, json_body, json_response

__all__ = ["me_view", "register"]

logger = logging.getLogger(__name__)


def me_view(user: UserRecord) -> dict[str, object]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role.value,
        "allowed_tags": list(user.allowed_tags),
    }


async def login_failed(services: Services, username: str | None, reason: str) -> ApiError:
    """Count and audit a failed login; the 401 to answer."""
    address = source_ip()
    services.throttle.failed(username, address)
    note = audit_note(
        "login_failed",
        actor=(username or "")[:64],
        target_type="user",
        details={"reason": reason},
        outcome="failure",
    )
    await services.db.run(Store.add_audit, note)
    logger.info("login refused for %r from %s: %s", (username or "")[:64], address, reason)
    return ApiError(401, "unauthorized", "wrong username or password" if username else reason)


def throttled(services: Services, username: str | None) -> Response | None:
    """The 429 to answer while this username or address is throttled, else ``None``."""
    wait = services.throttle.retry_after(username, source_ip())
    if wait is None:
        return None
    seconds = max(1, math.ceil(wait))
    detail = f"too many failed logins: try again in {seconds} s"
    response = error_response(429, "too_many_attempts", detail)
    response.headers["Retry-After"] = str(seconds)
    return response


def register(app: QuartTrio, services: Services) -> None:
    db = services.db

    @app.post("/api/login")
    async def login() -> Response:
        body = core.validate_login_body(await json_body())
        username = body.get("username")
        refusal = throttled(services, username)
        if refusal is not None:
            return refusal
        user: UserRecord | None
        if "token" in body:
            user = await db.run(Store.token_user, hash_secret(body["token"]), datetime.now(UTC))
            if user is None:
                raise await login_failed(services, None, "that token is not valid")
            method = "token"
        else:
            assert username is not None
            found = await db.run(Store.password_hash_of, username)
            stored = found[1] if found is not None else None
            if not await services.passwords.verify(stored, body["password"]) or found is None:
                raise await login_failed(services, username, "wrong username or password")
            user = found[0]
            services.throttle.succeeded(username)
            method = "password"
            if stored is not None and services.passwords.needs_rehash(stored):
                new_hash = await services.passwords.hash(body["password"])
                await db.run(Store.set_password_hash, user.id, new_hash)
        response = json_response(me_view(user))
        await start_session(services, response, user, method=method)
        return response

    @app.post("/api/logout")
    async def logout() -> Response:
        principal = current()
        if principal.via == "session":
            note = audit_note("logout", target_type="user", target_id=principal.user_id)
            await db.run(Store.delete_session, principal.credential, audit=note)
        response = Response("", status=204)
        clear_cookie(response)
        return response

    @app.get("/api/me")
    async def me() -> Response:
        user = await db.run(Store.get_user, current().user_id)
        return json_response(me_view(user) | {"version": fleet.__version__})
