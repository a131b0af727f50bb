"""Write-behind persistence: many small changes become one transaction every few milliseconds.

The supervisor records changes synchronously (``child``, ``batch``, ``vps_seen``); the
``run`` task merges them per row and hands them to the DB thread as one ``apply_updates`` call
per interval. Callbacks registered with ``after_flush`` run once the changes recorded before
them are committed: that is when the server acknowledges an agent's result.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import trio

from .agents import AgentInfo
from .dbthread import DbThread
from .health import StoreHealth, storage_fault
from .metrics import ServerMetrics
from .store import AGENT_FACTS, UNSET, BatchUpdate, ChildUpdate, Store

__all__ = ["MAX_RETRY_S", "WriteBack"]

logger = logging.getLogger(__name__)

#: The longest wait between two attempts while the store refuses writes.
MAX_RETRY_S = 5.0


_U = TypeVar("_U", ChildUpdate, BatchUpdate)


def _merge(old: _U, new: _U) -> _U:
    """``old`` with every field that ``new`` sets (later changes win, field by field)."""
    changes = {
        f.name: value
        for f in dataclasses.fields(new)
        if (value := getattr(new, f.name)) is not None and value is not UNSET
    }
    return dataclasses.replace(old, **changes)


def _queue(pending: dict[str, _U], key: str, update: _U, *, older: bool = False) -> None:
    current = pending.get(key)
    if current is None:
        pending[key] = update
    else:
        pending[key] = _merge(update, current) if older else _merge(current, update)


class WriteBack:
    """Batches store writes. Start ``run`` in a nursery; ``flush`` to force one now."""

    def __init__(
        self,
        db: DbThread,
        *,
        interval_s: float,
        health: StoreHealth | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._db = db
        self._health = health or StoreHealth()
        self._metrics = metrics or ServerMetrics()
        self._interval = interval_s
        self._children: dict[str, ChildUpdate] = {}
        self._batches: dict[str, BatchUpdate] = {}
        self._seen: dict[int, datetime] = {}
        self._infos: dict[int, tuple[AgentInfo, datetime]] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._wake = trio.Event()

    def child(self, update: ChildUpdate) -> None:
        _queue(self._children, update.child_id, update)
        self._wake.set()

    def batch(self, update: BatchUpdate) -> None:
        _queue(self._batches, update.batch_id, update)
        self._wake.set()

    def vps_seen(self, vps_id: int, at: datetime) -> None:
        self._seen[vps_id] = at
        self._wake.set()

    def agent_info(self, vps_id: int, info: AgentInfo, at: datetime) -> None:
        self._infos[vps_id] = (info, at)
        self._wake.set()

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once everything recorded so far is committed."""
        self._callbacks.append(callback)
        self._wake.set()

    @property
    def pending(self) -> bool:
        return bool(self._children or self._batches or self._seen or self._infos or self._callbacks)

    async def flush(self) -> bool:
        """Commit everything recorded so far, now; ``False`` when the store refused it (the
        changes stay queued, under anything recorded since, for the next attempt)."""
        children, batches, seen, callbacks = self._take()
        infos, self._infos = self._infos, {}
        try:
            self._health.check_writable()
            with self._metrics.store_write():
                await self._commit(children, batches, seen, callbacks)
                if infos:
                    await self._db.run(_record_infos, infos)
        except Exception as exc:
            reason = storage_fault(exc)
            if reason is None:
                if self._health.ok:  # an unexpected error: its traceback once, not per retry
                    logger.exception("store write failed; retrying")
                reason = f"store write failed ({type(exc).__name__})"
            self._health.failed(reason)
            for update in children:
                _queue(self._children, update.child_id, update, older=True)
            for b in batches:
                _queue(self._batches, b.batch_id, b, older=True)
            self._seen = seen | self._seen
            self._infos = infos | self._infos
            self._callbacks = callbacks + self._callbacks
            return False
        if children or batches or seen or infos:
            self._health.recovered()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``interval_s`` while there are changes; after a failure, back off
        (doubling up to ``MAX_RETRY_S``) and try again; on cancel, a last bounded flush."""
        task_status.started()
        delay = self._interval
        try:
            while True:
                if not self.pending:
                    await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(delay)
                delay = self._interval if await self.flush() else min(delay * 2, MAX_RETRY_S)
        finally:
            with trio.move_on_after(10, shield=True):
                if self.pending:
                    await self.flush()

    def _take(
        self,
    ) -> tuple[list[ChildUpdate], list[BatchUpdate], dict[int, datetime], list[Callable[[], None]]]:
        taken = (
            list(self._children.values()),
            list(self._batches.values()),
            self._seen,
            self._callbacks,
        )
        self._children, self._batches, self._seen, self._callbacks = {}, {}, {}, []
        return taken

    async def _commit(
        self,
        children: list[ChildUpdate],
        batches: list[BatchUpdate],
        seen: dict[int, datetime],
        callbacks: list[Callable[[], None]],
    ) -> None:
        if children or batches:
            await self._db.run(Store.apply_updates, batches, children)
        if seen:
            await self._db.run(Store.touch_vps_seen, seen)
        for callback in callbacks:
            callback()


def _record_infos(store: Store, infos: dict[int, tuple[AgentInfo, datetime]]) -> None:
    store.record_agents_seen(
        [
            (vps_id, [getattr(info, name) for name in AGENT_FACTS], at)
            for vps_id, (info, at) in infos.items()
        ]
    )
