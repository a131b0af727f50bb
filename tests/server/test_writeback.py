"""WriteBack: changes merge per row, commit in one call, and survive a failed write."""

from __future__ import annotations

from typing import Any

import trio

from fleet.core import ChildStatus
from fleet.server.store import BatchUpdate, ChildUpdate, Store
from fleet.server.writeback import WriteBack


class FakeDb:
    """Stands in for the DB thread: records each store call, fails when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []
        self.fail = 0

    async def run(self, fn: Any, *args: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("database is locked")
        self.calls.append((fn, args))


async def test_changes_to_one_row_merge_field_by_field() -> None:
    db = FakeDb()
    wb = WriteBack(db, interval_s=0)  # type: ignore[arg-type]
    wb.child(ChildUpdate("c1", status=ChildStatus.EXECUTING, stdout_bytes=10))
    wb.child(ChildUpdate("c1", stdout_bytes=20))
    wb.child(ChildUpdate("c1", status=ChildStatus.SUCCESS, exit_code=0))
    wb.batch(BatchUpdate("b1"))
    acked = []
    wb.after_flush(lambda: acked.append("c1"))
    await wb.flush()
    [(fn, (batches, children))] = db.calls
    assert fn is Store.apply_updates
    assert batches == [BatchUpdate("b1")]
    assert children == [ChildUpdate("c1", status=ChildStatus.SUCCESS, exit_code=0, stdout_bytes=20)]
    assert acked == ["c1"]
    assert not wb.pending


async def test_a_failed_write_is_retried_without_losing_newer_changes() -> None:
    db = FakeDb()
    db.fail = 1
    wb = WriteBack(db, interval_s=0)  # type: ignore[arg-type]
    acked: list[str] = []
    wb.child(ChildUpdate("c1", status=ChildStatus.EXECUTING, stdout_bytes=5))
    wb.after_flush(lambda: acked.append("first"))
    await wb.flush()  # fails: logged, everything stays queued
    assert acked == []
    assert wb.pending
    wb.child(ChildUpdate("c1", status=ChildStatus.SUCCESS))  # recorded after the failure
    await wb.flush()
    [(_, (_, children))] = db.calls
    assert children == [ChildUpdate("c1", status=ChildStatus.SUCCESS, stdout_bytes=5)]
    assert acked == ["first"]
