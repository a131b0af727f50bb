"""REST routes and the live feed for batches.

``/ws/batch_commands/{id}`` sends a ``SNAPSHOT`` (the batch as ``GET`` shows it) and then the
batch's events as the supervisor publishes them; an unknown batch is closed with 1008.
"""

from __future__ import annotations

import logging

import trio
from quart import Response, request, send_file, websocket
from quart_trio import QuartTrio

from fleet import core
from fleet.core import STREAMS
from fleet.server.store import BatchRecord, Store
from fleet.server.views import batch_summary_view, batch_view

from . import policy
from .auth import audit_note, current
from .common import (
    ApiError,
    Services,
    command_path_id,
    int_arg,
    json_body,
    json_response,
    pump,
)
from .launch import create_from_body, rerun

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(app: QuartTrio, services: Services) -> None:
    db = services.db
    supervisor = services.supervisor

    async def load(batch_id: str) -> BatchRecord:
        """The batch, if the caller may see it (else NotFound)."""
        batch_id = command_path_id(batch_id, "batch")
        run = supervisor.get(batch_id)
        record = run.snapshot() if run is not None else await db.run(Store.get_batch, batch_id)
        await policy.check_batch(services, current(), batch_id, [c.vps_id for c in record.children])
        return record

    def accepted(record: BatchRecord) -> Response:
        n = len(record.children)
        body = {
            "batch_command_id": record.id,
            "status": "PENDING",
            "message": f"Batch command accepted for {n} VPS(es).",
        }
        if record.rerun_of is not None:
            body["rerun_of"] = record.rerun_of
        return json_response(body, 202)

    @app.post("/api/batch_commands")
    async def create_batch() -> Response:
        return accepted(await create_from_body(services, await json_body(), current()))

    @app.post("/api/batch_commands/<batch_id>/rerun")
    async def rerun_batch(batch_id: str) -> Response:
        body = await json_body(optional=True)
        original = await load(batch_id)
        if not original.status.is_terminal:
            raise ApiError(
                409,
                "conflict",
                f"batch {batch_id} is still running ({original.status.value}): "
                "re-run it once it has finished",
            )
        return accepted(await rerun(services, original, body, current()))

    @app.get("/api/batch_commands")
    async def list_batches() -> Response:
        limit = int_arg("limit", 50, low=1, high=500)
        offset = int_arg("offset", 0, low=0, high=10**9)
        # Taken before the store is read: a batch that finishes meanwhile leaves memory once
        # its final state is committed, which the read may have missed.
        live = {run.id: run for run in supervisor.running()}
        principal = current()
        visible = None  # every VPS: no need to read them all (10,000 rows per page view)
        if principal.scoped:
            visible = policy.visible_vps_ids(principal, await db.run(Store.list_vps))
        records, total = await db.run(
            Store.list_batches, limit=limit, offset=offset, visible_vps=visible
        )
        items = []
        for record in records:
            run = live.get(record.id)
            if run is not None:
                record = run.summary(record)
            items.append(batch_summary_view(record))
        return json_response({"items": items, "total": total, "limit": limit, "offset": offset})

    @app.get("/api/batch_commands/<batch_id>")
    async def get_batch(batch_id: str) -> Response:
        return json_response(batch_view(await load(batch_id)))

    @app.post("/api/batch_commands/<batch_id>/terminate")
    async def terminate_batch(batch_id: str) -> Response:
        batch_id = command_path_id(batch_id, "batch")
        await load(batch_id)  # exists and visible
        await db.run(
            Store.add_audit, audit_note("batch.terminate", target_type="batch", target_id=batch_id)
        )
        run = supervisor.get(batch_id)
        if run is not None:
            run.terminate()
            status = run.batch.status
        else:
            status = (await db.run(Store.get_batch, batch_id)).status
            if services.cluster is not None and not status.is_terminal:
                await services.cluster.request_terminate(batch_id, None)  # another node runs it
        return json_response({"batch_command_id": batch_id, "overall_status": status.value}, 202)

    @app.post("/api/batch_commands/<batch_id>/tasks/<child_id>/terminate")
    async def terminate_child(batch_id: str, child_id: str) -> Response:
        batch_id = command_path_id(batch_id, "batch")
        child_id = command_path_id(child_id, "task")
        batch = await load(batch_id)
        if all(c.id != child_id for c in batch.children):
            raise core.NotFound("task", child_id)
        note = audit_note(
            "child.terminate", target_type="child", target_id=child_id,
            details={"batch_command_id": batch_id},
        )  # fmt: skip
        await db.run(Store.add_audit, note)
        run = supervisor.get(batch_id)
        if run is not None and child_id in run.batch.children:
            run.terminate(child_id)
            status = run.batch.children[child_id].status
        elif run is not None:
            raise core.NotFound("task", child_id)
        else:
            status = (await db.run(Store.get_child, batch_id, child_id)).status
            if services.cluster is not None and not status.is_terminal:
                await services.cluster.request_terminate(batch_id, child_id)
        return json_response({"child_command_id": child_id, "status": status.value}, 202)

    @app.get("/api/batch_commands/<batch_id>/tasks/<child_id>/output")
    async def output(batch_id: str, child_id: str) -> Response:
        batch_id = command_path_id(batch_id, "batch")
        child_id = command_path_id(child_id, "task")
        stream = request.args.get("stream", "stdout")
        if stream not in STREAMS:
            raise core.ValidationError([{"field": "stream", "reason": "stdout or stderr"}])
        child = await db.run(Store.get_child, batch_id, child_id)
        await policy.check_batch(services, current(), batch_id)  # the caller may see it
        path = child.stdout_log_path if stream == "stdout" else child.stderr_log_path
        name = f"{child.vps_name}-{child_id[:8]}.{stream}.log"
        if services.cluster is not None:  # any node serves it: the database has the bytes
            data = await services.cluster.output(child_id, stream)
            response = Response(data, status=200, content_type="application/octet-stream")
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
            return response
        if path is None or not await trio.Path(path).exists():
            response = Response(b"", status=200, content_type="application/octet-stream")
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
            return response
        return await send_file(
            path,
            mimetype="application/octet-stream",
            as_attachment=True,
            attachment_filename=name,
            add_etags=False,
        )

    @app.websocket("/ws/batch_commands/<batch_id>")
    async def batch_feed(batch_id: str) -> None:
        with services.hub.subscribe(batch_id) as sub:
            try:
                snapshot = await load(batch_id)  # unknown, or not visible to the caller
            except core.NotFound:
                await websocket.accept()
                await websocket.close(1008, "no such batch")
                return
            await websocket.send_json({"type": "SNAPSHOT", "batch": batch_view(snapshot)})
            await pump(sub)
