"""The store's schema (Pony entities) and what differs between databases (binding, SQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pony import orm
from pony.orm import Json, LongStr, PrimaryKey, Required, Set

__all__ = [
    "ADDED_COLUMNS",
    "Dialect",
    "add_missing_columns",
    "aware",
    "bind_args",
    "define_entities",
    "protect_audit_log",
    "to_db",
    "utcnow",
]


def to_db(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def define_entities(db: Any) -> SimpleNamespace:
    """Define the entities on ``db``; table and column names are lower-case for PostgreSQL."""

    class Vps(db.Entity):  # type: ignore[misc]
        _table_ = "vps"
        id = PrimaryKey(int, auto=True)
        name = Required(str, unique=True)
        tags = Required(Json)
        secret_hash = Required(str)
        created_at = Required(datetime)
        updated_at = Required(datetime)
        last_seen_at = orm.Optional(datetime)
        hostname = orm.Optional(str, nullable=True)
        os_name = orm.Optional(str, nullable=True)
        os_type = orm.Optional(str, nullable=True)
        arch = orm.Optional(str, nullable=True)
        kernel_version = orm.Optional(str, nullable=True)
        agent_version = orm.Optional(str, nullable=True)

    class Script(db.Entity):  # type: ignore[misc]
        _table_ = "script"
        id = PrimaryKey(int, auto=True)
        name = Required(str, unique=True)
        description = orm.Optional(str, autostrip=False)
        content = orm.Optional(LongStr, autostrip=False)
        created_at = Required(datetime)
        updated_at = Required(datetime)
        parameters = orm.Optional(Json, nullable=True)  # declared parameters

    class ApiToken(db.Entity):  # type: ignore[misc]
        _table_ = "api_token"
        id = PrimaryKey(int, auto=True)
        name = Required(str)
        token_hash = Required(str, unique=True)
        created_at = Required(datetime)
        # Added with teams (ADDED_COLUMNS): the owner (older stores' tokens belong to the
        # built-in admin) and an optional expiry.
        user_id = orm.Optional(int, nullable=True)
        expires_at = orm.Optional(datetime, nullable=True)
        builtin = orm.Optional(bool, nullable=True)  # the first-start admin token

    class User(db.Entity):  # type: ignore[misc]
        _table_ = "fleet_user"  # "user" is reserved in PostgreSQL
        id = PrimaryKey(int, auto=True)
        username = Required(str, unique=True)
        password_hash = orm.Optional(str, nullable=True)  # argon2id; None: no password login
        role = Required(str)
        allowed_tags = Required(Json)
        created_at = Required(datetime)
        updated_at = Required(datetime)

    class WebSession(db.Entity):  # type: ignore[misc]
        _table_ = "web_session"
        id = PrimaryKey(int, auto=True)
        token_hash = Required(str, unique=True)
        user_id = Required(int, index=True)
        created_at = Required(datetime)
        expires_at = Required(datetime)

    class AuditEntry(db.Entity):  # type: ignore[misc]
        _table_ = "audit_log"  # append-only: triggers refuse UPDATE and DELETE
        id = PrimaryKey(int, auto=True)
        at = Required(datetime, index=True)
        actor = orm.Optional(str, index=True)
        action = Required(str, index=True)
        target_type = orm.Optional(str, nullable=True)
        target_id = orm.Optional(str, nullable=True)
        details = orm.Optional(Json)
        source_ip = orm.Optional(str, nullable=True)
        outcome = Required(str)

    class Batch(db.Entity):  # type: ignore[misc]
        _table_ = "batch_command_task"
        id = PrimaryKey(str, 36)
        original_request_payload = Required(Json)
        status = Required(str)
        execution_alias = orm.Optional(str, nullable=True)
        user_id = orm.Optional(str)
        command_content = orm.Optional(LongStr, autostrip=False)
        command_type = Required(str)
        script_id = orm.Optional(int)
        working_directory = orm.Optional(str, nullable=True, autostrip=False)
        timeout_seconds = Required(int)
        created_at = Required(datetime, index=True)
        updated_at = Required(datetime)
        completed_at = orm.Optional(datetime)
        # The cluster node running it (``--cluster``); None on a single server.
        owner_node = orm.Optional(str, nullable=True, index=True)
        children = Set("Child")
        # Rollout and parameters; limits as given (a count or "N%"), as text.
        max_concurrency = orm.Optional(str, nullable=True)
        max_errors = orm.Optional(str, nullable=True)
        wait_for_agent_seconds = orm.Optional(int, nullable=True)
        stop_reason = orm.Optional(LongStr, nullable=True, autostrip=False)
        rerun_of = orm.Optional(str, 36, nullable=True)
        target_tags = orm.Optional(Json, nullable=True)
        parameters = orm.Optional(Json, nullable=True)  # secret values masked, never stored
        secret_parameters = orm.Optional(Json, nullable=True)

    class Child(db.Entity):  # type: ignore[misc]
        _table_ = "child_command_task"
        id = PrimaryKey(str, 36)
        batch = Required(Batch, column="batch_id", index=True)
        vps_id = Required(int, index=True)
        vps_name = Required(str)
        status = Required(str)
        exit_code = orm.Optional(int)
        error_message = orm.Optional(LongStr, nullable=True, autostrip=False)
        stdout_log_path = orm.Optional(str, nullable=True)
        stderr_log_path = orm.Optional(str, nullable=True)
        last_output_at = orm.Optional(datetime)
        created_at = Required(datetime)
        updated_at = Required(datetime)
        agent_started_at = orm.Optional(datetime)
        agent_completed_at = orm.Optional(datetime)
        stdout_summary = Required(Json, default=[])
        stderr_summary = Required(Json, default=[])
        stdout_bytes = Required(int, default=0)
        stderr_bytes = Required(int, default=0)
        truncated = Required(bool, default=False)
        # {status, exit_code, at}: a result reported after the server ended the child.
        agent_reported = orm.Optional(Json, nullable=True)

    return SimpleNamespace(
        Vps=Vps,
        Script=Script,
        ApiToken=ApiToken,
        Batch=Batch,
        Child=Child,
        User=User,
        WebSession=WebSession,
        AuditEntry=AuditEntry,
    )


class Dialect:
    """The little SQL that differs between SQLite (sqlite3) and PostgreSQL (psycopg2)."""

    def __init__(self, provider_name: str) -> None:
        self.postgres = provider_name == "postgres"
        self.ph = "%s" if self.postgres else "?"

    def dt(self, value: datetime | None) -> Any:
        if value is None:
            return None
        naive = to_db(value)
        return naive if self.postgres else naive.isoformat(" ", timespec="microseconds")

    def dt_out(self, value: Any) -> datetime | None:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return aware(value)

    def dt_req(self, value: Any) -> datetime:
        out = self.dt_out(value)
        assert out is not None
        return out

    def json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def insert_many(self, cur: Any, table: str, cols: str, rows: list[tuple[Any, ...]]) -> None:
        if self.postgres:
            from psycopg2.extras import execute_values  # type: ignore[import-untyped,unused-ignore]

            execute_values(cur, f"INSERT INTO {table} ({cols}) VALUES %s", rows, page_size=1000)
        else:
            marks = ", ".join("?" * (cols.count(",") + 1))
            cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)

    def execute_many(self, cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self.postgres:
            from psycopg2.extras import execute_batch  # type: ignore[import-untyped,unused-ignore]

            execute_batch(cur, sql, rows, page_size=500)
        else:
            cur.executemany(sql, rows)


def bind_args(url: str | None, data_dir: Path) -> dict[str, Any]:
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "provider": "sqlite",
            "filename": str((data_dir / "fleet.db").resolve()),
            "create_db": True,
        }
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(unquote(parts.netloc + parts.path))
        path.parent.mkdir(parents=True, exist_ok=True)
        return {"provider": "sqlite", "filename": str(path.resolve()), "create_db": True}
    if parts.scheme in ("postgres", "postgresql"):
        args: dict[str, Any] = {
            "provider": "postgres",
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "host": parts.hostname,
            "port": parts.port,
            "dbname": unquote(parts.path.lstrip("/")) or None,
        }
        # libpq parameters such as ``sslmode`` or ``options=-csearch_path=x`` pass through.
        args.update(parse_qsl(parts.query))
        return {k: v for k, v in args.items() if v is not None}
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r} (sqlite or postgres)")


#: Columns added after the first release, for stores created before them: (table, column,
#: SQLite type, PostgreSQL type). Added at start-up when missing; never dropped.
ADDED_COLUMNS = (
    ("child_command_task", "agent_reported", "TEXT", "JSONB"),
    ("script", "parameters", "TEXT", "JSONB"),
    ("batch_command_task", "max_concurrency", "TEXT", "TEXT"),
    ("batch_command_task", "max_errors", "TEXT", "TEXT"),
    ("batch_command_task", "wait_for_agent_seconds", "INTEGER", "INTEGER"),
    ("batch_command_task", "stop_reason", "TEXT", "TEXT"),
    ("batch_command_task", "rerun_of", "VARCHAR(36)", "VARCHAR(36)"),
    ("batch_command_task", "target_tags", "TEXT", "JSONB"),
    ("batch_command_task", "parameters", "TEXT", "JSONB"),
    ("batch_command_task", "secret_parameters", "TEXT", "JSONB"),
    ("batch_command_task", "owner_node", "TEXT", "TEXT"),
    ("api_token", "user_id", "INTEGER", "INTEGER"),
    ("api_token", "expires_at", "DATETIME", "TIMESTAMP"),
    ("api_token", "builtin", "BOOLEAN", "BOOLEAN"),
)


#: Indexes of added columns (Pony names them so when it creates a table itself).
ADDED_INDEXES = (("batch_command_task", "owner_node", "idx_batch_command_task__owner_node"),)


def add_missing_columns(db: Any) -> None:
    """Bring an older store's tables up to this schema (call before ``generate_mapping``)."""
    with orm.db_session:
        for table, column, sqlite_type, pg_type in ADDED_COLUMNS:
            if db.provider_name == "postgres":
                db.execute(
                    f"ALTER TABLE IF EXISTS {table} ADD COLUMN IF NOT EXISTS {column} {pg_type}"
                )
                continue
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}
            if columns and column not in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sqlite_type}")
        for table, column, index in ADDED_INDEXES:
            if _table_exists(db, table):
                db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({column})")


def _table_exists(db: Any, table: str) -> bool:
    if db.provider_name == "postgres":
        return bool(db.select(f"SELECT to_regclass('{table}') IS NOT NULL")[0])
    return bool(db.select(f"SELECT count(*) FROM sqlite_master WHERE name = '{table}'")[0])


# Under a transaction-scoped advisory lock: cluster nodes starting together take turns.
_PG_APPEND_ONLY = """
SELECT pg_advisory_xact_lock(7271350901);
CREATE OR REPLACE FUNCTION fleet_audit_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END; $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION fleet_audit_append_only();
"""


def protect_audit_log(db: Any) -> None:
    """Make the database itself refuse to change or delete audit entries (after the mapping)."""
    with orm.db_session:
        if db.provider_name == "postgres":
            # On the raw cursor: Pony's execute would read ``$$`` as a parameter.
            db.get_connection().cursor().execute(_PG_APPEND_ONLY)
            return
        for event in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{event.lower()} BEFORE {event} ON "
                "audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
            )
