"""The store's rollout facts: batch options, re-run origin, masked parameters, stop reason,
script parameter declarations; and an older store brought up to this schema at start-up (on
SQLite and, with ``FLEET_TEST_POSTGRES_DSN``, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from pony import orm

from fleet.server.store import BatchOptions, BatchUpdate, Store
from fleet.server.store.schema import ADDED_COLUMNS, ADDED_INDEXES

from .test_store import make_batch, new_id


def test_batch_options_round_trip(store: Store, data_dir: Path) -> None:
    original = make_batch(store, data_dir, [(1, "a")])
    options = BatchOptions(
        max_concurrency="10%",
        max_errors=0,
        wait_for_agent_seconds=600,
        rerun_of=original.id,
        target_tags=("web", "db"),
        parameters={"MODE": "safe", "TOKEN": "***"},
        secret_parameters=("TOKEN",),
    )
    batch = store.create_batch(
        batch_id=new_id(), payload={}, execution_alias=None, user_id="admin",
        command_type="ADHOC_COMMAND", command_content="env", script_id=None,
        working_directory=None, timeout_seconds=0, targets=[(new_id(), 1, "a")],
        log_dir=data_dir / "logs", now=original.created_at, options=options,
    )  # fmt: skip
    got = store.get_batch(batch.id)
    assert (got.max_concurrency, got.max_errors, got.wait_for_agent_seconds) == ("10%", 0, 600)
    assert (got.rerun_of, got.target_tags) == (original.id, ("web", "db"))
    assert got.parameters == {"MODE": "safe", "TOKEN": "***"}
    assert got.secret_parameters == ("TOKEN",)
    assert got.stop_reason is None
    store.apply_updates([BatchUpdate(batch.id, stop_reason="error threshold reached")], [])
    assert store.get_batch(batch.id).stop_reason == "error threshold reached"
    plain = store.get_batch(original.id)
    assert (plain.max_concurrency, plain.max_errors, plain.wait_for_agent_seconds) == (
        None,
        None,
        0,
    )
    assert (plain.parameters, plain.secret_parameters, plain.target_tags) == ({}, (), ())


def test_script_parameters_round_trip(store: Store) -> None:
    declared = [{"name": "V", "description": "", "required": True, "default": None,
                 "pattern": "[0-9]+", "secret": False}]  # fmt: skip
    script = store.create_script("s", "", "echo $FLEET_PARAM_V", declared)
    assert store.get_script(script.id).parameters == tuple(declared)
    store.update_script(script.id, "s", "", "true")
    assert store.get_script(script.id).parameters == ()


def test_an_older_store_gets_the_new_columns(
    store: Store, db_url: str | None, data_dir: Path
) -> None:
    """A store created before the rollout columns existed opens, gains them, and its batches
    read with the defaults."""
    vps = store.create_vps("old-1", [], "h")
    batch = make_batch(store, data_dir, [(vps.id, vps.name)])
    script = store.create_script("old", "", "true")
    db = store._db
    with orm.db_session:
        for _, _, index in ADDED_INDEXES:
            db.execute(f"DROP INDEX IF EXISTS {index}")  # SQLite keeps a column that has one
        for table, column, _, _ in ADDED_COLUMNS:
            if column != "agent_reported":
                db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    store.close()
    again = Store.open(db_url, data_dir)
    try:
        old = again.get_batch(batch.id)
        assert (old.max_concurrency, old.wait_for_agent_seconds, old.parameters) == (None, 0, {})
        assert again.get_script(script.id).parameters == ()
        make_batch(again, data_dir, [(vps.id, vps.name)])  # and new batches are written
    finally:
        again.close()
