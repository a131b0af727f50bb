"""The data directory: its lock, and files private from creation whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fleet.server.datadir import DataDirError, lock_data_dir, private_file
from fleet.server.dbthread import open_db_thread
from fleet.server.logs import LogSink
from fleet.server.store import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Modes must come from creation itself, not from fleet-server's umask."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_the_lock_is_exclusive_names_its_holder_and_is_released(
    tmp_path: Path, permissive_umask: None
) -> None:
    data = tmp_path / "data"
    lock = lock_data_dir(data)
    assert _mode(data) == 0o700
    assert _mode(data / "server.lock") == 0o600
    lock.describe(f"pid {os.getpid()}, http http://127.0.0.1:1, grpc 127.0.0.1:2")
    with pytest.raises(DataDirError) as refused:
        lock_data_dir(data)  # flock is per open file: the same process is refused too
    assert str(refused.value) == (
        f"another fleet-server (pid {os.getpid()}, http http://127.0.0.1:1, grpc 127.0.0.1:2) "
        f"is using the data directory {data}"
    )
    lock.release()
    lock.release()  # idempotent
    lock_data_dir(data).release()


def test_a_data_dir_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match=r"its parent .* does not exist"):
        lock_data_dir(tmp_path / "missing" / "data")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataDirError, match="not a directory"):
        lock_data_dir(tmp_path / "file")


def test_an_existing_data_dir_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    os.chmod(tmp_path / "data", 0o755)
    lock_data_dir(tmp_path / "data").release()
    assert "chmod 700" in caplog.text


def test_private_file_creates_0600_and_leaves_an_existing_file_alone(
    tmp_path: Path, permissive_umask: None
) -> None:
    private_file(tmp_path / "new")
    assert _mode(tmp_path / "new") == 0o600
    (tmp_path / "old").write_text("kept")
    private_file(tmp_path / "old")
    assert (tmp_path / "old").read_text() == "kept"


def test_logs_and_their_directories_are_private(tmp_path: Path, permissive_umask: None) -> None:
    (tmp_path / "logs").mkdir(mode=0o700)
    sink = LogSink(tmp_path / "logs" / "batch" / "child.stdout", cap=1 << 20, summary_lines=5)
    sink.write(b"secret output\n", 0)
    sink.close()
    assert _mode(tmp_path / "logs" / "batch") == 0o700
    assert _mode(tmp_path / "logs" / "batch" / "child.stdout") == 0o600


async def test_the_sqlite_store_and_its_wal_are_private(
    tmp_path: Path, permissive_umask: None
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with trio.fail_after(30):
        async with open_db_thread(None, data) as db:
            await db.run(Store.create_vps, "m1", [], "digest")
            names = {p.name: _mode(p) for p in data.iterdir()}
            assert {"fleet.db-wal", "fleet.db-shm"} <= set(names)
    assert names.get("fleet.db") == 0o600
    assert {name: oct(mode) for name, mode in names.items() if mode != 0o600} == {}
