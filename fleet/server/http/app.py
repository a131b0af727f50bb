"""The HTTP application: ``create_app`` builds it with its middleware, error handlers and routes.

Before any handler runs, the caller is authenticated (``auth``: a bearer token or the UI's
session cookie) and the route's access rule applied (``policy.RULES``: public, signed in, or a
role); handlers then narrow what they show or touch to the caller's scope through ``policy``.
A request the cookie authenticates must also pass ``csrf`` when it changes anything. Errors are
always ``{"error": CODE, "detail": …}``; nothing answers a traceback, and bad input never a 500:
a 405 carries ``Allow``, a body slower than 30 s (``body_timeout_s``) is a 408, and request text
reaches the log only through ``%r``.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, g, has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from fleet import core
from fleet.server.health import storage_fault

from . import (
    policy,
    routes_accounts,
    routes_audit,
    routes_batches,
    routes_scripts,
    routes_session,
    routes_ui,
    routes_vps,
)
from .auth import authenticate
from .common import ApiError, Services, error_response
from .csrf import check_cookie_websocket, check_cookie_write

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _has_bearer(headers: Any) -> bool:
    """Whether the request presents a bearer token (which then decides alone, cookie or not)."""
    return str(headers.get("Authorization", ""))[:7].lower() == "bearer "


def create_app(services: Services) -> QuartTrio:
    """Build the Quart-Trio app with every route."""
    app = QuartTrio("fleet.server", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        BODY_TIMEOUT=services.config.body_timeout_s,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=1,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )

    async def _admit(method: str, rule: str | None, *, ws: bool) -> Response | None:
        """Authenticate the caller, apply the route's access rule (``policy.RULES``) and, for
        the session cookie, the CSRF rules (``csrf``)."""
        req = websocket if ws else request
        public_url = services.config.public_url
        try:
            # Browsers send cookies with cross-site WebSocket handshakes as far as SameSite
            # allows: any handshake that names an Origin must come from this very origin.
            if ws and "Origin" in req.headers:
                check_cookie_websocket(req, public_url=public_url)
            principal = await authenticate(services, req.headers, req.cookies)
            g.principal = principal
            if rule is None:  # no route matched: the API still needs a caller for its 404/405
                if principal is None and req.path.startswith("/api/"):
                    raise ApiError(401, "unauthorized", "a valid API token is required")
                return None
            found = policy.rule_for(method, rule, websocket=ws)
            if found is not None and found.access is policy.Access.PUBLIC:
                # A browser's write to a public route (a login) must not come from another
                # page either: no logging a victim in to someone else's account.
                if not ws and req.path.startswith("/api/") and "Origin" in req.headers:
                    check_cookie_write(request, public_url=public_url)
                return None
            policy.check_route(principal, method, rule, websocket=ws)
            assert principal is not None
            if principal.via == "session":
                # Authenticated by the cookie: refuse what another page could have sent
                # (csrf explains why). Bearer requests need no such check.
                if ws:
                    check_cookie_websocket(req, public_url=public_url)
                else:
                    check_cookie_write(request, public_url=public_url)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.detail)
        if not ws and method not in _READS:
            services.health.check_writable()  # a lost store file: 503 before any work
        return None

    @app.before_request
    async def _receive_body() -> None:
        # Read the whole body (≤ MAX_CONTENT_LENGTH, within BODY_TIMEOUT: 413, 408) before any
        # answer, even a 401 or 404: Hypercorn cannot reuse a keep-alive connection whose
        # request body was still arriving when the response ended, and the client's next
        # request on it would hang.
        if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", ""):
            await request.get_data()

    @app.before_request
    async def _authenticate() -> Response | None:
        rule = request.url_rule.rule if request.url_rule is not None else None
        return await _admit(request.method, rule, ws=False)

    @app.before_websocket
    async def _authenticate_ws() -> Response | None:
        rule = websocket.url_rule.rule if websocket.url_rule is not None else None
        return await _admit("GET", rule, ws=True)

    @app.after_request
    async def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.path.startswith("/api/"):
            response.headers.setdefault("Content-Security-Policy", _CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.detail)

    @app.errorhandler(core.ValidationError)
    async def _validation(exc: core.ValidationError) -> Response:
        return error_response(exc.http_status, exc.code, exc.errors)

    @app.errorhandler(core.FleetError)
    async def _fleet_error(exc: core.FleetError) -> Response:
        return error_response(exc.http_status, exc.code, str(exc))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        # werkzeug's own headers: a 405's ``Allow`` (RFC 9110 requires it, TRACE included).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        if exc.code in (408, 413):
            # The body was not read (too slow, too large): the connection cannot carry another
            # request, so say it closes (a client reusing it would wait for an answer forever).
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        reason = storage_fault(exc)
        if reason is not None:
            if has_request_context() and request.method not in _READS:
                services.health.failed(reason)
            return error_response(503, "storage_unavailable", reason)
        # Also reached from a WebSocket handler, where there is no ``request``; the path is
        # the client's text: ``%r`` keeps a ``%0A`` in it from forging a log line.
        where = request if has_request_context() else websocket if has_websocket_context() else None
        method = getattr(where, "method", "WEBSOCKET")
        path = where.path if where is not None else "?"
        logger.exception("unexpected error on %s %r", method, path)
        return error_response(500, "internal_error", "unexpected server error (see the log)")

    for routes in (
        routes_ui,
        routes_session,
        routes_accounts,
        routes_audit,
        routes_vps,
        routes_scripts,
        routes_batches,
    ):
        routes.register(app, services)
    return app
