"""Users (admin only) and personal API tokens.

``/api/users``: create (argon2id password of at least 12 characters), list, show, change, delete;
the last admin can be neither deleted nor demoted (409). ``/api/tokens``: a user's own tokens
(an admin sees and revokes everyone's); a new token is shown once, in the ``POST`` answer.
Every change is audited in its own transaction, never with a password or token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from fleet import core
from fleet.core import Role
from fleet.server.agents import hash_secret, new_secret
from fleet.server.records import TokenRecord, UserRecord
from fleet.server.store import Store
from fleet.server.views import iso

from .auth import audit_note, current
from .common import Services, json_body, json_response, path_id

__all__ = ["register", "token_view", "user_view"]


def user_view(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role.value,
        "allowed_tags": list(user.allowed_tags),
        "has_password": user.has_password,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def token_view(token: TokenRecord) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "owner": token.username,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
    }


def register(app: QuartTrio, services: Services) -> None:
    db = services.db

    # -- users -------------------------------------------------------------------------------

    @app.get("/api/users")
    async def list_users() -> Response:
        return json_response([user_view(u) for u in await db.run(Store.list_users)])

    @app.post("/api/users")
    async def create_user() -> Response:
        f = core.validate_user_body(await json_body())
        password_hash = await services.passwords.hash(f["password"])
        details = {"username": f["username"], "role": f["role"].value}
        note = audit_note(
            "user.create", target_type="user", details=details | {"allowed_tags": f["allowed_tags"]}
        )
        user = await db.run(
            Store.create_user,
            f["username"],
            password_hash,
            f["role"],
            f["allowed_tags"],
            audit=note,
        )
        return json_response(user_view(user), 201)

    @app.get("/api/users/<user_id>")
    async def get_user(user_id: str) -> Response:
        return json_response(user_view(await db.run(Store.get_user, path_id(user_id, "user"))))

    @app.put("/api/users/<user_id>")
    async def update_user(user_id: str) -> Response:
        ident = path_id(user_id, "user")
        f = core.validate_user_body(await json_body(), partial=True)
        if f.get("role") is not None and f.get("allowed_tags") is None and f["role"] is Role.ADMIN:
            f["allowed_tags"] = []  # promoted to admin: every VPS
        password_hash = await services.passwords.hash(f["password"]) if "password" in f else None
        details: dict[str, Any] = {k: v for k, v in f.items() if k not in ("password", "role")}
        if "role" in f:
            details["role"] = f["role"].value
        if password_hash is not None:
            details["password_changed"] = True
        note = audit_note("user.update", target_type="user", target_id=ident, details=details)
        user = await db.run(
            Store.update_user,
            ident,
            username=f.get("username"),
            password_hash=password_hash,
            role=f.get("role"),
            allowed_tags=f.get("allowed_tags"),
            audit=note,
        )
        return json_response(user_view(user))

    @app.delete("/api/users/<user_id>")
    async def delete_user(user_id: str) -> Response:
        ident = path_id(user_id, "user")
        user = await db.run(Store.get_user, ident)
        note = audit_note(
            "user.delete", target_type="user", target_id=ident,
            details={"username": user.username},
        )  # fmt: skip
        await db.run(Store.delete_user, ident, audit=note)
        return Response("", status=204)

    # -- personal API tokens -----------------------------------------------------------------

    @app.get("/api/tokens")
    async def list_tokens() -> Response:
        principal = current()
        owner = None if principal.role is Role.ADMIN else principal.user_id
        return json_response([token_view(t) for t in await db.run(Store.list_tokens, owner)])

    @app.post("/api/tokens")
    async def create_token() -> Response:
        principal = current()
        f = core.validate_token_body(await json_body(), now=datetime.now(UTC))
        secret = new_secret()
        expires = iso(f["expires_at"])
        details = {"name": f["name"], "owner": principal.username, "expires_at": expires}
        note = audit_note("token.create", target_type="token", details=details)
        record = await db.run(
            Store.add_token,
            f["name"],
            hash_secret(secret),
            user_id=principal.user_id,
            expires_at=f["expires_at"],
            audit=note,
        )
        return json_response(token_view(record) | {"token": secret}, 201)

    @app.delete("/api/tokens/<token_id>")
    async def delete_token(token_id: str) -> Response:
        principal = current()
        ident = path_id(token_id, "token")
        owner = None if principal.role is Role.ADMIN else principal.user_id
        note = audit_note("token.delete", target_type="token", target_id=ident)
        await db.run(Store.delete_token, ident, owner_id=owner, audit=note)
        return Response("", status=204)
