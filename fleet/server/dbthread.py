"""The DB thread: one OS thread owns the ``Store`` and runs every store call, in order.

Pony sessions are bound to their thread and block, so the trio thread never opens one: it queues
a job and sleeps until the DB thread hands the outcome back through the caller's trio token. One
thread means one SQLite connection (no writer contention) and calls applied in submission order.

Usage::

    async with open_db_thread(config.db_url, config.data_dir) as db:
        batch = await db.run(Store.get_batch, batch_id)
        await db.run(lambda store: store.apply_updates(batches, children))
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Concatenate, Final, ParamSpec, TypeVar, cast

import outcome
import trio

from fleet.server.datadir import private_file
from fleet.server.store import Store

__all__ = ["DbThread", "DbThreadStatistics", "open_db_thread"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CLOSE_TIMEOUT_S: Final = 30.0
"""How long closing waits for queued jobs and ``Store.close``; the thread is a daemon after that."""


@dataclasses.dataclass(frozen=True, slots=True)
class DbThreadStatistics:
    queued: int
    """Jobs waiting for the DB thread (not counting the one it is running)."""
    completed: int
    """Jobs run since the thread started."""


class _Job:
    """One call for the DB thread; ``deliver`` runs on the trio thread with its outcome."""

    __slots__ = ("call", "deliver", "token")

    def __init__(
        self,
        call: Callable[[Store], object],
        token: trio.lowlevel.TrioToken,
        deliver: Callable[[outcome.Outcome[object]], None],
    ) -> None:
        self.call = call
        self.token = token
        self.deliver = deliver


class DbThread:
    """Runs store calls on a dedicated thread; build it with ``open_db_thread``.

    ``run`` may be called from any number of trio tasks at once;
    jobs run one at a time, in the order they were submitted.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._completed = 0

    async def run(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``fn(store, *args, **kwargs)`` in the DB thread and return its result.

        Exceptions raised by ``fn`` are re-raised here. Cancellation: the caller stops waiting
        at once, but a job already queued still runs to completion (its transaction commits or
        rolls back as a whole) and its result is discarded.

        Raises:
            trio.ClosedResourceError: The DB thread is closed or closing.
        """
        if self._closed:
            raise trio.ClosedResourceError("the DB thread is closed")
        done = trio.Event()
        result: list[outcome.Outcome[T]] = []

        def deliver(value: outcome.Outcome[object]) -> None:
            result.append(cast("outcome.Outcome[T]", value))  # it is fn's outcome
            done.set()

        self._queue.put(
            _Job(
                lambda store: fn(store, *args, **kwargs),
                trio.lowlevel.current_trio_token(),
                deliver,
            )
        )
        await done.wait()
        return result[0].unwrap()

    def statistics(self) -> DbThreadStatistics:
        return DbThreadStatistics(queued=self._queue.qsize(), completed=self._completed)

    def _main(
        self,
        url: str | None,
        data_dir: Path,
        token: trio.lowlevel.TrioToken,
        on_open: Callable[[outcome.Outcome[None]], None],
        on_exit: Callable[[], None],
    ) -> None:
        """The DB thread: open the store, run jobs until the ``None`` sentinel, close it."""
        try:
            try:
                if url is None and data_dir.is_dir():  # SQLite gives -wal/-shm its mode
                    private_file(data_dir / "fleet.db")
                store = Store.open(url, data_dir)
            except BaseException as exc:
                token.run_sync_soon(on_open, outcome.Error(exc))
                return
            token.run_sync_soon(on_open, outcome.Value(None))
            try:
                while (job := self._queue.get()) is not None:
                    result = outcome.capture(job.call, store)
                    self._completed += 1
                    try:
                        job.token.run_sync_soon(job.deliver, result)
                    except trio.RunFinishedError:
                        logger.warning("db-thread result dropped: its trio run has finished")
            finally:
                store.close()
        finally:
            try:
                token.run_sync_soon(on_exit)
            except trio.RunFinishedError:  # pragma: no cover - the opener gave up waiting
                pass


@asynccontextmanager
async def open_db_thread(url: str | None, data_dir: Path) -> AsyncIterator[DbThread]:
    """Start the DB thread, open the store in it, and yield the ``DbThread``.

    Args:
        url: Passed to ``Store.open`` (``None``: SQLite in ``data_dir``).
        data_dir: The server's data directory.

    On exit, new calls are refused, jobs already queued still run, then the store is closed and
    the thread ends. Exit waits for that (shielded from cancellation) for at most
    ``CLOSE_TIMEOUT_S``. An error opening the store is raised from entering.
    """
    db = DbThread()
    token = trio.lowlevel.current_trio_token()
    opened, exited = trio.Event(), trio.Event()
    open_result: list[outcome.Outcome[None]] = []

    def on_open(result: outcome.Outcome[None]) -> None:
        open_result.append(result)
        opened.set()

    thread = threading.Thread(
        target=db._main,
        args=(url, data_dir, token, on_open, exited.set),
        name="fleet-db",
        daemon=True,
    )
    thread.start()
    try:
        with trio.CancelScope(shield=True):
            # Opening must finish before we can tell the thread to stop.
            await opened.wait()
        open_result[0].unwrap()
        yield db
    finally:
        db._closed = True
        db._queue.put(None)
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as scope:
            await exited.wait()
        if scope.cancelled_caught:
            logger.warning("db-thread did not stop within %s s; leaving it behind", CLOSE_TIMEOUT_S)
        else:
            thread.join()
