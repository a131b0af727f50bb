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
* Child tasks are written and read in bulk with SQL (``batches``); entities define the schema
  (``schema``) and serve the small tables (``inventory``).

Layout: ``schema`` (entities, binding, SQL dialect) < ``base`` (handles, ``db_session``) <
``inventory``, ``batches`` and ``accounts`` (users, sessions, tokens, audit log; one part of
``Store`` each) < this module (``Store`` = both parts,
opened on one database). Records and updates are plain dataclasses of ``fleet.server.records``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pony import orm

from fleet.server.records import (
    UNSET,
    AuditNote,
    AuditRecord,
    BatchRecord,
    BatchUpdate,
    ChildRecord,
    ChildUpdate,
    ScriptRecord,
    TokenRecord,
    UserRecord,
    VpsRecord,
)

from .accounts import AccountStore
from .batches import BatchOptions, BatchStore
from .inventory import AGENT_FACTS, InventoryStore
from .schema import add_missing_columns, bind_args, define_entities, protect_audit_log

__all__ = [
    "AGENT_FACTS",
    "UNSET",
    "AuditNote",
    "AuditRecord",
    "BatchOptions",
    "BatchRecord",
    "BatchUpdate",
    "ChildRecord",
    "ChildUpdate",
    "ScriptRecord",
    "Store",
    "TokenRecord",
    "UserRecord",
    "VpsRecord",
]


class Store(InventoryStore, BatchStore, AccountStore):
    """Fleet's database. Open it with ``Store.open``; call it from one thread at a time."""

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
        add_missing_columns(db)
        db.generate_mapping(create_tables=True)
        protect_audit_log(db)
        return cls(db, entities)

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.disconnect()
