"""The cluster's rows and the SQL on them: synchronous functions over a psycopg2 cursor.

Tables (created at start-up, under an advisory lock, next to the store's own):

* ``fleet_node``: one row per live node (``name``, ``incarnation``, ``lease_until``, addresses).
  A node renews its lease every few seconds; a renewal that finds its row gone or taken by
  another incarnation means it was declared dead: it stops (fencing).
* ``fleet_agent_presence``: ``vps_id`` → the node holding that agent's stream, ``since``, and the
  agent's ``open_ids`` (its handshake's open commands). Written by that node only; deleted
  conditionally (``node = me``) so a node that lost an agent never erases where it went.
* ``fleet_dispatch``: the outbox between nodes. ``kind`` is ``agent`` (a message for an agent
  held by ``node``: a command, a terminate, a result ack), ``resync`` (close that agent's
  stream: it reconnects and its handshake lists what it holds), ``report`` (an agent's report
  for the batch owner ``node``) or ``terminate`` (a user's terminate for the owner). Rows are
  read by their node and deleted once handled (reports: once committed), so a node that dies
  between the two leaves them for the node that adopts its batches.
* ``fleet_feed_event``: live feed events of every batch, kept a minute, for nodes whose
  WebSocket subscribers watch a batch another node runs.
* ``fleet_output_chunk``: output bytes by (child, stream, offset): downloads from any node.

Notifications carry ids only: ``fleet_n_<hash of node name>`` (its dispatch rows are waiting),
``fleet_presence`` (VPS ids whose presence changed), ``fleet_feed`` (``first:last`` feed event
ids), ``fleet_adopted`` (a node's batches changed owner: forget cached owners).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ADOPTED_CHANNEL",
    "FEED_CHANNEL",
    "PRESENCE_CHANNEL",
    "Dispatch",
    "Presence",
    "adopt",
    "channel",
    "claim_own",
    "ensure_schema",
    "fetch_dispatch",
    "fetch_feed",
    "fetch_presence",
    "live_presence",
    "output",
    "output_many",
    "owners",
    "push",
    "register",
    "renew",
    "request_terminate",
    "retarget",
    "vps_secrets",
]

PRESENCE_CHANNEL = "fleet_presence"
FEED_CHANNEL = "fleet_feed"
ADOPTED_CHANNEL = "fleet_adopted"
#: Batch statuses that are final (nothing to adopt).
TERMINAL_BATCH = (
    "COMPLETED_SUCCESSFULLY",
    "COMPLETED_WITH_ERRORS",
    "TERMINATED",
    "FAILED_TO_START",
)
#: NOTIFY payloads must stay under 8000 bytes.
_PAYLOAD_MAX = 7000

_DDL = """
CREATE TABLE IF NOT EXISTS fleet_node (
    name TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    http TEXT NOT NULL,
    grpc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_agent_presence (
    vps_id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    since TIMESTAMPTZ NOT NULL,
    open_ids JSONB
);
CREATE INDEX IF NOT EXISTS fleet_agent_presence_node ON fleet_agent_presence (node);
CREATE TABLE IF NOT EXISTS fleet_dispatch (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    vps_id INTEGER NOT NULL,
    batch_id TEXT,
    payload BYTEA NOT NULL,
    origin TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_dispatch_node ON fleet_dispatch (node, id);
CREATE TABLE IF NOT EXISTS fleet_feed_event (
    id BIGSERIAL PRIMARY KEY,
    batch_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    event JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fleet_output_chunk (
    child_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    off BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (child_id, stream, off)
);
"""


def channel(node: str) -> str:
    """A node's notification channel (a hash: any name fits PostgreSQL's 63-byte limit)."""
    return "fleet_n_" + hashlib.sha256(node.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Presence:
    """Where an agent's stream is: ``node`` None when it is connected nowhere."""

    vps_id: int
    node: str | None
    since: Any = None
    open_ids: frozenset[str] | None = None


@dataclass(frozen=True)
class Dispatch:
    """One row of ``fleet_dispatch`` addressed to this node."""

    id: int
    kind: str
    vps_id: int
    batch_id: str | None
    payload: bytes
    origin: str


def _notify_ids(cur: Any, chan: str, ids: Iterable[int]) -> None:
    """NOTIFY ``chan`` with comma-separated ids, several notifications if need be."""
    text = ""
    for ident in ids:
        part = str(ident)
        if len(text) + len(part) + 1 > _PAYLOAD_MAX:
            cur.execute("SELECT pg_notify(%s, %s)", (chan, text))
            text = ""
        text = f"{text},{part}" if text else part
    if text:
        cur.execute("SELECT pg_notify(%s, %s)", (chan, text))


def ensure_schema(cur: Any) -> None:
    """Create the cluster's tables (once, whoever starts first: an advisory lock)."""
    cur.execute("BEGIN")
    cur.execute("SELECT pg_advisory_xact_lock(7263514)")
    cur.execute(_DDL)
    cur.execute("COMMIT")


def register(cur: Any, name: str, incarnation: str, lease_s: float, http: str, grpc: str) -> None:
    """Take the node's row (a restarted node takes over its own name) and forget the agents a
    previous run of it held: they reconnect."""
    cur.execute("BEGIN")
    cur.execute(
        "INSERT INTO fleet_node (name, incarnation, lease_until, started_at, http, grpc)"
        " VALUES (%s, %s, now() + make_interval(secs => %s), now(), %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET incarnation = EXCLUDED.incarnation,"
        " lease_until = EXCLUDED.lease_until, started_at = EXCLUDED.started_at,"
        " http = EXCLUDED.http, grpc = EXCLUDED.grpc",
        (name, incarnation, lease_s, http, grpc),
    )
    cur.execute("DELETE FROM fleet_agent_presence WHERE node = %s RETURNING vps_id", (name,))
    _notify_ids(cur, PRESENCE_CHANNEL, [row[0] for row in cur.fetchall()])
    cur.execute("COMMIT")


def renew(cur: Any, name: str, incarnation: str, lease_s: float) -> bool:
    """Extend the lease; False when this node was declared dead (its row gone or taken)."""
    cur.execute(
        "UPDATE fleet_node SET lease_until = now() + make_interval(secs => %s)"
        " WHERE name = %s AND incarnation = %s",
        (lease_s, name, incarnation),
    )
    return bool(cur.rowcount == 1)


def release(cur: Any, name: str, incarnation: str) -> bool:
    """Give up the node's lease (it stops on purpose): live nodes adopt its batches at their
    next look instead of a lease later. False when the lease was no longer this incarnation's."""
    cur.execute(
        "UPDATE fleet_node SET lease_until = now() - interval '1 second'"
        " WHERE name = %s AND incarnation = %s",
        (name, incarnation),
    )
    return bool(cur.rowcount == 1)


def claim_own(cur: Any, name: str) -> list[str]:
    """At start: this node's unfinished batches, plus any nobody owns (a single server's)."""
    cur.execute(
        "UPDATE batch_command_task SET owner_node = %s"
        " WHERE status <> ALL(%s) AND (owner_node = %s OR owner_node IS NULL)"
        " RETURNING id, created_at",
        (name, list(TERMINAL_BATCH), name),
    )
    return [row[0] for row in sorted(cur.fetchall(), key=lambda r: r[1])]


def adopt(cur: Any, name: str) -> tuple[list[str], list[str]]:
    """Take over the batches of every node whose lease lapsed; return (dead nodes, batches).

    One transaction: the dead nodes' rows are locked (``FOR UPDATE SKIP LOCKED``: two live
    nodes never adopt the same one), their unfinished batches change owner, their agents'
    presence is deleted (the owners of batches on those agents learn they are lost), their
    rows go, and their waiting reports and terminates are re-addressed to the new owners.
    """
    cur.execute("BEGIN")
    cur.execute(
        "SELECT name FROM fleet_node WHERE lease_until < now() AND name <> %s"
        " FOR UPDATE SKIP LOCKED",
        (name,),
    )
    dead = [row[0] for row in cur.fetchall()]
    if not dead:
        cur.execute("COMMIT")
        return [], []
    cur.execute(
        "UPDATE batch_command_task SET owner_node = %s"
        " WHERE owner_node = ANY(%s) AND status <> ALL(%s) RETURNING id, created_at",
        (name, dead, list(TERMINAL_BATCH)),
    )
    batches = [row[0] for row in sorted(cur.fetchall(), key=lambda r: r[1])]
    cur.execute("DELETE FROM fleet_agent_presence WHERE node = ANY(%s) RETURNING vps_id", (dead,))
    _notify_ids(cur, PRESENCE_CHANNEL, [row[0] for row in cur.fetchall()])
    cur.execute("DELETE FROM fleet_node WHERE name = ANY(%s)", (dead,))
    cur.execute("SELECT pg_notify(%s, %s)", (ADOPTED_CHANNEL, name))
    cur.execute("COMMIT")
    return dead, batches


def retarget(cur: Any) -> None:
    """Re-address rows waiting for nodes that no longer exist: reports and terminates to their
    batch's owner now; messages for agents that node held are dropped (the agents reconnect
    elsewhere and the owner reconciles with them)."""
    cur.execute("BEGIN")
    cur.execute(
        "UPDATE fleet_dispatch d SET node = b.owner_node FROM batch_command_task b"
        " WHERE d.batch_id = b.id AND d.kind IN ('report', 'terminate')"
        " AND b.owner_node IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM fleet_node n WHERE n.name = d.node)"
        " RETURNING d.node"
    )
    for node in {row[0] for row in cur.fetchall()}:
        cur.execute("SELECT pg_notify(%s, '')", (channel(node),))
    cur.execute(
        "DELETE FROM fleet_dispatch d"
        " WHERE NOT EXISTS (SELECT 1 FROM fleet_node n WHERE n.name = d.node)"
    )
    cur.execute("DELETE FROM fleet_feed_event WHERE created_at < now() - interval '60 seconds'")
    cur.execute("COMMIT")


def live_presence(cur: Any) -> list[Presence]:
    """Every agent connected to a live node."""
    cur.execute(
        "SELECT p.vps_id, p.node, p.since, p.open_ids FROM fleet_agent_presence p"
        " JOIN fleet_node n ON n.name = p.node"
    )
    return [_presence(row) for row in cur.fetchall()]


def fetch_presence(cur: Any, vps_ids: Sequence[int]) -> list[Presence]:
    """The presence of each VPS (``node`` None: connected nowhere)."""
    cur.execute(
        "SELECT vps_id, node, since, open_ids FROM fleet_agent_presence WHERE vps_id = ANY(%s)",
        (list(vps_ids),),
    )
    found = {row[0]: _presence(row) for row in cur.fetchall()}
    return [found.get(v, Presence(v, None)) for v in vps_ids]


def _presence(row: Sequence[Any]) -> Presence:
    ids = row[3]
    if isinstance(ids, str):
        ids = json.loads(ids)
    return Presence(row[0], row[1], row[2], None if ids is None else frozenset(ids))


def fetch_dispatch(cur: Any, name: str, handed: Sequence[int]) -> list[Dispatch]:
    """Rows addressed to this node, but those already ``handed`` over (not yet deleted).

    (Not "ids above the last one": ids are taken before commit, so a smaller one may commit
    after a larger one.)"""
    cur.execute(
        "SELECT id, kind, vps_id, batch_id, payload, origin FROM fleet_dispatch"
        " WHERE node = %s AND id <> ALL(%s) ORDER BY id",
        (name, list(handed)),
    )
    return [Dispatch(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in cur.fetchall()]


def fetch_feed(cur: Any, name: str, first: int, last: int) -> list[tuple[str, dict[str, Any]]]:
    """Feed events another node published with ids in ``first..last``."""
    cur.execute(
        "SELECT batch_id, event FROM fleet_feed_event"
        " WHERE id BETWEEN %s AND %s AND origin <> %s ORDER BY id",
        (first, last, name),
    )
    return [(r[0], r[1] if isinstance(r[1], dict) else json.loads(r[1])) for r in cur.fetchall()]


def request_terminate(cur: Any, name: str, batch_id: str, child_id: str | None) -> bool:
    """Ask the batch's owner to terminate it (or one child); False if it has no owner."""
    payload = json.dumps({"batch_id": batch_id, "child_id": child_id}).encode()
    cur.execute("BEGIN")
    cur.execute(
        "INSERT INTO fleet_dispatch (node, kind, vps_id, batch_id, payload, origin)"
        " SELECT owner_node, 'terminate', 0, id, %s, %s FROM batch_command_task"
        " WHERE id = %s AND owner_node IS NOT NULL RETURNING node",
        (payload, name, batch_id),
    )
    rows = cur.fetchall()
    for (node,) in rows:
        cur.execute("SELECT pg_notify(%s, '')", (channel(node),))
    cur.execute("COMMIT")
    return bool(rows)


def push(
    cur: Any,
    name: str,
    *,
    presence: Sequence[tuple[int, frozenset[str] | None, bool]],
    messages: Sequence[tuple[str, str, int, str | None, bytes]],
    feed: Sequence[tuple[str, str]],
    chunks: Sequence[tuple[str, str, int, bytes]],
    handled: Sequence[int],
) -> None:
    """Write what this node queued, in one transaction, and notify.

    Args:
        presence: ``(vps_id, open_ids, connected)``: connected here, or gone from here.
        messages: ``(node, kind, vps_id, batch_id, payload)`` dispatch rows.
        feed: ``(batch_id, event JSON)``.
        chunks: ``(child_id, stream, offset, data)`` output.
        handled: dispatch rows this node is done with.
    """
    from psycopg2.extras import execute_values  # type: ignore[import-untyped,unused-ignore]

    cur.execute("BEGIN")
    if presence:
        changed = []
        for vps_id, open_ids, connected in presence:
            if connected:
                ids = None if open_ids is None else json.dumps(sorted(open_ids))
                cur.execute(
                    "INSERT INTO fleet_agent_presence (vps_id, node, since, open_ids)"
                    " VALUES (%s, %s, clock_timestamp(), %s) ON CONFLICT (vps_id) DO UPDATE"
                    " SET node = EXCLUDED.node, since = EXCLUDED.since,"
                    " open_ids = EXCLUDED.open_ids",
                    (vps_id, name, ids),
                )
                changed.append(vps_id)
            else:
                cur.execute(
                    "DELETE FROM fleet_agent_presence WHERE vps_id = %s AND node = %s",
                    (vps_id, name),
                )
                if cur.rowcount:
                    changed.append(vps_id)
        _notify_ids(cur, PRESENCE_CHANNEL, changed)
    if messages:
        rows = [(n, k, v, b, payload, name) for n, k, v, b, payload in messages]
        execute_values(
            cur,
            "INSERT INTO fleet_dispatch (node, kind, vps_id, batch_id, payload, origin) VALUES %s",
            rows,
            page_size=1000,
        )
        for node in {row[0] for row in rows}:
            cur.execute("SELECT pg_notify(%s, '')", (channel(node),))
    if feed:
        ids = execute_values(
            cur,
            "INSERT INTO fleet_feed_event (batch_id, origin, event) VALUES %s RETURNING id",
            [(batch_id, name, event) for batch_id, event in feed],
            page_size=1000,
            fetch=True,
        )
        numbers = [row[0] for row in ids]
        cur.execute("SELECT pg_notify(%s, %s)", (FEED_CHANNEL, f"{min(numbers)}:{max(numbers)}"))
    if chunks:
        execute_values(
            cur,
            "INSERT INTO fleet_output_chunk (child_id, stream, off, data) VALUES %s"
            " ON CONFLICT DO NOTHING",
            chunks,
            page_size=500,
        )
    if handled:
        cur.execute("DELETE FROM fleet_dispatch WHERE id = ANY(%s)", (list(handled),))
    cur.execute("COMMIT")


def owners(cur: Any, command_ids: Sequence[str]) -> dict[str, tuple[int, str, str | None]]:
    """command id → (its VPS, its batch, the batch's owner node)."""
    cur.execute(
        "SELECT c.id, c.vps_id, b.id, b.owner_node FROM child_command_task c"
        " JOIN batch_command_task b ON b.id = c.batch_id WHERE c.id = ANY(%s)",
        (list(command_ids),),
    )
    return {row[0]: (row[1], row[2], row[3]) for row in cur.fetchall()}


def vps_secrets(cur: Any) -> list[tuple[int, str]]:
    """Every VPS's agent secret digest (read often: plain SQL on the bus's connection)."""
    cur.execute("SELECT id, secret_hash FROM vps")
    return [(int(row[0]), str(row[1])) for row in cur.fetchall()]


def output(cur: Any, child_id: str, stream: str) -> bytes:
    """A child's stream as stored (its chunks in order)."""
    cur.execute(
        "SELECT data FROM fleet_output_chunk WHERE child_id = %s AND stream = %s ORDER BY off",
        (child_id, stream),
    )
    return b"".join(bytes(row[0]) for row in cur.fetchall())


def output_many(cur: Any, child_ids: Sequence[str]) -> dict[tuple[str, str], bytes]:
    """The stored streams of many children: (child, stream) → bytes."""
    cur.execute(
        "SELECT child_id, stream, data FROM fleet_output_chunk WHERE child_id = ANY(%s)"
        " ORDER BY child_id, stream, off",
        (list(child_ids),),
    )
    out: dict[tuple[str, str], bytearray] = {}
    for child_id, stream, data in cur.fetchall():
        out.setdefault((child_id, stream), bytearray()).extend(bytes(data))
    return {key: bytes(value) for key, value in out.items()}
