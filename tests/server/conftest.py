"""Store fixtures: every store test runs on SQLite (in ``tmp_path``) and, when
``FLEET_TEST_POSTGRES_DSN`` is set, on PostgreSQL in a fresh schema that is dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from fleet.server.store import Store

POSTGRES_DSN_ENV = "FLEET_TEST_POSTGRES_DSN"


def _backends() -> list[object]:
    backends: list[object] = ["sqlite"]
    if os.environ.get(POSTGRES_DSN_ENV):
        backends.append(pytest.param("postgres", marks=pytest.mark.postgres))
    return backends


@pytest.fixture(params=_backends())
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A database URL for ``Store.open``: ``None`` (SQLite in the data dir) or PostgreSQL.

    PostgreSQL gets a schema of its own, selected through libpq's ``options`` parameter, so
    tests and test runs never see each other's tables.
    """
    if request.param == "sqlite":
        yield None
        return
    import psycopg2  # type: ignore[import-untyped,unused-ignore]

    dsn = os.environ[POSTGRES_DSN_ENV]
    schema = f"fleet_test_{uuid.uuid4().hex}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in dsn else "?"
        yield f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(db_url: str | None, data_dir: Path) -> Iterator[Store]:
    opened = Store.open(db_url, data_dir)
    try:
        yield opened
    finally:
        opened.close()
