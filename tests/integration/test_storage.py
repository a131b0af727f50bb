"""Storage faults seen through the API: 503 ``storage_unavailable``, never a 500, and the
server serves again once the fault is gone."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
import trio

from fleet.server.serve import Endpoints
from fleet.server.store import Store


async def test_a_full_disk_answers_503_and_recovers(
    server: Endpoints, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.create_vps

    def full(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    with trio.fail_after(10):
        monkeypatch.setattr(Store, "create_vps", full)
        response = await client.post("/api/vps", json={"name": "a", "tags": []})
        assert response.status_code == 503
        assert response.json()["error"] == "storage_unavailable"
        assert "disk is full" in response.json()["detail"]
        assert (await client.get("/api/vps")).status_code == 200  # reads still work
        monkeypatch.setattr(Store, "create_vps", real)
        response = await client.post("/api/vps", json={"name": "a", "tags": []})
        assert response.status_code == 201


async def test_a_lost_store_refuses_writes_and_says_why(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        server.services.health.store_lost("the store file x was deleted under the running server")
        response = await client.post("/api/vps", json={"name": "a", "tags": []})
        assert response.status_code == 503
        assert response.json() == {
            "error": "storage_unavailable",
            "detail": "the store file x was deleted under the running server",
        }
        assert (await client.get("/api/vps")).status_code == 200
