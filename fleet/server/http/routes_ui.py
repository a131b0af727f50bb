"""What a browser or a client discovers: the web UI's files, the token login URL (``/?token=``,
exchanged for a session) and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from quart import Response, request, send_from_directory
from quart_trio import QuartTrio

import fleet
from fleet.server.agents import hash_secret
from fleet.server.store import Store

from . import openapi
from .auth import source_ip, start_session
from .common import Services, json_response
from .routes_session import login_failed

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
            # The token URL: exchange the token for a session (the cookie never holds it).
            if services.throttle.retry_after(None, source_ip()) is not None:
                return _redirect("/#/login?error=too-many-attempts")
            user = None
            if 0 < len(token) <= 256:
                digest, now = hash_secret(token), datetime.now(UTC)
                user = await services.db.run(Store.token_user, digest, now)
            if user is None:
                await login_failed(services, None, "that token is not valid")
                return _redirect("/#/login?error=invalid-token")
            response = _redirect("/")
            await start_session(services, response, user, method="token_url")
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

    @app.get("/api/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi.document())
