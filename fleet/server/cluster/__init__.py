"""Several servers on one PostgreSQL database: one cluster (``--cluster``).

PostgreSQL is the only coordination engine: rows (nodes and their leases, agent presence, a
dispatch outbox between nodes, feed events, output chunks), row locks (adoption takes a dead
node's row ``FOR UPDATE SKIP LOCKED``) and ``LISTEN/NOTIFY`` carrying ids only. ``sql`` holds
the rows, ``bus`` the thread that talks to PostgreSQL, ``routing`` the seams (registry, feed,
reports), ``node`` the trio side (presence, lease, adoption).
"""

from __future__ import annotations

from .node import ClusterError, ClusterHooks, ClusterNode
from .routing import ClusterFeed, ClusterRegistry

__all__ = ["ClusterError", "ClusterFeed", "ClusterHooks", "ClusterNode", "ClusterRegistry"]
