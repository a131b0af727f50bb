"""REST routes for saved scripts (every role reads them; operators and admins change them)."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fleet import core
from fleet.server.store import Store
from fleet.server.views import script_view

from .auth import audit_note
from .common import Services, json_body, json_response, path_id

__all__ = ["register"]


def register(app: QuartTrio, services: Services) -> None:
    db = services.db

    @app.get("/api/scripts")
    async def list_scripts() -> Response:
        return json_response([script_view(s) for s in await db.run(Store.list_scripts)])

    @app.post("/api/scripts")
    async def create_script() -> Response:
        f = core.validate_script_body(await json_body())
        params = [p.stored() for p in f["parameters"]]
        note = audit_note("script.create", target_type="script", details={"name": f["name"]})
        record = await db.run(
            Store.create_script, f["name"], f["description"], f["content"], params, audit=note
        )
        return json_response(script_view(record), 201)

    @app.get("/api/scripts/<script_id>")
    async def get_script(script_id: str) -> Response:
        ident = path_id(script_id, "script")
        return json_response(script_view(await db.run(Store.get_script, ident)))

    @app.put("/api/scripts/<script_id>")
    async def update_script(script_id: str) -> Response:
        ident = path_id(script_id, "script")
        body = await json_body()
        f = core.validate_script_body(body)
        params = [p.stored() for p in f["parameters"]]
        if isinstance(body, dict) and "parameters" not in body:  # kept unless given
            params = list((await db.run(Store.get_script, ident)).parameters)
        note = audit_note(
            "script.update", target_type="script", target_id=ident, details={"name": f["name"]}
        )
        await db.run(
            Store.update_script,
            ident,
            f["name"],
            f["description"],
            f["content"],
            params,
            audit=note,
        )
        return json_response(script_view(await db.run(Store.get_script, ident)))

    @app.delete("/api/scripts/<script_id>")
    async def delete_script(script_id: str) -> Response:
        ident = path_id(script_id, "script")
        note = audit_note("script.delete", target_type="script", target_id=ident)
        await db.run(Store.delete_script, ident, audit=note)
        return Response("", status=204)
