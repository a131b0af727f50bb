"""Cross-site request forgery: what a cookie-authenticated request must show.

A browser attaches the session cookie to requests that another page makes: a form on a sibling
port or subdomain is *same-site*, so ``SameSite=Strict`` lets it through. Two checks close that:

* ``Content-Type: application/json`` (else 415): a cross-origin page cannot send it without a
  CORS preflight, which this server never grants; a form can only send ``text/plain``,
  ``application/x-www-form-urlencoded`` or ``multipart/form-data``;
* ``Origin`` equal to the server's own origin, scheme included (else 403): browsers send it with
  every request that is not a ``GET``/``HEAD`` and with every WebSocket handshake.

Both apply to requests authenticated *by the cookie* that change anything (any method but
``GET``, ``HEAD``, ``OPTIONS``) and to WebSocket handshakes (``Origin`` only). Bearer-token
requests need neither: a browser never adds an ``Authorization`` header by itself.

The server's own origin is ``--public-url`` when it is set (behind a reverse proxy that
terminates TLS, the browser's scheme is not the one the server sees), else the request's
scheme and ``Host`` header.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .common import ApiError

__all__ = ["SAFE_METHODS", "check_cookie_websocket", "check_cookie_write", "origin_of"]

#: Methods that change nothing: a cookie alone is enough for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_WS_SCHEMES = {"ws": "http", "wss": "https"}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url`` (lower case, default port dropped), else ``None``."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    if ":" in host:
        host = f"[{host}]"
    shown = "" if port is None or str(port) == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown}"


def _own_origin(request: Any, public_url: str | None) -> str | None:
    if public_url:
        return origin_of(public_url)
    scheme = _WS_SCHEMES.get(request.scheme, request.scheme)
    host = request.headers.get("Host", "")
    if not host or any(c in host for c in "/?#@\\ "):
        return None
    return origin_of(f"{scheme}://{host}")


def _check_origin(request: Any, public_url: str | None) -> None:
    presented = request.headers.get("Origin")
    if presented is None:
        raise ApiError(403, "forbidden", "a browser request without an Origin header is refused")
    own = _own_origin(request, public_url)
    if own is None or origin_of(presented) != own:
        raise ApiError(
            403,
            "forbidden",
            "cross-origin request refused: its Origin is not this server's"
            " (behind a reverse proxy, set --public-url)",
        )


def check_cookie_write(request: Any, *, public_url: str | None = None) -> None:
    """Refuse a cookie-authenticated request that could be forged by another page.

    Call it for every request the session cookie authenticated (never for bearer tokens).
    ``GET``, ``HEAD`` and ``OPTIONS`` pass; anything else must be JSON from this very origin.

    Raises:
        ApiError: 415 ``unsupported_media_type`` without ``Content-Type: application/json``,
            403 ``forbidden`` when ``Origin`` is missing or another origin.
    """
    if request.method in SAFE_METHODS:
        return
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "a request authenticated by the session cookie must send Content-Type: "
            "application/json",
        )
    _check_origin(request, public_url)


def check_cookie_websocket(websocket: Any, *, public_url: str | None = None) -> None:
    """Refuse a cookie-authenticated WebSocket handshake from another origin (scheme included).

    Raises:
        ApiError: 403 ``forbidden``.
    """
    _check_origin(websocket, public_url)
