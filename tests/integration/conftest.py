"""A real server (and real or fake agents) in one trio run, on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio

from fleet.server.config import ServerConfig
from fleet.server.http.feed import Overrun
from fleet.server.serve import Endpoints, serve
from fleet.server.store import Store
from tests.aioloop import tolerate_collected_channels


@pytest.fixture
async def loop() -> AsyncIterator[Any]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(tolerate_collected_channels)
        yield loop


@pytest.fixture
def server_config(tmp_path: Path, request: pytest.FixtureRequest) -> ServerConfig:
    """Test settings; parametrize indirectly with a dict of changes."""
    return ServerConfig.for_test(tmp_path / "data", **getattr(request, "param", {}))


@pytest.fixture
async def server(loop: Any, server_config: ServerConfig) -> AsyncIterator[Endpoints]:
    async with trio.open_nursery() as nursery:
        endpoints: Endpoints = await nursery.start(serve, server_config)
        yield endpoints
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(server: Endpoints) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.http_url,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    ) as client:
        yield client


async def add_vps(
    client: httpx.AsyncClient, name: str, tags: list[str] | None = None
) -> dict[str, Any]:
    response = await client.post("/api/vps", json={"name": name, "tags": tags or []})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def wait_online(server: Endpoints, vps_id: int, online: bool = True) -> None:
    """Wait (on registry events, no polling) until the VPS is online / offline."""
    registry = server.services.registry
    changed = trio.Event()

    def listener(changed_id: int, _online: bool) -> None:
        if changed_id == vps_id:
            changed.set()

    with registry.subscribe(listener):
        while registry.is_online(vps_id) != online:
            await changed.wait()
            changed = trio.Event()


async def batch_view(server: Endpoints, batch_id: str) -> dict[str, Any]:
    services = server.services
    run = services.supervisor.get(batch_id)
    if run is not None:
        return run.view()
    from fleet.server.views import batch_view as view

    return view(await services.db.run(Store.get_batch, batch_id))


async def wait_batch(
    server: Endpoints,
    batch_id: str,
    predicate: Callable[[dict[str, Any]], bool] = lambda b: (
        b["overall_status"] not in ("PENDING", "IN_PROGRESS", "TERMINATING")
    ),
) -> dict[str, Any]:
    """Wait on the batch's feed events until ``predicate(GET body)`` holds; return the body."""
    with server.services.hub.subscribe(batch_id) as sub:
        while True:
            view = await batch_view(server, batch_id)
            if predicate(view):
                return view
            try:
                await sub.get()
            except Overrun:
                pass


def task_of(batch: dict[str, Any], vps_name: str) -> dict[str, Any]:
    return next(t for t in batch["tasks"] if t["vps_name"] == vps_name)
