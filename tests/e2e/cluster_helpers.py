"""Three ``fleet-server --cluster`` processes on a database of their own, and agents."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio

from .conftest import GRPC, READY, agent_process, read_until, stop

DSN_ENV = "FLEET_TEST_POSTGRES_DSN"


def postgres_dsn() -> str:
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        pytest.skip(f"cluster tests need PostgreSQL: {DSN_ENV} is unset (.ci/run sets it)")
    return dsn


@contextmanager
def fresh_database(dsn: str) -> Iterator[str]:
    """A database of its own (notifications are per database), dropped afterwards."""
    import psycopg2

    name = f"fleet_cluster_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(dsn)
        yield urlunsplit(parts._replace(path=f"/{name}", query=""))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass
class Node:
    name: str
    data_dir: Path
    db: str
    lease_s: float
    process: trio.Process | None = None
    url: str = ""
    grpc: str = ""
    token: str = ""
    grpc_port: int = 0
    extra: list[str] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=20
        )

    async def start(self, token: str | None = None) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if token is not None:
            path = self.data_dir / "admin.token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        grpc = f"127.0.0.1:{self.grpc_port}"
        self.process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "fleet.server",
                "--http",
                "127.0.0.1:0",
                "--grpc",
                grpc,
                "--data-dir",
                str(self.data_dir),
                "--db",
                self.db,
                "--cluster",
                "--node-name",
                self.name,
                "--node-lease",
                str(self.lease_s),
                "--reconnect-grace",
                "8",
                "--log-level",
                "WARNING",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
        )
        with trio.fail_after(60):
            assert self.process.stdout is not None
            match, buffer = await read_until(self.process.stdout, READY)
            found = GRPC.search(buffer)
            if found is None:
                found, _ = await read_until(self.process.stdout, GRPC)
        self.url, self.token = match[1].decode(), match[2].decode()
        self.grpc = found[1].decode()
        self.grpc_port = int(self.grpc.rpartition(":")[2])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    async def stop(self) -> None:
        if self.process is not None:
            with trio.CancelScope(shield=True):
                await stop(self.process)


async def start_agent(
    servers: list[str], vps: dict[str, object], tmp_path: Path, marker: Path
) -> trio.Process:
    return await agent_process(
        ",".join(servers), vps, tmp_path, env={**os.environ, "MARKER": str(marker)}
    )


async def stop_all(processes: list[trio.Process]) -> None:
    with trio.CancelScope(shield=True):
        for process in processes:
            await stop(process)
