"""API tokens: presented as ``Authorization: Bearer …`` or as the UI's HttpOnly cookie.

Tokens are kept as digests (``Services.token_hashes``) and compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any

from quart import Response

from fleet.server.agents import hash_secret

from .common import Services

__all__ = ["COOKIE", "presented_token", "set_cookie", "token_ok"]

COOKIE = "fleet_token"


def token_ok(services: Services, token: str | None) -> bool:
    if not token:
        return False
    digest = hash_secret(token)
    return any(hmac.compare_digest(digest, known) for known in services.token_hashes)


def presented_token(headers: Any, cookies: Any) -> str | None:
    """The bearer token of ``headers``, else the session cookie, else ``None``."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return str(auth[7:].strip())
    cookie = cookies.get(COOKIE)
    return str(cookie) if cookie else None


def set_cookie(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=secure,
        max_age=30 * 24 * 3600,
    )
