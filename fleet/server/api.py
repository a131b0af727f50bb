"""The HTTP application: REST API, live feed, web UI, and the one error format.

Every route needs a token (``Authorization: Bearer …`` or the UI's HttpOnly cookie) except the
UI's static files, ``/api/login`` and the OpenAPI document. Errors are always
``{"error": CODE, "detail": …}``; nothing answers a traceback, and bad input never a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quart import Response, request, send_from_directory, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

import fleet
from fleet import core

from .agents import AgentRegistry, Credentials, hash_secret
from .config import ServerConfig
from .dbthread import DbThread
from .feed import FeedHub
from .supervisor import Supervisor

__all__ = ["ApiError", "Services", "create_app", "ui_dir"]

logger = logging.getLogger(__name__)

COOKIE = "fleet_token"
_PUBLIC = ("/api/login", "/api/openapi.json", "/favicon.ico")
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass
class Services:
    """Everything the routes use, built once in ``serve`` (no globals)."""

    config: ServerConfig
    db: DbThread
    credentials: Credentials
    registry: AgentRegistry
    supervisor: Supervisor
    hub: FeedHub
    token_hashes: set[str] = field(default_factory=set)
    grpc_address: str = ""
    http_address: str = ""


def ui_dir() -> Path:
    """The web UI's files: inside the wheel (``fleet/_ui``) or the source tree's ``ui/``."""
    package = Path(fleet.__file__).parent
    shipped = package / "_ui"
    return shipped if shipped.is_dir() else package.parent / "ui"


def error_response(status: int, code: str, detail: Any) -> Response:
    body = json.dumps({"error": code, "detail": detail})
    return Response(body, status=status, content_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


async def json_body() -> Any:
    """The request's JSON body; malformed JSON is a 400 that says where."""
    raw = await request.get_data(cache=False)
    if not raw:
        raise ApiError(400, "bad_request", "expected a JSON body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", "the body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"malformed JSON: {exc.msg} at {exc.pos}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_request", "the JSON body is nested too deeply") from exc


def int_arg(name: str, default: int, *, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "bad_request", f"{name} must be an integer in [{low}, {high}]")
    return int(raw)


def path_id(value: str, kind: str) -> int:
    parsed = core.parse_id(value)
    if parsed is None:
        raise ApiError(404, "not_found", f"no {kind} with id {value!r}")
    return parsed


def _token_ok(services: Services, token: str | None) -> bool:
    if not token:
        return False
    digest = hash_secret(token)
    return any(hmac.compare_digest(digest, known) for known in services.token_hashes)


def _presented_token(headers: Any, cookies: Any) -> str | None:
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return str(auth[7:].strip())
    cookie = cookies.get(COOKIE)
    return str(cookie) if cookie else None


def create_app(services: Services) -> QuartTrio:
    """Build the Quart-Trio app with every route."""
    from . import api_batches, api_inventory, openapi

    app = QuartTrio("fleet.server", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=1,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )
    ui = ui_dir()

    @app.before_request
    async def _authenticate() -> Response | None:
        path = request.path
        if not path.startswith("/api/") or path in _PUBLIC:
            return None
        if _token_ok(services, _presented_token(request.headers, request.cookies)):
            return None
        return error_response(401, "unauthorized", "a valid API token is required")

    @app.before_websocket
    async def _authenticate_ws() -> Response | None:
        # Browsers send cookies with cross-site WebSocket handshakes as far as SameSite allows;
        # an Origin that is not this server is refused outright (no cross-site hijacking).
        origin = websocket.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("Host", ""):
            return error_response(403, "forbidden", "cross-origin WebSocket refused")
        if _token_ok(services, _presented_token(websocket.headers, websocket.cookies)):
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
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error (see the log)")

    # --- UI and login ------------------------------------------------------------------------

    @app.route("/")
    async def index() -> Response:
        token = request.args.get("token")
        if token is not None:
            if not _token_ok(services, token):
                return _redirect("/#/login?error=invalid-token")
            response = _redirect("/")
            _set_cookie(response, token, secure=services.config.tls)
            return response
        response = await send_from_directory(ui, "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.route("/ui/<path:name>")
    async def ui_file(name: str) -> Response:
        response = await send_from_directory(ui, name)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.route("/favicon.ico")
    async def favicon() -> Response:
        return await send_from_directory(ui, "favicon.svg", mimetype="image/svg+xml")

    @app.post("/api/login")
    async def login() -> Response:
        body = await json_body()
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not _token_ok(services, token):
            return error_response(401, "unauthorized", "that token is not valid")
        response = Response("", status=204)
        _set_cookie(response, token, secure=services.config.tls)
        return response

    @app.post("/api/logout")
    async def logout() -> Response:
        response = Response("", status=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/me")
    async def me() -> Response:
        return json_response({"authenticated": True, "version": fleet.__version__})

    @app.get("/api/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi.document())

    api_inventory.register(app, services)
    api_batches.register(app, services)
    return app


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def _set_cookie(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=secure,
        max_age=30 * 24 * 3600,
    )
