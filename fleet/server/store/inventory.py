"""The inventory: VPSes (with their agent secret digests and what their agents report) and saved
scripts. Each change takes an optional ``AuditNote`` written in its transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pony import orm

from fleet.core import NotFound
from fleet.server.records import AuditNote, ScriptRecord, VpsRecord

from .base import StoreBase, chunks, db_session, duplicate
from .schema import aware, utcnow

__all__ = ["AGENT_FACTS", "InventoryStore"]


_VPS_COLS = (
    "id, name, tags, created_at, updated_at, last_seen_at, "
    "hostname, os_name, os_type, arch, kernel_version, agent_version"
)

#: What a connecting agent says about its machine, as the ``vps`` columns that keep it.
AGENT_FACTS = ("hostname", "os_type", "os_name", "arch", "kernel_version", "agent_version")


class InventoryStore(StoreBase):
    """The store's inventory tables (``vps``, ``script``)."""

    # -- VPSes -------------------------------------------------------------------------------

    def _vps_rows(self, where: str = "", params: Sequence[Any] = ()) -> list[VpsRecord]:
        """VPS records read with one plain query (no ORM objects: 10,000 rows for a batch or
        a page of the inventory cost a few milliseconds, not a second), by id. Reads use it;
        ``_vps_record`` is for an ORM object just written in the same session."""
        cur = self._cursor()
        cur.execute(f"SELECT {_VPS_COLS} FROM vps {where} ORDER BY id", tuple(params))
        sql = self._sql
        return [
            VpsRecord(
                id=row[0],
                name=row[1],
                tags=tuple(sql.json_out(row[2])),
                created_at=sql.dt_req(row[3]),
                updated_at=sql.dt_req(row[4]),
                last_seen_at=sql.dt_out(row[5]),
                hostname=row[6],
                os_name=row[7],
                os_type=row[8],
                arch=row[9],
                kernel_version=row[10],
                agent_version=row[11],
            )
            for row in cur.fetchall()
        ]

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
    def create_vps(
        self, name: str, tags: Sequence[str], secret_hash: str, *, audit: AuditNote | None = None
    ) -> VpsRecord:
        """Raises ValidationError if a VPS with this name exists."""
        if self._e.Vps.get(name=name) is not None:
            raise duplicate("VPS", name)
        now = utcnow()
        vps = self._e.Vps(
            name=name, tags=list(tags), secret_hash=secret_hash, created_at=now, updated_at=now
        )
        orm.flush()  # assigns the id
        self._audit(audit, vps.id)
        return self._vps_record(vps)

    @db_session
    def list_vps(self) -> list[VpsRecord]:
        """Every VPS, by id."""
        return self._vps_rows()

    @db_session
    def get_vps(self, vps_id: int) -> VpsRecord:
        found = self._vps_rows(f"WHERE id = {self._sql.ph}", (vps_id,))
        if not found:
            raise NotFound("vps", vps_id)
        return found[0]

    @db_session
    def vps_with_tags(self, tags: Iterable[str]) -> dict[int, VpsRecord]:
        """Every VPS having any of ``tags``."""
        wanted = set(tags)
        if not wanted:
            return {}
        return {v.id: v for v in self._vps_rows() if wanted.intersection(v.tags)}

    @db_session
    def get_vps_many(self, ids: Iterable[int]) -> dict[int, VpsRecord]:
        """The VPSes among ``ids`` that exist, by id."""
        found = {}
        for chunk in chunks(sorted(set(ids))):
            marks = ", ".join([self._sql.ph] * len(chunk))
            for record in self._vps_rows(f"WHERE id IN ({marks})", chunk):
                found[record.id] = record
        return found

    @db_session
    def delete_vps(self, vps_id: int, *, audit: AuditNote | None = None) -> None:
        """Delete a VPS; its batch history stays."""
        self._vps(vps_id).delete()
        self._audit(audit)

    @db_session
    def update_vps(
        self, vps_id: int, name: str | None = None, tags: Sequence[str] | None = None
    ) -> VpsRecord:
        vps = self._vps(vps_id)
        if name is not None and name != vps.name:
            if self._e.Vps.get(name=name) is not None:
                raise duplicate("VPS", name)
            vps.name = name
        if tags is not None:
            vps.tags = list(tags)
        vps.updated_at = utcnow()
        return self._vps_record(vps)

    @db_session
    def set_vps_secret(
        self, vps_id: int, secret_hash: str, *, audit: AuditNote | None = None
    ) -> None:
        vps = self._vps(vps_id)
        vps.secret_hash = secret_hash
        vps.updated_at = utcnow()
        self._audit(audit)

    @db_session
    def vps_secret_hashes(self) -> list[tuple[int, str]]:
        """``(vps_id, secret digest)`` of every VPS, to check agents without a query each."""
        return [(int(v.id), str(v.secret_hash)) for v in self._e.Vps.select()]

    @db_session
    def record_agents_seen(self, seen: Sequence[tuple[int, Sequence[str], datetime]]) -> None:
        """Store what connecting agents reported, many in one transaction (one statement per
        page, not a read and a write per VPS): each item is ``(vps_id, facts, seen_at)`` with
        the facts in ``AGENT_FACTS`` order. Unknown ids (deleted while connected) are ignored."""
        rows = [(*facts, self._sql.dt(at), vps_id) for vps_id, facts, at in seen]
        if rows:
            ph = self._sql.ph
            columns = ", ".join(f"{name} = {ph}" for name in (*AGENT_FACTS, "last_seen_at"))
            sql = f"UPDATE vps SET {columns} WHERE id = {ph}"
            self._sql.execute_many(self._cursor(), sql, rows)

    @db_session
    def touch_vps_seen(self, updates: dict[int, datetime]) -> None:
        """Set ``last_seen_at`` of many VPSes in one transaction; unknown ids are ignored."""
        rows = [(self._sql.dt(seen), vps_id) for vps_id, seen in updates.items()]
        if rows:
            sql = f"UPDATE vps SET last_seen_at = {self._sql.ph} WHERE id = {self._sql.ph}"
            self._sql.execute_many(self._cursor(), sql, rows)

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
            parameters=tuple(json.loads(json.dumps(s.parameters or []))),
        )

    def _script(self, script_id: int) -> Any:
        script = self._e.Script.get(id=script_id)
        if script is None:
            raise NotFound("script", script_id)
        return script

    @db_session
    def create_script(
        self,
        name: str,
        description: str,
        content: str,
        parameters: Sequence[dict[str, Any]] = (),
        *,
        audit: AuditNote | None = None,
    ) -> ScriptRecord:
        """Raises ValidationError if a script with this name exists."""
        if self._e.Script.get(name=name) is not None:
            raise duplicate("script", name)
        now = utcnow()
        script = self._e.Script(
            name=name,
            description=description,
            content=content,
            created_at=now,
            updated_at=now,
            parameters=list(parameters),
        )
        orm.flush()
        self._audit(audit, script.id)
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
        self,
        script_id: int,
        name: str,
        description: str,
        content: str,
        parameters: Sequence[dict[str, Any]] = (),
        *,
        audit: AuditNote | None = None,
    ) -> ScriptRecord:
        script = self._script(script_id)
        if name != script.name and self._e.Script.get(name=name) is not None:
            raise duplicate("script", name)
        script.set(
            name=name,
            description=description,
            content=content,
            updated_at=utcnow(),
            parameters=list(parameters),
        )
        self._audit(audit)
        return self._script_record(script)

    @db_session
    def delete_script(self, script_id: int, *, audit: AuditNote | None = None) -> None:
        self._script(script_id).delete()
        self._audit(audit)
