"""An agent restarted on its state directory tells the truth, with real processes: what it left
running is stopped and reported, unacknowledged results are re-sent, re-delivered ids refused.

Each command appends a line to a marker file, so the tests know independently what really ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from fleet.agent.config import AgentConfig, default_state_dir
from fleet.agent.journal import ProcessInfo
from fleet.agent.orphans import COMMAND_ID_ENV, RESTARTED, boot_id, process_info
from fleet.agent.run import DUPLICATE
from fleet.agent.statedir import Journal
from fleet.proto import agent_service as pb

from .conftest import running_agent
from .fakeserver import FakeServer
from .helpers import alive

SECRET = "s3cret"


async def _agent_process(
    server: FakeServer, state_dir: Path, *, task_status: trio.TaskStatus[trio.Process]
) -> None:
    """A real ``python -m fleet.agent`` on ``state_dir``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ.update(
        FLEET_AGENT_SERVER=server.address,
        FLEET_AGENT_VPS_ID="1",
        FLEET_AGENT_SECRET=SECRET,
        FLEET_AGENT_TERMINATE_GRACE="1",
        FLEET_AGENT_STATE_DIR=str(state_dir),
    )
    await trio.run_process(
        [sys.executable, "-m", "fleet.agent", "--log-level", "info"],
        env=environ,
        check=False,
        task_status=task_status,
    )


async def _wait_gone(pid: int) -> None:
    """Wait until ``pid`` has exited (an orphan's zombie counts: its reaper is init's business).

    Nothing notifies us about a process that is not our child, hence the look every 10 ms;
    callers bound it with ``trio.fail_after``.
    """
    while alive(pid):  # noqa: ASYNC110 - nothing to wait on
        await trio.sleep(0.01)


def _handshakes(server: FakeServer) -> list[pb.AgentHandshake]:
    return server.of_kind("agent_handshake")


def _results_on(server: FakeServer, connection: int, command_id: str) -> list[Any]:
    return [
        item.payload
        for item in server.received
        if item.connection == connection
        and item.kind == "batch_command_result"
        and item.payload.command_id == command_id
    ]


def _acks(server: FakeServer, command_id: str, accepted: bool) -> list[pb.BatchCommandAck]:
    return [a for a in server.of_kind("batch_command_ack", command_id) if a.accepted == accepted]


async def _restart(
    nursery: trio.Nursery, old: trio.Process, server: FakeServer, state: Path
) -> tuple[trio.Process, int]:
    """SIGKILL the agent (no cleanup at all) and start a new one; return it and its connection."""
    old.kill()
    await old.wait()
    before = server.connections
    new: trio.Process = await nursery.start(_agent_process, server, state)
    await server.wait_for(lambda: server.connections > before and server._streams)
    return new, server.connections


@pytest.fixture
async def server(aio_loop: Any) -> Any:
    fake = FakeServer(secret=SECRET)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_a_command_running_when_the_agent_is_killed_is_stopped_and_reported(
    server: FakeServer, tmp_path: Path
) -> None:
    state, marker = tmp_path / "state", tmp_path / "ran"
    command = f"echo run >> {marker}; echo up; sleep 300"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            first: trio.Process = await nursery.start(_agent_process, server, state)
            await server.wait_connected()
            assert _handshakes(server)[0].open_command_ids == []
            assert _handshakes(server)[0].open_command_ids_complete
            await server.run_command("c", command)
            await server.wait_for(lambda: server.of_kind("batch_command_output_stream", "c"))
            pid = server.of_kind("batch_command_started", "c")[0].pid

            second, connection = await _restart(nursery, first, server, state)
            handshake = _handshakes(server)[-1]
            assert handshake.open_command_ids == ["c"]
            assert handshake.open_command_ids_complete
            [result] = await server.wait_for(lambda: _results_on(server, connection, "c"))
            assert result.status == pb.CommandStatus.FAILURE
            assert result.error_message.startswith(RESTARTED)
            assert result.exit_code == -signal.SIGTERM  # it was still running: stopped now
            await _wait_gone(pid)  # the whole group is gone

            # The server (which acked the result) delivers the id again: it does not run twice.
            await server.run_command("c", command)
            [refusal] = await server.wait_for(lambda: _acks(server, "c", False))
            assert refusal.reason == DUPLICATE
            assert marker.read_text() == "run\n"
            assert len(server.of_kind("batch_command_result", "c")) == 1

            third, _ = await _restart(nursery, second, server, state)
            assert _handshakes(server)[-1].open_command_ids == []  # the ack was journaled
            third.send_signal(signal.SIGTERM)
    assert third.returncode == 0


async def test_an_unacknowledged_result_is_sent_again_after_a_restart(
    server: FakeServer, tmp_path: Path
) -> None:
    server.ack_results = False
    state, marker = tmp_path / "state", tmp_path / "ran"
    command = f"echo run >> {marker}; echo done"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            first: trio.Process = await nursery.start(_agent_process, server, state)
            await server.wait_connected()
            await server.run_command("d", command)
            original = await server.wait_result("d")
            assert original.status == pb.CommandStatus.SUCCESS

            second, connection = await _restart(nursery, first, server, state)
            assert _handshakes(server)[-1].open_command_ids == ["d"]
            [again] = await server.wait_for(lambda: _results_on(server, connection, "d"))
            assert again == original

            # A re-delivery while the result waits for its ack: answered with the stored result.
            await server.run_command("d", command)
            await server.wait_for(lambda: len(_results_on(server, connection, "d")) == 2)
            assert _acks(server, "d", True)[-1].reason.startswith("duplicate request")

            await server.ack_result("d")
            await server.run_command("e", "true")  # handled after the ack: it is journaled
            await server.wait_result("e")
            await server.ack_result("e")
            await server.run_command("f", "true")
            await server.wait_result("f")

            third, _ = await _restart(nursery, second, server, state)
            assert _handshakes(server)[-1].open_command_ids == ["f"]
            await server.run_command("d", command)
            [refusal] = await server.wait_for(lambda: _acks(server, "d", False))
            assert refusal.reason == DUPLICATE
            assert marker.read_text() == "run\n"
            third.send_signal(signal.SIGTERM)


async def _sleeper(**options: Any) -> trio.Process:
    return await trio.lowlevel.open_process(
        ["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL, **options
    )


async def test_a_recycled_pid_is_never_signalled(server: FakeServer, tmp_path: Path) -> None:
    """The journal names a pid that now belongs to another process: it is left alone."""
    bystander = await _sleeper()
    try:
        real = process_info(bystander.pid, boot_id())
        assert real is not None
        journal = Journal(tmp_path / "state")
        journal.open()
        journal.accept("older")  # same pid, started earlier: the pid was recycled since
        journal.started("older", ProcessInfo(real.pid, real.start_ticks - 1, real.boot_id))
        journal.accept("rebooted")  # same pid and start, another boot
        journal.started("rebooted", ProcessInfo(real.pid, real.start_ticks, "another-boot"))
        journal.close()
        config = AgentConfig.for_test(server.address, secret=SECRET, state_dir=tmp_path / "state")
        with trio.fail_after(20):
            async with running_agent(config):
                for command_id in ("older", "rebooted"):
                    result = await server.wait_result(command_id)
                    assert result.status == pb.CommandStatus.FAILURE
                    assert result.exit_code == 0
                    assert result.error_message == (
                        f"{RESTARTED} (it was no longer running; its exit status is unknown)"
                    )
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        await bystander.wait()


async def test_a_command_whose_pid_was_not_journaled_is_found_by_its_marker(
    server: FakeServer, tmp_path: Path
) -> None:
    """The agent died between starting the process and journaling its pid."""
    orphan = await _sleeper(env={**os.environ, COMMAND_ID_ENV: "c"})
    try:
        journal = Journal(tmp_path / "state")
        journal.open()
        journal.accept("c")
        journal.close()
        config = AgentConfig.for_test(server.address, secret=SECRET, state_dir=tmp_path / "state")
        with trio.fail_after(20):
            async with running_agent(config):
                result = await server.wait_result("c")
                assert result.status == pb.CommandStatus.FAILURE
                assert result.error_message.startswith(RESTARTED)
                assert result.exit_code == -signal.SIGTERM
                await orphan.wait()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


async def test_when_the_leader_is_gone_only_members_with_the_marker_are_stopped(
    server: FakeServer, tmp_path: Path
) -> None:
    """The group's number could have been reused: members must prove they are the command's."""
    script = "sleep 300 & echo $!; env -u FLEET_COMMAND_ID sleep 301 & echo $!; exec cat"
    leader = await trio.lowlevel.open_process(
        ["sh", "-c", script],
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, COMMAND_ID_ENV: "c"},
    )
    assert leader.stdin is not None
    assert leader.stdout is not None
    info = process_info(leader.pid, boot_id())
    assert info is not None
    pids = b""
    while pids.count(b"\n") < 2:
        pids += await leader.stdout.receive_some(100)
    marked, unmarked = (int(pid) for pid in pids.split())
    await leader.stdin.aclose()
    await leader.wait()  # the leader is gone; its two children live on in its group
    try:
        journal = Journal(tmp_path / "state")
        journal.open()
        journal.accept("c")
        journal.started("c", info)
        journal.close()
        config = AgentConfig.for_test(server.address, secret=SECRET, state_dir=tmp_path / "state")
        with trio.fail_after(20):
            async with running_agent(config):
                result = await server.wait_result("c")
                assert result.exit_code == -signal.SIGTERM
                await _wait_gone(marked)
        assert alive(unmarked)
    finally:
        for pid in (marked, unmarked):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_corrupt_journal_is_set_aside_and_the_agent_cannot_vouch(
    server: FakeServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "journal").write_bytes(b"not a journal\n" * 3)
    config = AgentConfig.for_test(server.address, secret=SECRET, state_dir=state)
    with trio.fail_after(20):
        async with running_agent(config) as connected:
            assert connected
            handshake = _handshakes(server)[0]
            assert handshake.open_command_ids == []
            assert not handshake.open_command_ids_complete
            await server.run_command("c", "true")  # and it still works
            assert (await server.wait_result("c")).status == pb.CommandStatus.SUCCESS
    assert len(list(state.glob("journal.corrupt-*"))) == 1


async def test_an_agent_without_a_state_dir_cannot_vouch(server: FakeServer) -> None:
    config = AgentConfig.for_test(server.address, secret=SECRET)
    with trio.fail_after(20):
        async with running_agent(config):
            await server.run_command("c", "sleep 30")
            await server.wait_for(lambda: server.of_kind("batch_command_started", "c"))
            await server.restart()
            await server.wait_connected()
            handshake = _handshakes(server)[-1]
            assert handshake.open_command_ids == ["c"]
            assert not handshake.open_command_ids_complete


def test_a_second_agent_on_the_same_state_dir_exits_2(tmp_path: Path) -> None:
    holder = Journal(tmp_path / "state")
    holder.open()
    try:
        completed = _run_agent_cli(
            "--server", "127.0.0.1:1", "--vps-id", "1", "--state-dir", str(tmp_path / "state")
        )
    finally:
        holder.close()
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith(
        f"fleet-agent: error: another fleet-agent (pid {os.getpid()}) uses the state directory"
    )


def test_a_state_dir_others_can_read_exits_2(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    os.chmod(tmp_path / "state", 0o755)
    completed = _run_agent_cli(
        "--server", "127.0.0.1:1", "--vps-id", "1", "--state-dir", str(tmp_path / "state")
    )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "chmod 700" in completed.stderr


def _run_agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ["FLEET_AGENT_SECRET"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "fleet.agent", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
        check=False,
    )


def test_the_default_state_dir() -> None:
    home = Path("/home/ops")
    assert default_state_dir({}, 0, home) == Path("/var/lib/fleet-agent")
    assert default_state_dir({}, 1000, home) == Path("/home/ops/.local/state/fleet-agent")
    xdg = {"XDG_STATE_HOME": "/srv/state"}
    assert default_state_dir(xdg, 1000, home) == Path("/srv/state/fleet-agent")
    relative = {"XDG_STATE_HOME": "state"}  # the XDG spec: relative paths are ignored
    assert default_state_dir(relative, 1000, home) == Path("/home/ops/.local/state/fleet-agent")
