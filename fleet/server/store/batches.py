"""Batches and their children: creation in bulk, reads with counts, and batched partial updates.

Children are written and read with SQL on Pony's own connection (inside the same session):
creating one Pony entity per child costs far more than the 10,000-target budget. They keep
``vps_id`` and ``vps_name`` but have no foreign key to ``vps``: deleting a VPS never touches batch
history.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pony import orm

from fleet.core import BatchStatus, ChildStatus, NotFound
from fleet.server.records import (
    UNSET,
    AuditNote,
    BatchRecord,
    BatchUpdate,
    ChildRecord,
    ChildUpdate,
)

from .base import StoreBase, chunks, db_session
from .schema import aware, to_db

__all__ = ["BatchOptions", "BatchStore"]


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """A batch's rollout options, tags, re-run origin and parameters (secret values masked:
    they are never stored)."""

    max_concurrency: int | str | None = None
    max_errors: int | str | None = None
    wait_for_agent_seconds: int = 0
    rerun_of: str | None = None
    target_tags: tuple[str, ...] = ()
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    secret_parameters: tuple[str, ...] = ()

    def columns(self) -> dict[str, Any]:
        return {
            "max_concurrency": _limit_in(self.max_concurrency),
            "max_errors": _limit_in(self.max_errors),
            "wait_for_agent_seconds": self.wait_for_agent_seconds,
            "rerun_of": self.rerun_of,
            "target_tags": list(self.target_tags),
            "parameters": dict(self.parameters),
            "secret_parameters": list(self.secret_parameters),
        }


def _limit_in(value: int | str | None) -> str | None:
    return None if value is None else str(value)


def _limit_out(value: str | None) -> int | str | None:
    """A stored limit: a count (digits) or a percentage ("N%")."""
    if not value:
        return None
    return int(value) if value.isdigit() else value


def _plain(value: Any) -> Any:
    """A Pony Json value as plain, untracked data."""
    return None if value is None else json.loads(json.dumps(value))


_NULLABLE_UPDATES = frozenset({"exit_code", "error_message"})
_DT_COLS = frozenset(
    {"created_at", "updated_at", "completed_at", "last_output_at"}
    | {"agent_started_at", "agent_completed_at"}
)
_JSON_COLS = frozenset({"stdout_summary", "stderr_summary"})
_JSON_OBJECT_COLS = frozenset({"agent_reported"})
_CHILD_COLS = (
    "id, batch_id, vps_id, vps_name, status, exit_code, error_message, stdout_log_path,"
    " stderr_log_path, last_output_at, created_at, updated_at, agent_started_at,"
    " agent_completed_at, stdout_summary, stderr_summary, stdout_bytes, stderr_bytes, truncated,"
    " agent_reported"
)


class BatchStore(StoreBase):
    """The store's batch tables (``batch_command_task``, ``child_command_task``)."""

    # -- batches -----------------------------------------------------------------------------

    def _batch_record(
        self, b: Any, counts: dict[str, int], children: tuple[ChildRecord, ...] = ()
    ) -> BatchRecord:
        return BatchRecord(
            id=b.id,
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
            max_concurrency=_limit_out(b.max_concurrency),
            max_errors=_limit_out(b.max_errors),
            wait_for_agent_seconds=b.wait_for_agent_seconds or 0,
            stop_reason=b.stop_reason,
            rerun_of=b.rerun_of,
            target_tags=tuple(_plain(b.target_tags) or ()),
            parameters=dict(_plain(b.parameters) or {}),
            secret_parameters=tuple(_plain(b.secret_parameters) or ()),
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
            agent_reported=sql.json_out(row[19]) if row[19] is not None else None,
        )

    def _children(self, where: str, params: tuple[Any, ...]) -> tuple[ChildRecord, ...]:
        cur = self._cursor()
        cur.execute(
            f"SELECT {_CHILD_COLS} FROM child_command_task WHERE {where} ORDER BY vps_name, id",
            params,
        )
        return tuple(self._child_record(row) for row in cur.fetchall())

    def _counts(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
        cur = self._cursor()
        for chunk in chunks(batch_ids):
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
        options: BatchOptions | None = None,
        owner_node: str | None = None,
        audit: AuditNote | None = None,
    ) -> BatchRecord:
        """Create a PENDING batch and its PENDING children in one transaction.

        Args:
            user_id: Who created it (a username: ``created_by``).
            targets: ``(child_id, vps_id, vps_name)`` per child.
            options: rollout options, tags, re-run origin and (masked) parameters.
            log_dir: Output logs go to ``<log_dir>/<batch_id>/<child_id>.stdout|.stderr``.
            owner_node: the cluster node that runs it (``fleet.server.cluster``).
            audit: The ``batch.create`` entry, written in the same transaction.
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
            **(options or BatchOptions()).columns(),
            owner_node=owner_node,
        )
        orm.flush()  # the children's foreign key needs the batch row
        sql, at, pending = self._sql, self._sql.dt(now), ChildStatus.PENDING.value
        # Plain string joins: building 20,000 Paths would cost more than the insert.
        prefix = os.path.join(log_dir, batch_id, "")

        def logs(child_id: str) -> tuple[str, str]:
            return f"{prefix}{child_id}.stdout", f"{prefix}{child_id}.stderr"

        tail = (None, at, at, None, None, "[]", "[]", 0, 0, False, None)  # see _CHILD_COLS
        rows = [
            (child_id, batch_id, vps_id, vps_name, pending, None, None, *logs(child_id), *tail)
            for child_id, vps_id, vps_name in targets
        ]
        if rows:
            sql.insert_many(self._cursor(), "child_command_task", _CHILD_COLS, rows)
        self._audit(audit, batch_id)
        children = tuple(
            sorted((self._child_record(row) for row in rows), key=lambda c: (c.vps_name, c.id))
        )
        return self._batch_record(
            self._e.Batch[batch_id], {pending: len(rows)} if rows else {}, children
        )

    @db_session
    def get_batch(self, batch_id: str) -> BatchRecord:
        """The batch with its children ordered by VPS name, then id."""
        if len(batch_id) > 36:
            raise NotFound("batch", batch_id[:40])  # no id is that long (Pony would refuse it)
        batch = self._e.Batch.get(id=batch_id)
        if batch is None:
            raise NotFound("batch", batch_id)
        return self._with_children(batch)

    @db_session
    def list_batches(
        self, *, limit: int, offset: int, visible_vps: Collection[int] | None = None
    ) -> tuple[list[BatchRecord], int]:
        """One page of batches, newest first, without children; and the number of batches.

        With ``visible_vps``, only the batches whose every target is among them (a scoped
        user's view).
        """
        Batch, offset, limit = self._e.Batch, max(offset, 0), max(limit, 0)
        if visible_vps is None:
            query = Batch.select().order_by(orm.desc(Batch.created_at), orm.desc(Batch.id))
            page = list(query[offset : offset + limit])
            total = int(Batch.select().count())
        else:
            # Ids are integers from the store: inlined, so no bound-parameter limit applies.
            ids = ", ".join(str(int(v)) for v in sorted(set(visible_vps))) or "-1"
            where = (
                "NOT EXISTS (SELECT 1 FROM child_command_task c WHERE c.batch_id = b.id"
                f" AND c.vps_id NOT IN ({ids}))"
            )
            cur = self._cursor()
            cur.execute(f"SELECT COUNT(*) FROM batch_command_task b WHERE {where}")
            total = int(cur.fetchone()[0])
            cur.execute(
                f"SELECT b.id FROM batch_command_task b WHERE {where}"
                f" ORDER BY b.created_at DESC, b.id DESC LIMIT {limit} OFFSET {offset}"
            )
            page = [Batch[row[0]] for row in cur.fetchall()]
        counts = self._counts([b.id for b in page])
        return [self._batch_record(b, counts[b.id]) for b in page], total

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
        cur = self._cursor()
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
                elif field.name in _JSON_OBJECT_COLS:
                    value = json.dumps(value)
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
