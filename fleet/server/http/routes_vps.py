"""REST routes and the live feed for VPSes (with their one-time agent secrets).

``/ws/vps`` sends a ``VPS_SNAPSHOT`` (every VPS, as ``GET /api/vps`` shows it) and then
``VPS_UPDATE`` events. An update is partial: it carries the VPS ``id`` and only what changed when
an agent connects (``online``, ``last_seen_at``, ``hostname``, ``os``, ``agent_version``) or drops
(``online``, ``last_seen_at``); a client merges it into the row it has.
"""

from __future__ import annotations

from typing import Any

from quart import Response, websocket
from quart_trio import QuartTrio

import fleet
from fleet import core
from fleet.server.agents import hash_secret, new_secret
from fleet.server.store import Store, VpsRecord
from fleet.server.supervisor import VPS_TOPIC
from fleet.server.views import vps_view

from . import policy
from .auth import audit_note, current
from .common import Services, json_body, json_response, path_id, pump

__all__ = ["agent_command", "register"]


def agent_command(services: Services, vps_id: int) -> str:
    """The command line that starts this VPS's agent (the secret is read from a file)."""
    return (
        f"fleet-agent --server {services.config.public_grpc or services.grpc_address} "
        f"--vps-id {vps_id} "
        f"--secret-file /etc/fleet-agent/secret{' --tls' if services.config.tls else ''}"
    )


def _agent_install() -> str:
    """How to install an agent that speaks this server's protocol version (on Python ≥ 3.10)."""
    return f"python3 -m pip install '{fleet.DISTRIBUTION}=={fleet.__version__}'"


def register(app: QuartTrio, services: Services) -> None:
    db = services.db

    def view(record: VpsRecord) -> dict[str, Any]:
        return vps_view(record, online=services.registry.is_online(record.id))

    @app.get("/api/vps")
    async def list_vps() -> Response:
        principal = current()
        records = await db.run(Store.list_vps)
        return json_response([view(r) for r in records if policy.vps_visible(principal, r)])

    @app.post("/api/vps")
    async def create_vps() -> Response:
        fields = core.validate_vps_body(await json_body())
        secret = new_secret()
        note = audit_note("vps.create", target_type="vps", details=fields)
        record = await db.run(
            Store.create_vps, fields["name"], fields["tags"], hash_secret(secret), audit=note
        )
        services.credentials.set(record.id, hash_secret(secret))
        body = view(record) | {
            "agent_secret": secret,
            "agent_command": agent_command(services, record.id),
            "agent_install": _agent_install(),
        }
        return json_response(body, 201)

    @app.get("/api/vps/<vps_id>")
    async def get_vps(vps_id: str) -> Response:
        record = await db.run(Store.get_vps, path_id(vps_id, "vps"))
        if not policy.vps_visible(current(), record):
            raise core.NotFound("vps", record.id)
        return json_response(view(record))

    @app.route("/api/vps/<vps_id>", methods=["PATCH", "PUT"])
    async def update_vps(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        fields = core.validate_vps_body(await json_body(), partial=True)
        await db.run(Store.update_vps, ident, name=fields.get("name"), tags=fields.get("tags"))
        return json_response(view(await db.run(Store.get_vps, ident)))

    @app.delete("/api/vps/<vps_id>")
    async def delete_vps(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        note = audit_note("vps.delete", target_type="vps", target_id=ident)
        await db.run(Store.delete_vps, ident, audit=note)
        services.credentials.remove(ident)
        services.registry.close(ident, "this VPS was deleted")
        return Response("", status=204)

    @app.post("/api/vps/<vps_id>/rotate_secret")
    async def rotate_secret(vps_id: str) -> Response:
        ident = path_id(vps_id, "vps")
        secret = new_secret()
        note = audit_note("vps.rotate_secret", target_type="vps", target_id=ident)
        await db.run(Store.set_vps_secret, ident, hash_secret(secret), audit=note)
        services.credentials.set(ident, hash_secret(secret))
        services.registry.close(ident, "the agent secret was rotated")
        return json_response(
            {
                "id": ident,
                "agent_secret": secret,
                "agent_command": agent_command(services, ident),
                "agent_install": _agent_install(),
            }
        )

    @app.websocket("/ws/vps")
    async def vps_feed() -> None:
        principal = current()
        records = await db.run(Store.list_vps)
        visible = policy.visible_vps_ids(principal, records)
        accept = None if visible is None else (lambda e: e.get("vps", {}).get("id") in visible)
        with services.hub.subscribe(VPS_TOPIC, accept=accept) as sub:
            records = await db.run(Store.list_vps)
            shown = [view(r) for r in records if visible is None or r.id in visible]
            await websocket.send_json({"type": "VPS_SNAPSHOT", "vps": shown})
            await pump(sub)
