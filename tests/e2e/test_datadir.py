"""One server per data directory, private files, and a data directory that cannot be opened,
with real ``fleet-server`` processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .conftest import ServerProcess, start_agent, stop
from .test_processes import _wait_final, _wait_online


def _server(data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "fleet.server", "--data-dir", str(data_dir),
         "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False, env=environ,
    )  # fmt: skip


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("fleet-server: ")
    return done.stderr


async def test_a_second_server_on_the_same_data_dir_exits_2_naming_the_first(
    fleet_server: ServerProcess,
) -> None:
    done = await trio.to_thread.run_sync(_server, fleet_server.data_dir)
    line = _one_line(done)
    assert f"another fleet-server (pid {fleet_server.process.pid}, " in line
    assert f"http {fleet_server.url}, grpc {fleet_server.grpc})" in line
    assert str(fleet_server.data_dir) in line
    with trio.fail_after(20):
        async with fleet_server.client() as client:  # the first one is untouched
            assert (await client.get("/api/vps")).status_code == 200
        assert await stop(fleet_server.process) == 0
    # Its lock went with it: the directory can be used again (and says nobody holds it).
    assert (fleet_server.data_dir / "server.lock").read_text() == ""


def test_a_data_dir_with_a_missing_parent_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_server(tmp_path / "no" / "such" / "data"))
    assert f"its parent {tmp_path / 'no' / 'such'} does not exist" in line


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    assert "not a directory" in _one_line(_server(tmp_path / "data"))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write in: a read-only tmpfs as root, else a 0500 directory."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        os.chmod(where, 0o500)
        yield where
        os.chmod(where, 0o700)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs as root here: {mount.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_a_read_only_data_dir_is_one_line(read_only_dir: Path) -> None:
    line = _one_line(_server(read_only_dir / "data"))  # cannot even be created
    assert "cannot open the data directory" in line
    line = _one_line(_server(read_only_dir))  # exists, but nothing can be written in it
    assert "cannot open the data directory" in line


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_everything_in_the_data_dir_is_private(
    fleet_server: ServerProcess, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with fleet_server.client() as client:
            vps = (await client.post("/api/vps", json={"name": "m1"})).json()
            agent = await start_agent(fleet_server, vps, tmp_path)
            await _wait_online(client, vps["id"])
            r = await client.post(
                "/api/batch_commands",
                json={"command_content": "echo out; echo err >&2", "target_vps_ids": [vps["id"]]},
            )
            batch = await _wait_final(client, r.json()["batch_command_id"])
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
            assert await stop(agent) == 0
        data = fleet_server.data_dir
        files = [p for p in data.rglob("*") if p.is_file()]
        directories = [data, *(p for p in data.rglob("*") if p.is_dir())]
        names = {p.name for p in files}
        assert {"fleet.db", "fleet.db-wal", "fleet.db-shm", "admin.token", "server.lock"} <= names
        assert any(p.suffix == ".stdout" for p in files)
        assert any(p.suffix == ".stderr" for p in files)
        assert {str(p.relative_to(data)): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}
        assert {str(p): oct(_mode(p)) for p in directories if _mode(p) != 0o700} == {}
        assert await stop(fleet_server.process) == 0
