"""Fleet's persistence: Pony entities behind a synchronous API that returns plain records.

Theory of operation:

* ``Store.open`` builds its own ``pony.orm.Database`` and defines the entities on it, so several
  stores can live in one process (tests do this). Nothing here is module-level state.
* Every method runs in one ``db_session`` (one transaction) and returns frozen dataclasses, never
  entities: an entity read after its session ends raises ``DatabaseSessionIsOver``.
* Pony sessions are bound to the calling thread, so the server calls the store only from its DB
  thread (``fleet.server.dbthread``); tests may call it directly.
* Timestamps are stored as naive UTC and come back timezone-aware (UTC). A naive datetime given
  to the store is taken to be UTC already.
* Child tasks are written and read in bulk with SQL on Pony's own connection (inside the same
  session): creating one Pony entity per child costs far more than the 10,000-target budget.
  Entities still define the schema and serve the small tables.
* Children keep ``vps_id`` and ``vps_name`` but have no foreign key to ``vps``: deleting a VPS
  never touches batch history.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, TypeVar, cast

from pony import orm

from fleet.core._errors import NotFound, ValidationError
from fleet.core._status import BatchStatus, ChildStatus

from .records import (
    UNSET,
    BatchRecord,
    BatchUpdate,
    ChildRecord,
    ChildUpdate,
    ScriptRecord,
    VpsRecord,
)
from .schema import Dialect, aware, bind_args, define_entities, to_db, utcnow

__all__ = [
    "UNSET",
    "BatchRecord",
    "BatchUpdate",
    "ChildRecord",
    "ChildUpdate",
    "ScriptRecord",
    "Store",
    "VpsRecord",
]

TOKEN_TOUCH_INTERVAL: Final = timedelta(minutes=1)
"""``token_exists`` writes ``last_used_at`` at most this often per token."""

_F = TypeVar("_F", bound=Callable[..., Any])

_CHUNK = 500  # ids per ``IN (...)`` list, well below SQLite's bound-parameter limit


_NULLABLE_UPDATES = frozenset({"exit_code", "error_message"})
_DT_COLS = frozenset(
    {"created_at", "updated_at", "completed_at", "last_output_at"}
    | {"agent_started_at", "agent_completed_at"}
)
_JSON_COLS = frozenset({"stdout_summary", "stderr_summary"})
_CHILD_COLS = (
    "id, batch_id, vps_id, vps_name, status, exit_code, error_message, stdout_log_path,"
    " stderr_log_path, last_output_at, created_at, updated_at, agent_started_at,"
    " agent_completed_at, stdout_summary, stderr_summary, stdout_bytes, stderr_bytes, truncated"
)


def db_session(fn: _F) -> _F:
    """``pony.orm.db_session`` with its type kept: one transaction per call."""
    return cast(_F, orm.db_session(fn))


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _duplicate(kind: str, name: str) -> ValidationError:
    return ValidationError([{"field": "name", "reason": f"a {kind} named {name} already exists"}])


class Store:
    """Fleet's database. Open it with ``Store.open``; call it from one thread at a time."""

    def __init__(self, db: Any, entities: SimpleNamespace) -> None:
        self._db = db
        self._e = entities
        self._sql = Dialect(db.provider_name)

    @classmethod
    def open(cls, url: str | None, data_dir: Path) -> Store:
        """Open (creating tables as needed) the database named by ``url``.

        Args:
            url: ``None`` for SQLite at ``<data_dir>/fleet.db``; ``sqlite:///path``; or
                ``postgres://user:pass@host:port/dbname`` (also ``postgresql://``), whose query
                parameters are handed to libpq.
            data_dir: The server's data directory.

        Raises:
            ValueError: ``url`` names no supported database.
        """
        db = orm.Database()

        @db.on_connect(provider="sqlite")  # type: ignore[untyped-decorator]
        def _sqlite_pragmas(_db: Any, connection: Any) -> None:
            cursor = connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.execute("PRAGMA foreign_keys=ON")

        entities = define_entities(db)
        db.bind(**bind_args(url, data_dir))
        if db.provider_name == "postgres":
            # Pony looks tables up in "public"; follow the connection's search_path instead.
            with orm.db_session:
                schema = db.select("select current_schema()")[0]
            if schema:
                db.provider.default_schema_name = schema
        db.generate_mapping(create_tables=True)
        return cls(db, entities)

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.disconnect()

    # -- tokens ------------------------------------------------------------------------------

    @db_session
    def add_token(self, name: str, token_hash: str) -> None:
        self._e.ApiToken(name=name, token_hash=token_hash, created_at=utcnow())

    @db_session
    def token_exists(self, token_hash: str) -> bool:
        """Whether an API token has this hash; records its use at most once a minute."""
        token = self._e.ApiToken.get(token_hash=token_hash)
        if token is None:
            return False
        now = utcnow()
        if token.last_used_at is None or now - token.last_used_at >= TOKEN_TOUCH_INTERVAL:
            token.last_used_at = now
        return True

    @db_session
    def has_tokens(self) -> bool:
        return bool(self._e.ApiToken.select().exists())

    @db_session
    def token_hashes(self) -> list[str]:
        """Every API token's digest (the server keeps them in memory to check requests)."""
        return [str(t.token_hash) for t in self._e.ApiToken.select()]

    # -- VPSes -------------------------------------------------------------------------------

    @staticmethod
    def _vps_record(v: Any) -> VpsRecord:
        return VpsRecord(
            id=v.id,
            name=v.name,
            tags=tuple(v.tags),
            created_at=v.created_at.replace(tzinfo=UTC),
            updated_at=v.updated_at.replace(tzinfo=UTC),
            last_seen_at=aware(v.last_seen_at),
            hostname=v.hostname,
            os_name=v.os_name,
            os_type=v.os_type,
            arch=v.arch,
            kernel_version=v.kernel_version,
            agent_version=v.agent_version,
        )

    def _vps(self, vps_id: int) -> Any:
        vps = self._e.Vps.get(id=vps_id)
        if vps is None:
            raise NotFound("vps", vps_id)
        return vps

    @db_session
    def create_vps(self, name: str, tags: Sequence[str], secret_hash: str) -> VpsRecord:
        """Raises ValidationError if a VPS with this name exists."""
        if self._e.Vps.get(name=name) is not None:
            raise _duplicate("VPS", name)
        now = utcnow()
        vps = self._e.Vps(
            name=name, tags=list(tags), secret_hash=secret_hash, created_at=now, updated_at=now
        )
        orm.flush()  # assigns the id
        return self._vps_record(vps)

    @db_session
    def list_vps(self) -> list[VpsRecord]:
        """Every VPS, by id."""
        return [self._vps_record(v) for v in self._e.Vps.select().order_by(self._e.Vps.id)]

    @db_session
    def get_vps(self, vps_id: int) -> VpsRecord:
        return self._vps_record(self._vps(vps_id))

    @db_session
    def get_vps_many(self, ids: Iterable[int]) -> dict[int, VpsRecord]:
        """The VPSes among ``ids`` that exist, by id."""
        Vps, found = self._e.Vps, {}
        for chunk in _chunks(sorted(set(ids))):
            for v in orm.select(v for v in Vps if v.id in chunk):
                found[v.id] = self._vps_record(v)
        return found

    @db_session
    def delete_vps(self, vps_id: int) -> None:
        """Delete a VPS; its batch history stays."""
        self._vps(vps_id).delete()

    @db_session
    def update_vps(
        self, vps_id: int, name: str | None = None, tags: Sequence[str] | None = None
    ) -> VpsRecord:
        vps = self._vps(vps_id)
        if name is not None and name != vps.name:
            if self._e.Vps.get(name=name) is not None:
                raise _duplicate("VPS", name)
            vps.name = name
        if tags is not None:
            vps.tags = list(tags)
        vps.updated_at = utcnow()
        return self._vps_record(vps)

    @db_session
    def set_vps_secret(self, vps_id: int, secret_hash: str) -> None:
        vps = self._vps(vps_id)
        vps.secret_hash = secret_hash
        vps.updated_at = utcnow()

    @db_session
    def vps_secret_hashes(self) -> list[tuple[int, str]]:
        """``(vps_id, secret digest)`` of every VPS, to check agents without a query each."""
        return [(int(v.id), str(v.secret_hash)) for v in self._e.Vps.select()]

    @db_session
    def vps_secret_hash(self, vps_id: int) -> str | None:
        vps = self._e.Vps.get(id=vps_id)
        return None if vps is None else str(vps.secret_hash)

    @db_session
    def record_agent_seen(
        self,
        vps_id: int,
        *,
        hostname: str | None,
        os_type: str | None,
        os_name: str | None,
        arch: str | None,
        kernel_version: str | None,
        agent_version: str | None,
        seen_at: datetime,
    ) -> None:
        """Store what a connecting agent reported. Raises NotFound for an unknown VPS."""
        vps = self._vps(vps_id)
        vps.set(
            hostname=hostname,
            os_type=os_type,
            os_name=os_name,
            arch=arch,
            kernel_version=kernel_version,
            agent_version=agent_version,
            last_seen_at=to_db(seen_at),
        )

    @db_session
    def touch_vps_seen(self, updates: dict[int, datetime]) -> None:
        """Set ``last_seen_at`` of many VPSes in one transaction; unknown ids are ignored."""
        rows = [(self._sql.dt(seen), vps_id) for vps_id, seen in updates.items()]
        if rows:
            sql = f"UPDATE vps SET last_seen_at = {self._sql.ph} WHERE id = {self._sql.ph}"
            self._sql.execute_many(self._db.get_connection().cursor(), sql, rows)

    # -- scripts -----------------------------------------------------------------------------

    @staticmethod
    def _script_record(s: Any) -> ScriptRecord:
        return ScriptRecord(
            id=s.id,
            name=s.name,
            description=s.description,
            content=s.content,
            created_at=s.created_at.replace(tzinfo=UTC),
            updated_at=s.updated_at.replace(tzinfo=UTC),
        )

    def _script(self, script_id: int) -> Any:
        script = self._e.Script.get(id=script_id)
        if script is None:
            raise NotFound("script", script_id)
        return script

    @db_session
    def create_script(self, name: str, description: str, content: str) -> ScriptRecord:
        """Raises ValidationError if a script with this name exists."""
        if self._e.Script.get(name=name) is not None:
            raise _duplicate("script", name)
        now = utcnow()
        script = self._e.Script(
            name=name, description=description, content=content, created_at=now, updated_at=now
        )
        orm.flush()
        return self._script_record(script)

    @db_session
    def list_scripts(self) -> list[ScriptRecord]:
        Script = self._e.Script
        return [self._script_record(s) for s in Script.select().order_by(Script.id)]

    @db_session
    def get_script(self, script_id: int) -> ScriptRecord:
        return self._script_record(self._script(script_id))

    @db_session
    def update_script(
        self, script_id: int, name: str, description: str, content: str
    ) -> ScriptRecord:
        script = self._script(script_id)
        if name != script.name and self._e.Script.get(name=name) is not None:
            raise _duplicate("script", name)
        script.set(name=name, description=description, content=content, updated_at=utcnow())
        return self._script_record(script)

    @db_session
    def delete_script(self, script_id: int) -> None:
        self._script(script_id).delete()

    # -- batches -----------------------------------------------------------------------------

    def _batch_record(
        self, b: Any, counts: dict[str, int], children: tuple[ChildRecord, ...] = ()
    ) -> BatchRecord:
        return BatchRecord(
            id=b.id,
            payload=json.loads(json.dumps(b.original_request_payload)),  # plain, untracked
            status=BatchStatus(b.status),
            execution_alias=b.execution_alias,
            user_id=b.user_id,
            command_type=b.command_type,
            command_content=b.command_content,
            script_id=b.script_id,
            working_directory=b.working_directory,
            timeout_seconds=b.timeout_seconds,
            created_at=b.created_at.replace(tzinfo=UTC),
            updated_at=b.updated_at.replace(tzinfo=UTC),
            completed_at=aware(b.completed_at),
            counts=counts,
            children=children,
        )

    def _child_record(self, row: Sequence[Any]) -> ChildRecord:
        sql = self._sql
        return ChildRecord(
            id=row[0],
            batch_id=row[1],
            vps_id=row[2],
            vps_name=row[3],
            status=ChildStatus(row[4]),
            exit_code=row[5],
            error_message=row[6],
            stdout_log_path=row[7],
            stderr_log_path=row[8],
            last_output_at=sql.dt_out(row[9]),
            created_at=sql.dt_req(row[10]),
            updated_at=sql.dt_req(row[11]),
            agent_started_at=sql.dt_out(row[12]),
            agent_completed_at=sql.dt_out(row[13]),
            stdout_summary=tuple(sql.json_out(row[14])),
            stderr_summary=tuple(sql.json_out(row[15])),
            stdout_bytes=row[16],
            stderr_bytes=row[17],
            truncated=bool(row[18]),
        )

    def _children(self, where: str, params: tuple[Any, ...]) -> tuple[ChildRecord, ...]:
        cur = self._db.get_connection().cursor()
        cur.execute(
            f"SELECT {_CHILD_COLS} FROM child_command_task WHERE {where} ORDER BY vps_name, id",
            params,
        )
        return tuple(self._child_record(row) for row in cur.fetchall())

    def _counts(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
        cur = self._db.get_connection().cursor()
        for chunk in _chunks(batch_ids):
            marks = ", ".join([self._sql.ph] * len(chunk))
            cur.execute(
                "SELECT batch_id, status, COUNT(*) FROM child_command_task"
                f" WHERE batch_id IN ({marks}) GROUP BY batch_id, status",
                tuple(chunk),
            )
            for batch_id, status, n in cur.fetchall():
                counts[batch_id][status] = int(n)
        return counts

    def _with_children(self, b: Any) -> BatchRecord:
        children = self._children(f"batch_id = {self._sql.ph}", (b.id,))
        counts: dict[str, int] = {}
        for child in children:
            counts[child.status.value] = counts.get(child.status.value, 0) + 1
        return self._batch_record(b, counts, children)

    @db_session
    def create_batch(
        self,
        *,
        batch_id: str,
        payload: dict[str, Any],
        execution_alias: str | None,
        user_id: str,
        command_type: str,
        command_content: str,
        script_id: int | None,
        working_directory: str | None,
        timeout_seconds: int,
        targets: Sequence[tuple[str, int, str]],
        log_dir: Path,
        now: datetime,
    ) -> BatchRecord:
        """Create a PENDING batch and its PENDING children in one transaction.

        Args:
            targets: ``(child_id, vps_id, vps_name)`` per child.
            log_dir: Output logs go to ``<log_dir>/<batch_id>/<child_id>.stdout|.stderr``.
        """
        self._e.Batch(
            id=batch_id,
            original_request_payload=payload,
            status=BatchStatus.PENDING.value,
            execution_alias=execution_alias,
            user_id=user_id,
            command_type=command_type,
            command_content=command_content,
            script_id=script_id,
            working_directory=working_directory,
            timeout_seconds=timeout_seconds,
            created_at=to_db(now),
            updated_at=to_db(now),
        )
        orm.flush()  # the children's foreign key needs the batch row
        sql, at, pending = self._sql, self._sql.dt(now), ChildStatus.PENDING.value
        # Plain string joins: building 20,000 Paths would cost more than the insert.
        prefix = os.path.join(log_dir, batch_id, "")

        def logs(child_id: str) -> tuple[str, str]:
            return f"{prefix}{child_id}.stdout", f"{prefix}{child_id}.stderr"

        tail = (None, at, at, None, None, "[]", "[]", 0, 0, False)  # see _CHILD_COLS
        rows = [
            (child_id, batch_id, vps_id, vps_name, pending, None, None, *logs(child_id), *tail)
            for child_id, vps_id, vps_name in targets
        ]
        if rows:
            sql.insert_many(
                self._db.get_connection().cursor(), "child_command_task", _CHILD_COLS, rows
            )
        children = tuple(
            sorted((self._child_record(row) for row in rows), key=lambda c: (c.vps_name, c.id))
        )
        return self._batch_record(
            self._e.Batch[batch_id], {pending: len(rows)} if rows else {}, children
        )

    @db_session
    def get_batch(self, batch_id: str) -> BatchRecord:
        """The batch with its children ordered by VPS name, then id."""
        batch = self._e.Batch.get(id=batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        return self._with_children(batch)

    @db_session
    def list_batches(self, *, limit: int, offset: int) -> tuple[list[BatchRecord], int]:
        """One page of batches, newest first, without children; and the number of batches."""
        Batch, offset = self._e.Batch, max(offset, 0)
        query = Batch.select().order_by(orm.desc(Batch.created_at), orm.desc(Batch.id))
        page = list(query[offset : offset + max(limit, 0)])
        counts = self._counts([b.id for b in page])
        return [self._batch_record(b, counts[b.id]) for b in page], int(Batch.select().count())

    @db_session
    def get_child(self, batch_id: str, child_id: str) -> ChildRecord:
        """Raises NotFound("task", child_id) also when the child belongs to another batch."""
        ph = self._sql.ph
        found = self._children(f"id = {ph} AND batch_id = {ph}", (child_id, batch_id))
        if not found:
            raise NotFound("task", child_id)
        return found[0]

    @db_session
    def unfinished_batches(self) -> list[BatchRecord]:
        """Batches (with children) whose status is not terminal, oldest first."""
        Batch = self._e.Batch
        live = [s.value for s in BatchStatus if not s.is_terminal]
        query = orm.select(b for b in Batch if b.status in live).order_by(Batch.created_at)
        return [self._with_children(b) for b in query]

    @db_session
    def apply_updates(
        self, batches: Sequence[BatchUpdate], children: Sequence[ChildUpdate]
    ) -> None:
        """Apply many partial updates in one transaction; ids naming nothing are ignored.

        Several updates of one row are merged in order, so the later one wins field by field.
        """
        cur = self._db.get_connection().cursor()
        self._update(cur, "batch_command_task", ((u.batch_id, u) for u in batches))
        self._update(cur, "child_command_task", ((u.child_id, u) for u in children))

    def _update(self, cur: Any, table: str, updates: Iterable[tuple[str, Any]]) -> None:
        merged: dict[str, dict[str, Any]] = {}
        for row_id, update in updates:
            changes = merged.setdefault(row_id, {})
            for field in dataclasses.fields(update)[1:]:
                value = getattr(update, field.name)
                if value is UNSET or (value is None and field.name not in _NULLABLE_UPDATES):
                    continue
                if field.name in _DT_COLS:
                    value = self._sql.dt(value)
                elif field.name in _JSON_COLS:
                    value = json.dumps(list(value))
                elif isinstance(value, enum.Enum):
                    value = value.value
                changes[field.name] = value
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row_id, changes in merged.items():
            if changes:
                groups.setdefault(tuple(changes), []).append((*changes.values(), row_id))
        ph = self._sql.ph
        for cols, rows in groups.items():
            assignments = ", ".join(f"{col} = {ph}" for col in cols)
            self._sql.execute_many(cur, f"UPDATE {table} SET {assignments} WHERE id = {ph}", rows)
