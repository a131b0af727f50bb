"""What every part of the store shares: its handles, one transaction per call, small helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from pony import orm

from fleet.core import Conflict, ValidationError
from fleet.server.records import AuditNote

from .schema import Dialect, utcnow

__all__ = ["StoreBase", "chunks", "db_session", "duplicate"]

_F = TypeVar("_F", bound=Callable[..., Any])

CHUNK = 500
"""Ids per ``IN (...)`` list, well below SQLite's bound-parameter limit."""


def db_session(fn: _F) -> _F:
    """``pony.orm.db_session`` with its type kept: one transaction per call."""
    return cast(_F, orm.db_session(fn))


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def duplicate(kind: str, name: str) -> ValidationError:
    return Conflict([{"field": "name", "reason": f"a {kind} named {name} already exists"}])


class StoreBase:
    """The Pony database, its entities and its SQL dialect; the parts of ``Store`` extend it."""

    def __init__(self, db: Any, entities: SimpleNamespace) -> None:
        self._db = db
        self._e = entities
        self._sql = Dialect(db.provider_name)

    def _cursor(self) -> Any:
        """A cursor on the session's own connection (bulk SQL inside the same transaction)."""
        return self._db.get_connection().cursor()

    def _audit(self, note: AuditNote | None, target_id: object = None) -> None:
        """Append ``note`` to the audit log in the caller's transaction (``None``: nothing).

        ``target_id`` fills in a creation's new id when the note has none.
        """
        if note is None:
            return
        ident = note.target_id if note.target_id is not None else target_id
        self._e.AuditEntry(
            at=utcnow(),
            actor=note.actor[:200],
            action=note.action,
            target_type=note.target_type,
            target_id=None if ident is None else str(ident)[:200],
            details=note.details,
            source_ip=note.source_ip,
            outcome=note.outcome,
        )
