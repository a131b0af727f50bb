"""runner.run_command against real subprocesses (no server)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from fleet.agent.config import MAX_CHUNK_BYTES
from fleet.agent.runner import (
    COULD_NOT_START,
    CommandControl,
    CommandSpec,
    run_command,
)
from fleet.proto import agent_service as pb

from .helpers import (
    BINARY_WRITER,
    STDERR,
    STDOUT,
    ListSink,
    alive,
    binary_payload,
    python_script,
    wait_reaped,
)

CommandStatus = pb.CommandStatus


async def run(
    content: str,
    *,
    sink: ListSink | None = None,
    control: CommandControl | None = None,
    started: list[int] | None = None,
    grace_s: float = 1.0,
    drain_s: float = 0.5,
    **spec: Any,
) -> tuple[pb.BatchCommandResult, ListSink]:
    sink = sink if sink is not None else ListSink()
    pids = started if started is not None else []
    result = await run_command(
        CommandSpec(command_id="c", content=content, **spec),
        sink,
        control=control or CommandControl(),
        shell="/bin/sh",
        grace_s=grace_s,
        drain_s=drain_s,
        on_started=pids.append,
    )
    return result, sink


async def test_binary_output_is_byte_exact_with_streams_apart() -> None:
    code = BINARY_WRITER.format(out_seed=1, out_size=3_000_000, err_seed=2, err_size=2_000_000)
    with trio.fail_after(20):
        result, sink = await run(python_script(code))
    assert result.status == CommandStatus.SUCCESS
    assert result.exit_code == 0
    assert sink.data(STDOUT) == binary_payload(1, 3_000_000)
    assert sink.data(STDERR) == binary_payload(2, 2_000_000)
    # Coalesced: 5 MB is far fewer than 5,000 chunks, and none is over the chunk size.
    assert len(sink.chunks) < 300
    assert max(len(data) for _, data, _ in sink.chunks) <= MAX_CHUNK_BYTES


async def test_many_small_writes_are_coalesced() -> None:
    with trio.fail_after(20):
        result, sink = await run("i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done")
    assert result.status == CommandStatus.SUCCESS
    lines = sink.data(STDOUT).decode().splitlines()
    assert lines == [f"line {i}" for i in range(20000)]
    assert len(sink.chunks) < 2000
    timestamps = [timestamp for _, _, timestamp in sink.chunks]
    assert timestamps == sorted(timestamps)


@pytest.mark.parametrize(
    ("content", "status", "code", "message"),
    [
        ("exit 0", CommandStatus.SUCCESS, 0, ""),
        ("echo out; exit 7", CommandStatus.FAILURE, 7, ""),
        ("kill -9 $$", CommandStatus.FAILURE, -9, "killed by signal 9 (SIGKILL)"),
        ("kill -TERM $$", CommandStatus.FAILURE, -15, "killed by signal 15 (SIGTERM)"),
    ],
)
async def test_exit_codes(content: str, status: int, code: int, message: str) -> None:
    with trio.fail_after(10):
        result, _ = await run(content)
    assert (result.status, result.exit_code, result.error_message) == (status, code, message)


async def test_timeout_kills_and_reports_failure() -> None:
    started: list[int] = []
    with trio.fail_after(10):
        start = trio.current_time()
        result, _ = await run("sleep 30", timeout_s=1, started=started)
        elapsed = trio.current_time() - start
    assert result.status == CommandStatus.FAILURE
    assert result.error_message == "timed out after 1 s"
    assert result.exit_code == -signal.SIGTERM
    assert 1 <= elapsed < 3
    assert not alive(started[0])


TERM_IGNORING_WITH_GRANDCHILD = """
trap '' TERM
sleep 300 &
echo "grandchild $!"
echo "shell $$"
while :; do sleep 0.05; done
"""


async def test_terminate_kills_term_ignoring_group_with_grandchild() -> None:
    sink = ListSink()
    control = CommandControl()
    outcome: list[pb.BatchCommandResult] = []

    async def runner() -> None:
        outcome.append((await run(TERM_IGNORING_WITH_GRANDCHILD, sink=sink, control=control))[0])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            text = await sink.wait_for(
                lambda: b"shell" in sink.data(STDOUT) and sink.data(STDOUT).decode()
            )
            pids = {line.split()[0]: int(line.split()[1]) for line in text.splitlines()}
            assert alive(pids["grandchild"])
            start = trio.current_time()
            control.terminate()
        elapsed = trio.current_time() - start
    (result,) = outcome
    assert result.status == CommandStatus.TERMINATED
    assert result.error_message == "terminated by request"
    assert result.exit_code == -signal.SIGKILL  # it ignored SIGTERM: killed after the grace
    assert 0.9 <= elapsed < 4
    assert not alive(pids["shell"])
    assert not alive(pids["grandchild"])


async def test_terminate_reads_output_written_after_sigterm() -> None:
    sink = ListSink()
    control = CommandControl()
    outcome: list[pb.BatchCommandResult] = []
    content = "trap 'echo bye; exit 3' TERM; echo ready; while :; do sleep 0.05; done"

    async def runner() -> None:
        outcome.append((await run(content, sink=sink, control=control))[0])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await sink.wait_for(lambda: b"ready" in sink.data(STDOUT))
            control.terminate()
    (result,) = outcome
    assert result.status == CommandStatus.TERMINATED
    assert result.exit_code == 3
    assert sink.data(STDOUT) == b"ready\nbye\n"


async def test_terminate_before_start_runs_nothing() -> None:
    control = CommandControl()
    control.terminate()
    started: list[int] = []
    with trio.fail_after(5):
        result, sink = await run("echo never", control=control, started=started)
    assert result.status == CommandStatus.TERMINATED
    assert started == []
    assert sink.chunks == []


async def test_cancellation_stops_the_process_group() -> None:
    sink = ListSink()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(run, "sleep 300 & echo $!; echo $$; sleep 300", sink=sink)
            )
            text = await sink.wait_for(lambda: sink.data(STDOUT).count(b"\n") == 2 and sink)
            pids = [int(line) for line in text.data(STDOUT).split()]
            nursery.cancel_scope.cancel()
    assert not any(alive(pid) for pid in pids)


async def test_missing_working_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with trio.fail_after(5):
        result, sink = await run("pwd", working_directory=str(missing))
    assert result.status == CommandStatus.FAILURE
    assert result.exit_code == COULD_NOT_START
    assert result.error_message == f"working directory does not exist: {missing}"
    assert sink.chunks == []


async def test_working_directory_and_devnull_stdin(tmp_path: Path) -> None:
    with trio.fail_after(5):
        result, sink = await run("cat; pwd", working_directory=str(tmp_path))
    assert result.status == CommandStatus.SUCCESS
    assert sink.data(STDOUT) == f"{tmp_path}\n".encode()


async def test_shebang_interpreter_is_used() -> None:
    with trio.fail_after(10):
        result, sink = await run(python_script("import sys; print(sys.version_info[0])"))
    assert result.status == CommandStatus.SUCCESS
    assert sink.data(STDOUT) == f"{sys.version_info[0]}\n".encode()


async def test_missing_interpreter_fails_clearly() -> None:
    with trio.fail_after(5):
        result, _ = await run("#!/nonexistent/interpreter -x\necho hi")
    assert result.status == CommandStatus.FAILURE
    assert result.exit_code == COULD_NOT_START
    assert result.error_message.startswith("cannot start /nonexistent/interpreter:")


async def test_script_file_is_private_and_removed() -> None:
    with trio.fail_after(5):
        # Two lines: a one-line command runs as `sh -c`, without a file.
        result, sink = await run('echo "$0"\nstat -c %a "$0"\n')
    assert result.status == CommandStatus.SUCCESS
    path, mode = sink.data(STDOUT).decode().split()
    assert mode == "700"
    assert not await trio.Path(path).exists()


async def test_background_process_holding_the_pipe_does_not_block_the_result() -> None:
    with trio.fail_after(10):
        start = trio.current_time()
        result, sink = await run("sleep 30 & echo $!", drain_s=0.3)
        elapsed = trio.current_time() - start
    pid = int(sink.data(STDOUT))
    try:
        assert result.status == CommandStatus.SUCCESS
        assert elapsed < 3
        assert alive(pid)  # left running, like nohup
    finally:
        os.kill(pid, signal.SIGKILL)


async def test_cancellation_during_a_terminate_still_kills_the_group() -> None:
    sink = ListSink()
    control = CommandControl()
    # The shell dies on SIGTERM; its background child ignores it.
    content = "(trap '' TERM; sleep 300) & echo $! $$; sleep 300"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(run, content, sink=sink, control=control))
            await sink.wait_for(lambda: sink.data(STDOUT).endswith(b"\n"))
            subshell, shell = map(int, sink.data(STDOUT).split())
            control.terminate()  # grace 1 s: the subshell outlives the TERM...
            await wait_reaped(shell)  # ...the runner has reaped the shell and waits the grace...
            nursery.cancel_scope.cancel()  # ...when the agent is cancelled.
    assert not alive(subshell)


async def test_one_line_command_needs_no_script_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # A one-line command without `#!` runs as `sh -c` (no file, no thread hop): it runs even
    # where no script file can be written, while a multi-line one cannot.
    def no_files(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", no_files)
    with trio.fail_after(20):
        one, sink = await run('echo "one line: $0"')
        multi, _ = await run("echo first\necho second\n")
    assert one.status == CommandStatus.SUCCESS
    assert sink.data(STDOUT) == b"one line: /bin/sh\n"
    assert multi.status == CommandStatus.FAILURE
    assert multi.exit_code == COULD_NOT_START
    assert "cannot write the script file" in multi.error_message
