"""The store's team tables: users, sessions, tokens, the audit log; on SQLite and,
with FLEET_TEST_POSTGRES_DSN, PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pony import orm

from fleet import core
from fleet.core import Role
from fleet.server.records import AuditNote
from fleet.server.store import Store

#: Tomorrow: creating a session sweeps the ones already expired by the real clock.
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


def note(action: str, **fields: object) -> AuditNote:
    return AuditNote(actor="alice", action=action, source_ip="127.0.0.1", **fields)  # type: ignore[arg-type]


def test_builtin_admin_is_made_once_and_owns_older_tokens(store: Store) -> None:
    admin = store.ensure_admin()
    assert (admin.username, admin.role, admin.has_password) == ("admin", Role.ADMIN, False)
    assert store.ensure_admin() == admin
    assert [u.username for u in store.list_users()] == ["admin"]


def test_users_crud_and_duplicates(store: Store) -> None:
    alice = store.create_user("alice", "h1", Role.OPERATOR, ["web"], audit=note("user.create"))
    assert (alice.role, alice.allowed_tags, alice.has_password) == (Role.OPERATOR, ("web",), True)
    with pytest.raises(core.Conflict):
        store.create_user("alice", "h2", Role.VIEWER, [])
    bob = store.create_user("bob", "h2", Role.VIEWER, [])
    with pytest.raises(core.Conflict):
        store.update_user(bob.id, username="alice")
    changed = store.update_user(bob.id, role=Role.OPERATOR, allowed_tags=["db"])
    assert (changed.role, changed.allowed_tags) == (Role.OPERATOR, ("db",))
    assert store.password_hash_of("bob") == (changed, "h2")
    assert store.password_hash_of("nobody") is None
    store.delete_user(bob.id)
    with pytest.raises(core.NotFound):
        store.get_user(bob.id)
    items, _ = store.list_audit()
    assert [(e.action, e.target_id) for e in items] == [("user.create", str(alice.id))]


def test_the_last_admin_stays(store: Store) -> None:
    admin = store.ensure_admin()
    with pytest.raises(core.Conflict, match="last admin"):
        store.delete_user(admin.id)
    with pytest.raises(core.Conflict, match="last admin"):
        store.update_user(admin.id, role=Role.OPERATOR)
    other = store.create_user("root2", "h", Role.ADMIN, [])
    store.update_user(admin.id, role=Role.VIEWER)  # another admin exists
    with pytest.raises(core.Conflict):
        store.delete_user(other.id)
    with pytest.raises(core.Conflict, match="every VPS"):
        store.update_user(other.id, allowed_tags=["web"])


def test_sessions_expire_end_and_die_with_a_password_change(store: Store) -> None:
    alice = store.create_user("alice", "h1", Role.VIEWER, [])
    store.create_session(alice.id, "s1", expires_at=T0 + timedelta(hours=1))
    store.create_session(alice.id, "s2", expires_at=T0 + timedelta(hours=1))
    assert store.session_user("s1", T0) == alice
    assert store.session_user("s1", T0 + timedelta(hours=2)) is None
    store.delete_session("s1", audit=note("logout"))
    assert store.session_user("s1", T0) is None
    assert store.session_user("s2", T0) is not None
    store.update_user(alice.id, password_hash="h2")
    assert store.session_user("s2", T0) is None


def test_tokens_expire_are_revoked_and_die_with_their_owner(store: Store) -> None:
    alice = store.create_user("alice", "h1", Role.OPERATOR, [])
    bob = store.create_user("bob", "h2", Role.VIEWER, [])
    forever = store.add_token("ci", "t1", user_id=alice.id)
    brief = store.add_token("tmp", "t2", user_id=alice.id, expires_at=T0 + timedelta(minutes=5))
    store.add_token("mine", "t3", user_id=bob.id)
    assert brief.expires_at == T0 + timedelta(minutes=5)
    assert store.token_user("t2", T0).username == "alice"  # type: ignore[union-attr]
    assert store.token_user("t2", T0 + timedelta(minutes=5)) is None
    assert [t.username for t in store.list_tokens()] == ["alice", "alice", "bob"]
    with pytest.raises(core.NotFound):
        store.delete_token(forever.id, owner_id=bob.id)  # not bob's
    store.delete_token(forever.id, owner_id=alice.id)
    assert store.token_user("t1", T0) is None
    store.delete_user(bob.id)
    assert store.token_user("t3", T0) is None
    assert [t.name for t in store.list_tokens()] == ["tmp"]


def test_audit_filters_pages_and_is_append_only(store: Store) -> None:
    for i in range(5):
        store.add_audit(note("login_failed", outcome="failure", details={"n": i}))
    store.add_audit(AuditNote(actor="bob", action="login", source_ip=None))
    items, after = store.list_audit(limit=4)
    assert [e.action for e in items] == ["login"] + ["login_failed"] * 3
    assert after == items[-1].id
    rest, end = store.list_audit(limit=4, before=after)
    assert [e.details["n"] for e in rest] == [1, 0]
    assert end is None
    assert [e.actor for e in store.list_audit(actor="bob")[0]] == ["bob"]
    assert len(store.list_audit(action="login_failed")[0]) == 5
    now = datetime.now(UTC)
    assert store.list_audit(since=now + timedelta(minutes=1))[0] == []
    assert len(store.list_audit(until=now + timedelta(minutes=1))[0]) == 6
    for sql in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), orm.db_session:
            store._db.execute(sql)
    assert len(store.list_audit()[0]) == 6


def test_creating_a_batch_writes_its_audit_entry_in_the_same_transaction(
    store: Store, data_dir: Path
) -> None:
    vps = store.create_vps("web-1", ["web"], "h", audit=note("vps.create", target_type="vps"))
    batch_id = str(uuid.uuid4())
    args = dict(
        batch_id=batch_id,
        payload={"command_content": "uptime"},
        execution_alias=None,
        user_id="alice",
        command_type="ADHOC_COMMAND",
        command_content="uptime",
        script_id=None,
        working_directory=None,
        timeout_seconds=0,
        targets=[(str(uuid.uuid4()), vps.id, vps.name)],
        log_dir=data_dir / "logs",
        now=T0,
        audit=note("batch.create", target_type="batch", details={"command": "uptime"}),
    )
    assert store.create_batch(**args).user_id == "alice"  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - the same id again: the batch is refused
        store.create_batch(**args)  # type: ignore[arg-type]
    items, _ = store.list_audit()
    # One batch.create: the failed second transaction left no audit entry behind.
    assert [(e.action, e.target_id) for e in items] == [
        ("batch.create", batch_id),
        ("vps.create", str(vps.id)),
    ]


def test_batches_listed_by_scope(store: Store, data_dir: Path) -> None:
    web = store.create_vps("web-1", ["web"], "h")
    db = store.create_vps("db-1", ["db"], "h")

    def batch(*vps_ids: int) -> str:
        batch_id = str(uuid.uuid4())
        store.create_batch(
            batch_id=batch_id, payload={}, execution_alias=None, user_id="admin",
            command_type="ADHOC_COMMAND", command_content="true", script_id=None,
            working_directory=None, timeout_seconds=0,
            targets=[(str(uuid.uuid4()), v, f"v{v}") for v in vps_ids],
            log_dir=data_dir / "logs", now=T0,
        )  # fmt: skip
        return batch_id

    only_web, both, _only_db = batch(web.id), batch(web.id, db.id), batch(db.id)
    records, total = store.list_batches(limit=10, offset=0, visible_vps={web.id})
    assert ([r.id for r in records], total) == ([only_web], 1)
    assert store.list_batches(limit=10, offset=0, visible_vps=set())[1] == 0
    assert store.list_batches(limit=10, offset=0, visible_vps={web.id, db.id})[1] == 3
    assert both in {r.id for r in store.list_batches(limit=10, offset=0)[0]}


def test_the_first_start_token_and_its_owner_are_kept(store: Store) -> None:
    admin = store.ensure_admin()
    token = store.add_token("admin", "t0", user_id=admin.id, builtin=True)
    store.create_user("root2", "h", Role.ADMIN, [])  # another admin: the last-admin rule is met
    for change in (
        lambda: store.delete_token(token.id),
        lambda: store.delete_user(admin.id),
        lambda: store.update_user(admin.id, role=Role.VIEWER),
    ):
        with pytest.raises(core.Conflict, match="first-start admin token"):
            change()
    assert store.token_user("t0", T0) == admin
