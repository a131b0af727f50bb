"""Storage faults: classified, retried with a back-off, reported once, recovered from, and a
store file deleted under the server noticed."""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from fleet.core import ChildStatus
from fleet.server.health import StorageUnavailable, StoreHealth, storage_fault, watch_store_file
from fleet.server.logs import LogSink
from fleet.server.store import ChildUpdate
from fleet.server.writeback import MAX_RETRY_S, WriteBack


class _Wrapped(Exception):
    def __init__(self, original: BaseException) -> None:
        super().__init__("wrapped")
        self.original_exc = original


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("attempt to write a readonly database"), True),
        (_Wrapped(sqlite3.OperationalError("disk I/O error")), True),  # as Pony wraps it
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (StorageUnavailable("gone"), True),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (ValueError("bad id"), False),
        (OSError(errno.ENOENT, "no such file"), False),
    ],
)
def test_storage_faults_are_told_from_bad_requests(exc: BaseException, fault: bool) -> None:
    assert (storage_fault(exc) is not None) is fault


def _failed_commit(driver_error: Exception) -> BaseException:
    """The exception Pony raises when a commit fails, built by Pony itself."""
    from pony.orm.core import CommitException, transact_reraise
    from pony.orm.dbapiprovider import OperationalError

    try:
        raise OperationalError(driver_error)
    except OperationalError as wrapped:
        try:
            transact_reraise(CommitException, [(OperationalError, wrapped, None)])
        except CommitException as exc:
            return exc
    raise AssertionError("transact_reraise did not raise")


def test_a_commit_failing_on_a_full_disk_is_a_storage_fault() -> None:
    """What a POST met while the disk was full (the fault suite): it answered 500."""
    exc = _failed_commit(sqlite3.OperationalError("database or disk is full"))
    assert exc.__cause__ is None
    assert not hasattr(exc, "original_exc")
    assert storage_fault(exc) == "database or disk is full"
    assert storage_fault(_failed_commit(sqlite3.IntegrityError("UNIQUE constraint"))) is None


def test_a_lost_store_stays_lost() -> None:
    health = StoreHealth()
    health.failed("disk full")
    health.recovered()
    assert health.ok
    health.store_lost("deleted")
    health.recovered()
    health.failed("disk full")
    assert not health.ok
    assert health.reason == "deleted"
    with pytest.raises(StorageUnavailable):
        health.check_writable()


class FullDisk:
    """A DB thread whose store fails with a full disk until ``full`` is cleared."""

    def __init__(self) -> None:
        self.full = True
        self.attempts: list[float] = []
        self.committed: list[Any] = []

    async def run(self, fn: Any, *args: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if self.full:
            raise _Wrapped(sqlite3.OperationalError("database or disk is full"))
        self.committed.append(args)


async def test_writes_back_off_keep_the_results_unacked_and_recover(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    db = FullDisk()
    health = StoreHealth()
    writeback = WriteBack(db, interval_s=0.1, health=health)  # type: ignore[arg-type]
    acked: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(writeback.run)
            writeback.child(ChildUpdate("c1", status=ChildStatus.SUCCESS, exit_code=0))
            writeback.after_flush(lambda: acked.append("c1"))
            await trio.sleep(60)
            assert not health.ok
            assert acked == []  # the agent keeps its result until it is stored
            gaps = [b - a for a, b in zip(db.attempts, db.attempts[1:], strict=False)]
            assert max(gaps) <= MAX_RETRY_S + 0.2
            assert len(db.attempts) < 30  # backed off, not retried every 0.1 s
            db.full = False
            await trio.sleep(MAX_RETRY_S + 1)
            assert health.ok
            assert acked == ["c1"]
            nursery.cancel_scope.cancel(reason="test over")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # said once, not once per retry
    assert "database or disk is full" in errors[0].getMessage()


def test_a_log_that_cannot_be_written_says_from_which_byte() -> None:
    sink = LogSink(Path("/dev/full"), cap=1 << 20, summary_lines=5)
    written = sink.write(b"hello\n", 0)
    assert written is not None
    assert sink.stored == 0
    assert sink.error is not None
    assert sink.error.startswith("output from byte 0 on was lost")
    assert "No space left on device" in sink.error


def _delete(store: Path) -> None:
    store.unlink()


def _replace(store: Path) -> None:
    replacement = store.with_name("new.db")
    replacement.write_bytes(b"y")
    replacement.replace(store)


@pytest.mark.parametrize(("change", "said"), [(_delete, "was deleted"), (_replace, "was replaced")])
async def test_a_store_file_deleted_or_replaced_is_noticed(
    tmp_path: Path, autojump_clock: trio.abc.Clock, change: Any, said: str
) -> None:
    store = tmp_path / "fleet.db"
    store.write_bytes(b"x")
    health = StoreHealth()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_store_file, store, health)
            await trio.sleep(5)
            assert health.ok
            change(store)  # the watcher returns once it noticed
    assert health.lost
    assert said in (health.reason or "")
