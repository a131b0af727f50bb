"""REST routes for the inventory: VPSes (with their one-time agent secrets) and saved scripts."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from fleet import core

from .agents import hash_secret, new_secret
from .api import Services, json_body, json_response, path_id
from .store import Store, VpsRecord
from .views import script_view, vps_view

__all__ = ["register"]


def _agent_command(services: Services, vps_id: int) -> str:
    return (
        f"fleet-agent --server {services.config.public_grpc or services.grpc_address} "
        f"--vps-id {vps_id} "
        f"--secret-file /etc/fleet-agent/secret{' --tls' if services.config.tls else ''}"
    )


def register(app: QuartTrio, services: Services) -> None:
    db = services.db

    def view(record: VpsRecord) -> dict[str, Any]:
        return vps_view(record, online=services.registry.is_online(record.id))

    @app.get("/api/vps")
    async def list_vps() -> Response:
        records = await db.run(Store.list_vps)
        return json_response([view(r) for r in records])

    @app.post("/api/vps")
    async def create_vps() -> Response:
        fields = core.validate_vps_body(await json_body())
        secret = new_secret()
        record = await db.run(Store.create_vps, fields["name"], fields["tags"], hash_secret(secret))
        services.credentials.set(record.id, hash_secret(secret))
        body = view(record) | {
            "agent_secret": secret,
            "agent_command": _agent_command(services, record.id),
        }
        return json_response(body, 201)

    @app.get("/api/vps/<vps_id>")
    async def get_vps(vps_id: str) -> Response:
        return json_response(view(await db.run(Store.get_vps, path_id(vps_id, "vps"))))

    @app.route("/api/vps/<vps_id>", methods=["PATCH", "PUT"])
    async def update_vps(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        fields = core.validate_vps_body(await json_body(), partial=True)
        await db.run(Store.update_vps, ident, name=fields.get("name"), tags=fields.get("tags"))
        return json_response(view(await db.run(Store.get_vps, ident)))

    @app.delete("/api/vps/<vps_id>")
    async def delete_vps(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        await db.run(Store.delete_vps, ident)
        services.credentials.remove(ident)
        services.registry.close(ident, "this VPS was deleted")
        return Response("", status=204)

    @app.post("/api/vps/<vps_id>/rotate_secret")
    async def rotate_secret(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        secret = new_secret()
        await db.run(Store.set_vps_secret, ident, hash_secret(secret))
        services.credentials.set(ident, hash_secret(secret))
        services.registry.close(ident, "the agent secret was rotated")
        return json_response(
            {
                "id": ident,
                "agent_secret": secret,
                "agent_command": _agent_command(services, ident),
            }
        )

    @app.get("/api/scripts")
    async def list_scripts() -> Response:
        return json_response([script_view(s) for s in await db.run(Store.list_scripts)])

    @app.post("/api/scripts")
    async def create_script() -> Response:
        f = core.validate_script_body(await json_body())
        record = await db.run(Store.create_script, f["name"], f["description"], f["content"])
        return json_response(script_view(record), 201)

    @app.get("/api/scripts/<script_id>")
    async def get_script(script_id: str) -> Response:
        return json_response(
            script_view(await db.run(Store.get_script, path_id(script_id, "script")))
        )

    @app.put("/api/scripts/<script_id>")
    async def update_script(script_id: str) -> Response:
        ident = path_id(script_id, "script")
        f = core.validate_script_body(await json_body())
        await db.run(Store.update_script, ident, f["name"], f["description"], f["content"])
        return json_response(script_view(await db.run(Store.get_script, ident)))

    @app.delete("/api/scripts/<script_id>")
    async def delete_script(script_id: str) -> Response:
        await db.run(Store.delete_script, path_id(script_id, "script"))
        return Response("", status=204)
