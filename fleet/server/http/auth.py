"""Authentication: who is calling, proved by a bearer API token or the UI's session cookie.

* ``Authorization: Bearer <token>``: an API token (the first-start admin token, or a personal
  token), acting as its owner. Expired or revoked → 401.
* The ``fleet_session`` cookie (HttpOnly, SameSite=Strict): a random session id made at login
  (password, token URL, or ``POST /api/login {token}``) and ended by ``POST /api/logout``. The
  cookie never holds a token.

Tokens and session ids are 256-bit random strings, so the store keeps only their SHA-256 digests
and looks a digest up by equality (an index lookup that reveals nothing usable about the
secret). Every request reads the store, so a revocation, a role change or a deleted user takes
effect at once on every server of a cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Response, g, request, websocket

from fleet.server.agents import hash_secret, new_secret
from fleet.server.records import AuditNote, UserRecord
from fleet.server.store import Store

from .common import Services
from .policy import Principal

__all__ = [
    "COOKIE",
    "SESSION_LIFETIME",
    "audit_note",
    "authenticate",
    "clear_cookie",
    "current",
    "source_ip",
    "start_session",
]

COOKIE = "fleet_session"
SESSION_LIFETIME = timedelta(days=30)


def _bearer(headers: Any) -> str | None:
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return str(auth[7:].strip()) or None
    return None


async def authenticate(services: Services, headers: Any, cookies: Any) -> Principal | None:
    """The principal of a request's bearer token, else of its session cookie, else ``None``.

    A request that presents a bearer token is judged by it alone (no fallback to the cookie).
    """
    now = datetime.now(UTC)
    token = _bearer(headers)
    if token is not None:
        if len(token) > 256:
            return None
        digest = hash_secret(token)
        user = await services.db.run(Store.token_user, digest, now)
        return None if user is None else Principal.of(user, via="token", credential=digest)
    session = cookies.get(COOKIE)
    if not session or len(session) > 256:
        return None
    digest = hash_secret(str(session))
    user = await services.db.run(Store.session_user, digest, now)
    return None if user is None else Principal.of(user, via="session", credential=digest)


def current() -> Principal:
    """The authenticated caller of this request or WebSocket (set by the app before routing)."""
    principal: Principal | None = g.get("principal")
    if principal is None:  # pragma: no cover - the app authenticates every non-public route
        raise AssertionError("no authenticated principal for this route")
    return principal


def source_ip() -> str | None:
    try:
        return request.remote_addr
    except RuntimeError:
        return websocket.remote_addr


def audit_note(
    action: str,
    *,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: object = None,
    details: dict[str, Any] | None = None,
    outcome: str = "success",
) -> AuditNote:
    """An audit entry for this request, by the current principal unless ``actor`` is given."""
    return AuditNote(
        actor=actor if actor is not None else current().username,
        action=action,
        source_ip=source_ip(),
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        details=details or {},
        outcome=outcome,
    )


async def start_session(
    services: Services, response: Response, user: UserRecord, *, method: str
) -> None:
    """Log ``user`` in: a new session (audited ``login``) whose id goes in the cookie."""
    session = new_secret()
    note = audit_note(
        "login", actor=user.username, target_type="user", target_id=user.id,
        details={"method": method},
    )  # fmt: skip
    expires = datetime.now(UTC) + SESSION_LIFETIME
    await services.db.run(
        Store.create_session, user.id, hash_secret(session), expires_at=expires, audit=note
    )
    response.set_cookie(
        COOKIE,
        session,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=services.config.tls,
        max_age=int(SESSION_LIFETIME.total_seconds()),
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")
