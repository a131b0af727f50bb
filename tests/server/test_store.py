from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg2  # type: ignore[import-untyped,unused-ignore]
import pytest
import trio
import trio.testing
from pony import orm

from fleet.core._errors import NotFound, ValidationError
from fleet.core._status import BatchStatus, ChildStatus
from fleet.server.dbthread import DbThread, open_db_thread
from fleet.server.store import (
    AGENT_FACTS,
    UNSET,
    BatchRecord,
    BatchUpdate,
    ChildUpdate,
    Store,
    VpsRecord,
)
from fleet.server.store.schema import bind_args

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def make_batch(
    store: Store,
    data_dir: Path,
    names: list[tuple[int, str]],
    *,
    now: datetime = T0,
    payload: dict[str, Any] | None = None,
    batch_id: str | None = None,
) -> BatchRecord:
    return store.create_batch(
        batch_id=batch_id or new_id(),
        payload=payload if payload is not None else {"command_content": "uptime"},
        execution_alias="check",
        user_id="admin",
        command_type="ADHOC_COMMAND",
        command_content="uptime",
        script_id=None,
        working_directory="/tmp",
        timeout_seconds=60,
        targets=[(new_id(), vps_id, name) for vps_id, name in names],
        log_dir=data_dir / "logs",
        now=now,
    )


# -- opening -------------------------------------------------------------------------------


def test_sqlite_file_in_data_dir_with_wal(data_dir: Path) -> None:
    store = Store.open(None, data_dir)
    try:
        store.create_vps("a", [], "h")
    finally:
        store.close()
    with sqlite3.connect(data_dir / "fleet.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    store = Store.open(f"sqlite://{path}", tmp_path)
    store.close()
    assert path.exists()


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mysql"):
        Store.open("mysql://localhost/x", tmp_path)


def test_postgres_url_parsing(tmp_path: Path) -> None:
    args = bind_args("postgresql://fl%40t:p%2Fw@db.example:6543/fleet?sslmode=require", tmp_path)
    assert args == {
        "provider": "postgres",
        "user": "fl@t",
        "password": "p/w",
        "host": "db.example",
        "port": 6543,
        "dbname": "fleet",
        "sslmode": "require",
    }
    assert bind_args("postgres://h/db", tmp_path) == {
        "provider": "postgres",
        "host": "h",
        "dbname": "db",
    }


def test_reopen_keeps_data(store: Store, db_url: str | None, data_dir: Path) -> None:
    vps = store.create_vps("web-1", ["prod"], "h")
    batch = make_batch(store, data_dir, [(vps.id, vps.name)])
    store.close()
    again = Store.open(db_url, data_dir)
    try:
        assert again.get_vps(vps.id) == vps
        assert again.get_batch(batch.id) == batch
    finally:
        again.close()


def test_several_stores_in_one_process(tmp_path: Path) -> None:
    one, two = Store.open(None, tmp_path / "one"), Store.open(None, tmp_path / "two")
    try:
        one.create_vps("a", [], "h")
        assert [v.name for v in one.list_vps()] == ["a"]
        assert two.list_vps() == []
    finally:
        one.close()
        two.close()


# -- tokens --------------------------------------------------------------------------------


def test_tokens(store: Store) -> None:
    assert not store.has_tokens()
    admin = store.ensure_admin()
    store.add_token("admin", "hash-1", user_id=admin.id)
    store.add_token("ci", "hash-2", user_id=admin.id)
    assert store.has_tokens()
    assert [t.name for t in store.list_tokens(admin.id)] == ["admin", "ci"]
    assert store.token_user("hash-1", T0) == admin
    assert store.token_user("hash-3", T0) is None


# -- VPSes ---------------------------------------------------------------------------------


def test_vps_crud(store: Store) -> None:
    a = store.create_vps("web-1", ["prod", "eu"], "h1")
    b = store.create_vps("web-2", [], "h2")
    assert isinstance(a, VpsRecord)
    assert (a.name, a.tags, a.last_seen_at, a.hostname) == ("web-1", ("prod", "eu"), None, None)
    assert a.created_at.tzinfo is UTC
    assert store.list_vps() == [a, b]
    assert store.get_vps(b.id) == b
    assert store.get_vps_many([a.id, 999, b.id, a.id]) == {a.id: a, b.id: b}
    assert store.get_vps_many([]) == {}
    assert dict(store.vps_secret_hashes()) == {a.id: "h1", b.id: "h2"}
    store.set_vps_secret(a.id, "h3")
    assert dict(store.vps_secret_hashes()) == {a.id: "h3", b.id: "h2"}

    renamed = store.update_vps(a.id, name="web-9")
    assert (renamed.name, renamed.tags) == ("web-9", ("prod", "eu"))
    retagged = store.update_vps(a.id, tags=["x"])
    assert (retagged.name, retagged.tags) == ("web-9", ("x",))
    assert store.update_vps(a.id, name="web-9").name == "web-9"  # same name is no conflict

    store.delete_vps(a.id)
    assert store.list_vps() == [b]
    with pytest.raises(NotFound) as info:
        store.get_vps(a.id)
    assert (info.value.kind, info.value.ident) == ("vps", a.id)


def test_vps_not_found(store: Store) -> None:
    for call in (
        lambda: store.get_vps(7),
        lambda: store.delete_vps(7),
        lambda: store.set_vps_secret(7, "h"),
        lambda: store.update_vps(7, name="x"),
    ):
        with pytest.raises(NotFound):
            call()


def test_vps_duplicate_names(store: Store) -> None:
    store.create_vps("web-1", [], "h")
    other = store.create_vps("web-2", [], "h")
    with pytest.raises(ValidationError) as info:
        store.create_vps("web-1", [], "h")
    assert info.value.errors == [{"field": "name", "reason": "a VPS named web-1 already exists"}]
    with pytest.raises(ValidationError):
        store.update_vps(other.id, name="web-1")
    assert [v.name for v in store.list_vps()] == ["web-1", "web-2"]


def test_agent_seen(store: Store) -> None:
    a, b = store.create_vps("a", [], "h"), store.create_vps("b", [], "h")
    paris = timezone(timedelta(hours=2))
    facts = ["host-a", "linux", "Debian 12", "x86_64", "6.1.0", "0.1.0"]
    store.record_agents_seen([(a.id, facts, datetime(2024, 5, 1, 14, 0, tzinfo=paris))])
    got = store.get_vps(a.id)
    assert (got.hostname, got.os_type, got.os_name, got.arch) == (
        "host-a",
        "linux",
        "Debian 12",
        "x86_64",
    )
    assert (got.kernel_version, got.agent_version) == ("6.1.0", "0.1.0")
    assert got.last_seen_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert got.last_seen_at.tzinfo is UTC

    store.touch_vps_seen({a.id: T0 + timedelta(seconds=1), b.id: T0, 999: T0})
    store.touch_vps_seen({})
    assert store.get_vps(a.id).last_seen_at == T0 + timedelta(seconds=1)
    assert store.get_vps(b.id).last_seen_at == T0


def test_many_agents_seen_in_one_transaction(store: Store) -> None:
    a, b = store.create_vps("a", [], "h"), store.create_vps("b", [], "h")
    facts = ["host-b", "linux", "Alpine 3.20", "aarch64", "6.6.0", "0.2.0"]
    store.record_agents_seen(
        [
            (b.id, facts, T0 + timedelta(seconds=5)),
            (999, facts, T0),  # deleted while connected: ignored
        ]
    )
    store.record_agents_seen([])
    got = store.get_vps(b.id)
    assert [getattr(got, name) for name in AGENT_FACTS] == facts
    assert got.last_seen_at == T0 + timedelta(seconds=5)
    untouched = store.get_vps(a.id)
    assert untouched.hostname is None
    assert untouched.last_seen_at is None


# -- scripts -------------------------------------------------------------------------------


def test_script_crud(store: Store) -> None:
    content = "#!/bin/sh\necho 'héllo' \"$1\"\n" + "x" * 100_000
    s = store.create_script("greet", "", content)
    t = store.create_script("other", "does things", "true")
    assert (s.name, s.description, s.content) == ("greet", "", content)
    assert store.list_scripts() == [s, t]
    assert store.get_script(s.id) == s
    updated = store.update_script(s.id, "greet2", "now described", "echo 2")
    assert (updated.name, updated.description, updated.content) == (
        "greet2",
        "now described",
        "echo 2",
    )
    assert updated.created_at == s.created_at
    assert store.update_script(s.id, "greet2", "", "echo 3").content == "echo 3"
    with pytest.raises(ValidationError, match="other already exists"):
        store.update_script(s.id, "other", "", "")
    with pytest.raises(ValidationError, match="script named other"):
        store.create_script("other", "", "")
    store.delete_script(t.id)
    assert store.list_scripts() == [store.get_script(s.id)]
    for call in (
        lambda: store.get_script(t.id),
        lambda: store.delete_script(t.id),
        lambda: store.update_script(t.id, "x", "", ""),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert info.value.kind == "script"


# -- batches -------------------------------------------------------------------------------


def test_create_and_get_batch(store: Store, data_dir: Path) -> None:
    payload = {
        "command_content": "echo ☃",
        "target_vps_ids": [1, "2"],
        "nested": {"a": [None, True, 1.5]},
    }
    batch = make_batch(
        store, data_dir, [(2, "b-host"), (1, "a-host"), (3, "a-host")], payload=payload
    )
    assert batch.status is BatchStatus.PENDING
    with orm.db_session:  # the request is kept as it came (no record carries it back)
        assert store._e.Batch[batch.id].original_request_payload == payload
    assert batch.counts == {"PENDING": 3}
    assert (batch.execution_alias, batch.user_id, batch.command_type) == (
        "check",
        "admin",
        "ADHOC_COMMAND",
    )
    assert (batch.command_content, batch.script_id, batch.working_directory) == (
        "uptime",
        None,
        "/tmp",
    )
    assert (batch.timeout_seconds, batch.created_at, batch.updated_at) == (60, T0, T0)
    assert batch.completed_at is None
    assert [c.vps_name for c in batch.children] == ["a-host", "a-host", "b-host"]
    a1, a2 = batch.children[:2]
    assert a1.id < a2.id
    for child in batch.children:
        assert child.batch_id == batch.id
        assert child.status is ChildStatus.PENDING
        assert (child.exit_code, child.error_message, child.last_output_at) == (None, None, None)
        assert child.stdout_log_path == str(data_dir / "logs" / batch.id / f"{child.id}.stdout")
        assert child.stderr_log_path == str(data_dir / "logs" / batch.id / f"{child.id}.stderr")
        assert (child.created_at, child.updated_at) == (T0, T0)
        assert child.created_at.tzinfo is UTC
        assert (child.stdout_summary, child.stderr_summary) == ((), ())
        assert (child.stdout_bytes, child.stderr_bytes, child.truncated) == (0, 0, False)
    assert store.get_batch(batch.id) == batch
    with pytest.raises(NotFound) as info:
        store.get_batch("nope")
    assert (info.value.kind, info.value.ident) == ("batch", "nope")


def test_create_batch_is_one_transaction(store: Store, data_dir: Path) -> None:
    child = new_id()
    with pytest.raises((sqlite3.IntegrityError, psycopg2.IntegrityError)):
        store.create_batch(
            batch_id="b1",
            payload={},
            execution_alias=None,
            user_id="u",
            command_type="ADHOC_COMMAND",
            command_content="true",
            script_id=None,
            working_directory=None,
            timeout_seconds=1,
            targets=[(child, 1, "a"), (child, 2, "b")],  # duplicate child id
            log_dir=data_dir,
            now=T0,
        )
    assert store.list_batches(limit=10, offset=0) == ([], 0)


def test_naive_and_other_zone_timestamps_are_utc(store: Store, data_dir: Path) -> None:
    naive = make_batch(store, data_dir, [(1, "a")], now=datetime(2024, 1, 1, 8, 30))
    assert naive.created_at == datetime(2024, 1, 1, 8, 30, tzinfo=UTC)
    tokyo = timezone(timedelta(hours=9))
    zoned = make_batch(store, data_dir, [(1, "a")], now=datetime(2024, 1, 1, 9, 0, tzinfo=tokyo))
    got = store.get_batch(zoned.id)
    assert got.created_at == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    assert got.created_at.tzinfo is UTC
    assert got.children[0].created_at.tzinfo is UTC


def test_history_survives_vps_deletion(store: Store, data_dir: Path) -> None:
    vps = store.create_vps("doomed", [], "h")
    batch = make_batch(store, data_dir, [(vps.id, vps.name)])
    store.delete_vps(vps.id)
    (child,) = store.get_batch(batch.id).children
    assert (child.vps_id, child.vps_name) == (vps.id, "doomed")


def test_list_batches_pages_newest_first(store: Store, data_dir: Path) -> None:
    batches = [
        make_batch(store, data_dir, [(1, "a"), (2, "b")], now=T0 + timedelta(minutes=i))
        for i in range(5)
    ]
    store.apply_updates([], [ChildUpdate(batches[4].children[0].id, status=ChildStatus.SUCCESS)])
    page, total = store.list_batches(limit=2, offset=0)
    assert total == 5
    assert [b.id for b in page] == [batches[4].id, batches[3].id]
    assert page[0].counts == {"SUCCESS": 1, "PENDING": 1}
    assert page[1].counts == {"PENDING": 2}
    assert all(b.children == () for b in page)
    page, total = store.list_batches(limit=2, offset=4)
    assert ([b.id for b in page], total) == ([batches[0].id], 5)
    assert store.list_batches(limit=2, offset=10) == ([], 5)
    assert store.list_batches(limit=0, offset=0) == ([], 5)


def test_get_child(store: Store, data_dir: Path) -> None:
    one = make_batch(store, data_dir, [(1, "a")])
    two = make_batch(store, data_dir, [(1, "a")])
    assert store.get_child(one.id, one.children[0].id) == one.children[0]
    for batch_id, child_id in ((two.id, one.children[0].id), (one.id, "nope")):
        with pytest.raises(NotFound) as info:
            store.get_child(batch_id, child_id)
        assert (info.value.kind, info.value.ident) == ("task", child_id)


def test_apply_updates_partial(store: Store, data_dir: Path) -> None:
    batch = make_batch(store, data_dir, [(1, "a"), (2, "b"), (3, "c")])
    a, b, c = (ch.id for ch in batch.children)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    store.apply_updates(
        [BatchUpdate(batch.id, status=BatchStatus.IN_PROGRESS, updated_at=t1)],
        [
            ChildUpdate(a, status=ChildStatus.EXECUTING, agent_started_at=t1, updated_at=t1),
            ChildUpdate(b, status=ChildStatus.FAILURE, exit_code=3, error_message="boom"),
            ChildUpdate(c, stdout_summary=["l1", "l2"], stdout_bytes=10, last_output_at=t1),
        ],
    )
    got = store.get_batch(batch.id)
    assert (got.status, got.updated_at, got.completed_at) == (BatchStatus.IN_PROGRESS, t1, None)
    ca, cb, cc = got.children
    assert (ca.status, ca.agent_started_at, ca.updated_at, ca.exit_code) == (
        ChildStatus.EXECUTING,
        t1,
        t1,
        None,
    )
    assert (cb.status, cb.exit_code, cb.error_message, cb.updated_at) == (
        ChildStatus.FAILURE,
        3,
        "boom",
        T0,
    )
    assert (cc.status, cc.stdout_summary, cc.stdout_bytes, cc.last_output_at) == (
        ChildStatus.PENDING,
        ("l1", "l2"),
        10,
        t1,
    )
    assert got.counts == {"EXECUTING": 1, "FAILURE": 1, "PENDING": 1}

    # UNSET (the default) leaves exit_code and error_message alone; None clears them.
    store.apply_updates([], [ChildUpdate(b, stderr_bytes=5, truncated=True)])
    cb = store.get_child(batch.id, b)
    assert (cb.exit_code, cb.error_message, cb.stderr_bytes, cb.truncated) == (3, "boom", 5, True)
    store.apply_updates([], [ChildUpdate(b, exit_code=None, error_message=None)])
    cb = store.get_child(batch.id, b)
    assert (cb.exit_code, cb.error_message, cb.stderr_bytes) == (None, None, 5)
    assert ChildUpdate(b).exit_code is UNSET

    # Several updates of one row merge in order; unknown ids are ignored.
    store.apply_updates(
        [
            BatchUpdate(batch.id, status=BatchStatus.COMPLETED_WITH_ERRORS, completed_at=t2),
            BatchUpdate("nope", status=BatchStatus.TERMINATED),
        ],
        [
            ChildUpdate(a, status=ChildStatus.SUCCESS, exit_code=0, updated_at=t1),
            ChildUpdate(a, updated_at=t2, stderr_summary=["warn"], agent_completed_at=t2),
            ChildUpdate("nope", status=ChildStatus.SUCCESS),
            ChildUpdate(c),
        ],
    )
    got = store.get_batch(batch.id)
    assert (got.status, got.completed_at, got.updated_at) == (
        BatchStatus.COMPLETED_WITH_ERRORS,
        t2,
        t1,
    )
    ca = got.children[0]
    assert (ca.status, ca.exit_code, ca.updated_at, ca.stderr_summary, ca.agent_completed_at) == (
        ChildStatus.SUCCESS,
        0,
        t2,
        ("warn",),
        t2,
    )
    store.apply_updates([], [])


def test_unfinished_batches(store: Store, data_dir: Path) -> None:
    done = make_batch(store, data_dir, [(1, "a")], now=T0)
    running = make_batch(store, data_dir, [(1, "a"), (2, "b")], now=T0 + timedelta(seconds=1))
    pending = make_batch(store, data_dir, [(1, "a")], now=T0 + timedelta(seconds=2))
    store.apply_updates(
        [
            BatchUpdate(done.id, status=BatchStatus.COMPLETED_SUCCESSFULLY),
            BatchUpdate(running.id, status=BatchStatus.TERMINATING),
        ],
        [],
    )
    unfinished = store.unfinished_batches()
    assert [b.id for b in unfinished] == [running.id, pending.id]
    assert [len(b.children) for b in unfinished] == [2, 1]
    assert unfinished[0].counts == {"PENDING": 2}


def test_ten_thousand_targets(store: Store, data_dir: Path) -> None:
    names = [(i, f"vps-{i:05d}") for i in range(10_000)]
    batch = make_batch(store, data_dir, names)
    assert batch.counts == {"PENDING": 10_000}
    store.apply_updates(
        [],
        [ChildUpdate(c.id, status=ChildStatus.SUCCESS, exit_code=0) for c in batch.children],
    )
    got = store.get_batch(batch.id)
    assert got.counts == {"SUCCESS": 10_000}
    assert [c.vps_name for c in got.children] == [n for _, n in names]
    (listed,), _ = store.list_batches(limit=1, offset=0)
    assert listed.counts == {"SUCCESS": 10_000}


# -- the DB thread -------------------------------------------------------------------------


def _db_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fleet-db"]


async def test_db_thread_runs_calls(db_url: str | None, data_dir: Path) -> None:
    with trio.fail_after(20):
        async with open_db_thread(db_url, data_dir) as db:
            assert isinstance(db, DbThread)
            vps = await db.run(Store.create_vps, "web-1", ["x"], "h")
            assert await db.run(Store.get_vps, vps.id) == vps
            assert await db.run(lambda s: threading.current_thread().name) == "fleet-db"
            with pytest.raises(NotFound):
                await db.run(Store.get_vps, 999)
            with pytest.raises(ValidationError):
                await db.run(Store.create_vps, name="web-1", tags=[], secret_hash="h")
            assert db.statistics().queued == 0
            assert db.statistics().completed == 5
        assert _db_threads() == []
        with pytest.raises(trio.ClosedResourceError):
            await db.run(Store.list_vps)


async def test_db_thread_many_awaiters(db_url: str | None, data_dir: Path) -> None:
    results: dict[int, int] = {}

    async def create(i: int) -> None:
        results[i] = (await db.run(Store.create_vps, f"vps-{i}", [], "h")).id

    with trio.fail_after(30):
        async with open_db_thread(db_url, data_dir) as db, trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(create, i)
        async with open_db_thread(db_url, data_dir) as db:
            listed = await db.run(Store.list_vps)
    assert len(listed) == 200
    assert {v.id: v.name for v in listed} == {vps_id: f"vps-{i}" for i, vps_id in results.items()}


async def test_cancelled_caller_job_still_runs(db_url: str | None, data_dir: Path) -> None:
    gate = threading.Event()
    with trio.fail_after(20):
        async with open_db_thread(db_url, data_dir) as db, trio.open_nursery() as nursery:
            nursery.start_soon(db.run, lambda s: gate.wait(10))
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await db.run(Store.create_vps, "late", [], "h")
            assert scope.cancelled_caught
            assert db.statistics().queued >= 1
            gate.set()
            assert [v.name for v in await db.run(Store.list_vps)] == ["late"]


async def test_close_runs_queued_jobs(db_url: str | None, data_dir: Path) -> None:
    gate = threading.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_db_thread(db_url, data_dir) as db:
                nursery.start_soon(db.run, lambda s: gate.wait(10))
                for i in range(3):
                    nursery.start_soon(db.run, Store.create_vps, f"v{i}", [], "h")
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
        assert _db_threads() == []
        async with open_db_thread(db_url, data_dir) as db:
            assert len(await db.run(Store.list_vps)) == 3


async def test_open_error_is_raised(tmp_path: Path) -> None:
    with trio.fail_after(10):
        with pytest.raises(ValueError, match="unsupported"):
            async with open_db_thread("mysql://x/y", tmp_path):
                pass  # pragma: no cover
    assert _db_threads() == []


async def test_exit_by_cancellation_still_closes(db_url: str | None, data_dir: Path) -> None:
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with open_db_thread(db_url, data_dir) as db:
                await db.run(Store.create_vps, "a", [], "h")
                scope.cancel()
                await trio.sleep_forever()
        assert _db_threads() == []
