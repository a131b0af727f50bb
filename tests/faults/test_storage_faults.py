"""Storage faults under a running batch: the data directory's disk fills up (a small tmpfs),
and PostgreSQL drops the server's connections."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from .checks import check, post_batch, post_streaming_batch, wait_batch
from .cluster import FINAL
from .conftest import OpenFleet

pytestmark = pytest.mark.faults

GRACE = 2.0
BOUND = 20.0
PG = "postgres://postgres@127.0.0.1:5432"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data`` on an 8 MiB tmpfs (skipped, saying why, when it cannot be mounted)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(data)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def test_disk_full_under_a_batch(open_fleet: OpenFleet, small_disk: Path) -> None:
    """Six children print ~190 KB each into a data directory with 400 KB left: every log
    holds exactly what it says it holds (``stdout_bytes``, and from which byte output was
    lost); a write during the fault answers 503 storage_unavailable, never 500; once space
    returns the server takes a new batch without a restart."""
    with trio.fail_after(150):
        async with open_fleet(n=6, grace=GRACE) as fleet:
            ballast = small_disk / "ballast"
            ballast.write_bytes(bytes(max(_free(small_disk) - 400_000, 0)))
            content, expected = fleet.command("d", lines=15000, interval=0)
            batch = await post_batch(fleet, content)
            with trio.fail_after(30):
                while _free(small_disk) > 16_384:  # noqa: ASYNC110 - a file system has no event
                    await trio.sleep(0.05)
            fault_at = trio.current_time()
            async with fleet.server.client() as client:
                during = await client.post(
                    "/api/batch_commands",
                    json={"command_content": "true", "target_vps_ids": [fleet.agents[0].vps_id]},
                )
            assert during.status_code in (202, 503), during.text
            if during.status_code == 503:
                assert during.json()["error"] == "storage_unavailable"
            with trio.fail_after(GRACE + BOUND):
                await wait_batch(fleet, batch, lambda b: b["overall_status"] in FINAL)
            ballast.unlink()  # space returns
            row = await check(fleet, "disk full (8 MiB tmpfs, 400 KB left)", batch, "d",
                              expected, fault_at=fault_at, bound=BOUND,
                              back={a.name for a in fleet.agents},
                              allowed={"SUCCESS"})  # fmt: skip
            assert row["bytes"] < len(expected) * len(fleet.agents)  # the fault did bite
            body = await wait_batch(fleet, batch, lambda b: True)
            assert any("was lost" in (t["error_message"] or "") for t in body["tasks"]), body
            after = await _post_when_writable(fleet, "echo recovered")
            with trio.fail_after(BOUND):
                body = await wait_batch(fleet, after, lambda b: b["overall_status"] in FINAL)
            assert body["overall_status"] == "COMPLETED_SUCCESSFULLY", body


async def _post_when_writable(fleet: Any, content: str) -> str:
    """POST once the server writes again (it recovers by itself, with a back-off)."""
    with trio.fail_after(BOUND):
        while True:
            async with fleet.server.client() as client:
                response = await client.post(
                    "/api/batch_commands",
                    json={"command_content": content,
                          "target_vps_ids": [a.vps_id for a in fleet.agents]},
                )  # fmt: skip
            if response.status_code == 202:
                return str(response.json()["batch_command_id"])
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "storage_unavailable"
            await trio.sleep(0.2)


@pytest.fixture
def pg_database() -> Iterator[tuple[str, Any]]:
    """A fresh PostgreSQL database on the local server, dropped afterwards (skipped, saying
    why, when there is none); also an admin connection to ``postgres`` for the fault."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=3)
    except psycopg2.Error as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {str(exc).strip()}")
    admin.autocommit = True
    name = f"fleet_faults_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield name, admin
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


async def test_postgres_connections_dropped_under_a_batch(
    open_fleet: OpenFleet, pg_database: tuple[str, Any]
) -> None:
    """PostgreSQL "restarts" under a running batch: every backend of this test's own database
    is terminated (``pg_terminate_backend``), twice. Restarting the machine's PostgreSQL
    itself would break other developers' tests on this shared server; to the Fleet server a
    terminated backend is the same event (its connection dies under it)."""
    name, admin = pg_database

    def terminate() -> int:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            return int(cursor.fetchone()[0])

    with trio.fail_after(120):
        async with open_fleet(n=6, grace=GRACE, db=f"{PG}/{name}") as fleet:
            content, expected = fleet.command("p", lines=40, interval=0.05)
            batch = await post_streaming_batch(fleet, content)
            fault_at = trio.current_time()
            assert await trio.to_thread.run_sync(terminate) >= 1
            await trio.sleep(0.5)  # the second drop comes while it reconnects
            await trio.to_thread.run_sync(terminate)
            names = {a.name for a in fleet.agents}
            await check(fleet, "PostgreSQL backends terminated ×2 mid-batch", batch, "p",
                        expected, fault_at=fault_at, bound=BOUND, back=names,
                        want={"SUCCESS": names})  # fmt: skip
