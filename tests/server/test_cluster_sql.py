"""The cluster's rows on a real PostgreSQL (a database of its own per test): leases, adoption
under a row lock, re-addressed reports, presence, output chunks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleet.server.cluster import sql
from fleet.server.store import Store

DSN_ENV = "FLEET_TEST_POSTGRES_DSN"
pytestmark = pytest.mark.skipif(
    not os.environ.get(DSN_ENV),
    reason=f"cluster SQL tests need PostgreSQL: {DSN_ENV} is unset (.ci/run sets it)",
)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    import psycopg2

    dsn = os.environ[DSN_ENV]
    name = f"fleet_cluster_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}", query=""))
        store = Store.open(url, tmp_path)  # the store's own tables
        store.close()
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _connect(url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    sql.ensure_schema(conn.cursor())
    return conn


def _batch(url: str, tmp_path: Path, owner: str, vps_ids: list[int]) -> Any:
    store = Store.open(url, tmp_path)
    try:
        return store.create_batch(
            batch_id=str(uuid.uuid4()),
            payload={},
            execution_alias=None,
            user_id="admin",
            command_type="ADHOC_COMMAND",
            command_content="true",
            script_id=None,
            working_directory=None,
            timeout_seconds=0,
            targets=[(str(uuid.uuid4()), v, f"v{v}") for v in vps_ids],
            log_dir=tmp_path / "logs",
            now=datetime.now(UTC),
            owner_node=owner,
        )
    finally:
        store.close()


def test_a_lapsed_lease_is_adopted_once(database: str, tmp_path: Path) -> None:
    conn = _connect(database)
    cur = conn.cursor()
    sql.register(cur, "a", "inc-a", 10, "h", "g")
    sql.register(cur, "b", "inc-b", 10, "h", "g")
    batch = _batch(database, tmp_path, "b", [1, 2])
    assert sql.adopt(cur, "a") == ([], [])  # b's lease runs
    cur.execute("UPDATE fleet_node SET lease_until = now() - interval '1 second' WHERE name = 'b'")
    # b's agent 1 was connected there; a report for b's batch waits in the outbox.
    sql.push(
        cur, "b", presence=[(1, frozenset(), True)], messages=[], feed=[], chunks=[], handled=[]
    )
    child = batch.children[0].id
    sql.push(
        cur,
        "c",
        presence=[],
        messages=[("b", "report", 1, batch.id, b"result")],
        feed=[],
        chunks=[],
        handled=[],
    )
    assert sql.adopt(cur, "a") == (["b"], [batch.id])
    assert sql.adopt(cur, "c") == ([], [])  # nobody adopts twice
    assert not sql.renew(cur, "b", "inc-b", 10)  # b is fenced: it must stop
    assert sql.fetch_presence(cur, [1]) == [sql.Presence(1, None)]
    sql.retarget(cur)
    (row,) = sql.fetch_dispatch(cur, "a", [])
    assert (row.kind, row.batch_id, row.payload) == ("report", batch.id, b"result")
    assert sql.owners(cur, [child]) == {child: (1, batch.id, "a")}
    conn.close()


def test_a_dead_node_locked_by_one_adopter_is_skipped_by_another(
    database: str, tmp_path: Path
) -> None:
    first, second = _connect(database), _connect(database)
    cur = first.cursor()
    sql.register(cur, "dead", "x", 10, "h", "g")
    batch = _batch(database, tmp_path, "dead", [1])
    cur.execute("UPDATE fleet_node SET lease_until = now() - interval '1 second'")
    locker = second.cursor()
    locker.execute("BEGIN")
    locker.execute("SELECT name FROM fleet_node WHERE name = 'dead' FOR UPDATE")
    assert sql.adopt(cur, "a") == ([], [])  # skipped, not blocked
    locker.execute("ROLLBACK")
    assert sql.adopt(cur, "a") == (["dead"], [batch.id])
    first.close()
    second.close()


def test_a_restarted_node_keeps_its_batches_and_forgets_its_agents(
    database: str, tmp_path: Path
) -> None:
    conn = _connect(database)
    cur = conn.cursor()
    sql.register(cur, "a", "one", 10, "h", "g")
    sql.push(cur, "a", presence=[(5, None, True)], messages=[], feed=[], chunks=[], handled=[])
    batch = _batch(database, tmp_path, "a", [5])
    orphan = _batch(database, tmp_path, None, [5])  # a single server's, before the cluster
    sql.register(cur, "a", "two", 10, "h", "g")
    assert not sql.renew(cur, "a", "one", 10)  # the old incarnation is fenced
    assert sql.fetch_presence(cur, [5]) == [sql.Presence(5, None)]
    assert sql.claim_own(cur, "a") == [batch.id, orphan.id]
    conn.close()


def test_a_released_lease_is_adopted_at_once(database: str, tmp_path: Path) -> None:
    conn = _connect(database)
    cur = conn.cursor()
    sql.register(cur, "a", "one", 10, "h", "g")
    sql.register(cur, "b", "inc-b", 10, "h", "g")
    batch = _batch(database, tmp_path, "b", [5])
    assert sql.adopt(cur, "a") == ([], [])  # b's lease runs 10 s more
    assert not sql.release(cur, "b", "another")  # only its own incarnation gives it up
    assert sql.release(cur, "b", "inc-b")
    assert sql.adopt(cur, "a") == (["b"], [batch.id])
    conn.close()


def test_presence_is_deleted_only_by_the_node_holding_it(database: str) -> None:
    conn = _connect(database)
    cur = conn.cursor()
    for node in ("a", "b"):
        sql.register(cur, node, node, 10, "h", "g")
    sql.push(
        cur,
        "a",
        presence=[(3, frozenset({"x"}), True)],
        messages=[],
        feed=[],
        chunks=[],
        handled=[],
    )
    sql.push(
        cur, "b", presence=[(3, frozenset(), True)], messages=[], feed=[], chunks=[], handled=[]
    )
    sql.push(cur, "a", presence=[(3, None, False)], messages=[], feed=[], chunks=[], handled=[])
    (presence,) = sql.fetch_presence(cur, [3])
    assert (presence.node, presence.open_ids) == ("b", frozenset())
    assert [p.vps_id for p in sql.live_presence(cur)] == [3]
    conn.close()


def test_output_chunks_are_byte_exact_and_idempotent(database: str) -> None:
    conn = _connect(database)
    cur = conn.cursor()
    data = bytes(range(256)) * 3
    chunks = [("c1", "stdout", 0, data[:500]), ("c1", "stdout", 500, data[500:])]
    for _ in range(2):  # a re-sent chunk is stored once
        sql.push(cur, "a", presence=[], messages=[], feed=[], chunks=chunks, handled=[])
    assert sql.output(cur, "c1", "stdout") == data
    assert sql.output(cur, "c1", "stderr") == b""
    assert sql.output_many(cur, ["c1"]) == {("c1", "stdout"): data}
    conn.close()


async def test_the_bus_renews_the_lease_and_stops_once_it_is_taken(database: str) -> None:
    import trio

    from fleet.server.cluster.bus import Bus, LeaseLost
    from fleet.server.store.schema import bind_args

    args = bind_args(database, Path("."))
    args.pop("provider")
    bus = Bus(args, "n1")
    with trio.fail_after(30):
        await bus.open(lambda inbound: None)
        await bus.call(sql.register, "n1", "inc", 1.0, "h", "g")
        bus.keep_lease("inc", 1.0)

        async def lose_the_lease() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bus.run)
                await trio.sleep(1.5)  # real time: the lease (1 s) is renewed meanwhile
                assert await bus.call(sql.adopt, "n2") == ([], [])
                await bus.call(sql.register, "n1", "someone-else", 1.0, "h", "g")
                await trio.sleep_forever()  # the bus's next renewal finds its row taken

        with pytest.raises(ExceptionGroup) as raised:
            await lose_the_lease()
        matched, rest = raised.value.split(LeaseLost)
        assert matched is not None
        assert rest is None
