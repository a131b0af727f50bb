"""What a browser or a client discovers: the web UI's files, the UI's cookie session (login by
``/?token=`` or ``POST /api/login``, logout, ``/api/me``) and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from quart import Response, request, send_from_directory
from quart_trio import QuartTrio

import fleet

from . import openapi
from .auth import COOKIE, set_cookie, token_ok
from .common import Services, error_response, json_body, json_response

__all__ = ["register", "ui_dir"]


def ui_dir() -> Path:
    """The web UI's files: inside the wheel (``fleet/_ui``) or the source tree's ``ui/``."""
    package = Path(fleet.__file__).parent
    shipped = package / "_ui"
    return shipped if shipped.is_dir() else package.parent / "ui"


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def register(app: QuartTrio, services: Services) -> None:
    ui = ui_dir()

    @app.route("/")
    async def index() -> Response:
        token = request.args.get("token")
        if token is not None:
            if not token_ok(services, token):
                return _redirect("/#/login?error=invalid-token")
            response = _redirect("/")
            set_cookie(response, token, secure=services.config.tls)
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
        if not isinstance(token, str) or not token_ok(services, token):
            return error_response(401, "unauthorized", "that token is not valid")
        response = Response("", status=204)
        set_cookie(response, token, secure=services.config.tls)
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
