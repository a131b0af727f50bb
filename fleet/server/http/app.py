"""The HTTP application: ``create_app`` builds it with its middleware, error handlers and routes.

Every route needs a token (``Authorization: Bearer …`` or the UI's HttpOnly cookie) except the
UI's static files, ``/api/login`` and the OpenAPI document. Errors are always
``{"error": CODE, "detail": …}``; nothing answers a traceback, and bad input never a 500.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from fleet import core
from fleet.server.health import storage_fault

from . import routes_batches, routes_scripts, routes_ui, routes_vps
from .auth import presented_token, token_ok
from .common import ApiError, Services, error_response

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = ("/api/login", "/api/openapi.json", "/favicon.ico")
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(services: Services) -> QuartTrio:
    """Build the Quart-Trio app with every route."""
    app = QuartTrio("fleet.server", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=1,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )

    @app.before_request
    async def _authenticate() -> Response | None:
        path = request.path
        if request.method not in _READS and path.startswith("/api/"):
            services.health.check_writable()  # a lost store file: 503 before any work
        if not path.startswith("/api/") or path in _PUBLIC:
            return None
        if token_ok(services, presented_token(request.headers, request.cookies)):
            return None
        return error_response(401, "unauthorized", "a valid API token is required")

    @app.before_websocket
    async def _authenticate_ws() -> Response | None:
        # Browsers send cookies with cross-site WebSocket handshakes as far as SameSite allows;
        # an Origin that is not this server is refused outright (no cross-site hijacking).
        origin = websocket.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("Host", ""):
            return error_response(403, "forbidden", "cross-origin WebSocket refused")
        if token_ok(services, presented_token(websocket.headers, websocket.cookies)):
            return None
        return error_response(401, "unauthorized", "a valid API token is required")

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
        return error_response(422, exc.code, exc.errors)

    @app.errorhandler(core.FleetError)
    async def _fleet_error(exc: core.FleetError) -> Response:
        return error_response(exc.http_status, exc.code, str(exc))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        reason = storage_fault(exc)
        if reason is not None:
            if request.method not in _READS:
                services.health.failed(reason)
            return error_response(503, "storage_unavailable", reason)
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error (see the log)")

    for routes in (routes_ui, routes_vps, routes_scripts, routes_batches):
        routes.register(app, services)
    return app
