"""run_agent end to end: a real grpclib server on port 0, real subprocesses."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import platform
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import fleet
from fleet.agent.config import AgentConfig
from fleet.agent.run import run_agent
from fleet.proto import agent_service as pb

from .conftest import running_agent
from .fakeserver import FakeServer
from .helpers import BINARY_WRITER, STDERR, STDOUT, alive, binary_payload, python_script

CommandStatus = pb.CommandStatus


async def test_handshake_and_every_message_carry_identity(
    server: FakeServer, config: AgentConfig
) -> None:
    with trio.fail_after(10):
        async with running_agent(config) as connected:
            assert connected
            await server.run_command("c1", "echo hi")
            await server.wait_result("c1")
    first = server.received[0]
    assert first.kind == "agent_handshake"
    handshake = first.payload
    assert handshake.hostname == socket.gethostname()
    assert handshake.os_type == pb.OsType.LINUX
    assert handshake.arch == platform.machine()
    assert handshake.kernel_version == platform.release()
    assert handshake.agent_version == fleet.__version__
    assert handshake.os_name
    ids = [item.message.client_message_id for item in server.received]
    assert ids == sorted(set(ids))
    assert all(item.message.vps_db_id == 1 for item in server.received)
    assert all(item.message.agent_secret == "test-secret" for item in server.received)


async def test_binary_output_over_the_wire(server: FakeServer, config: AgentConfig) -> None:
    code = BINARY_WRITER.format(out_seed=3, out_size=3_000_000, err_seed=4, err_size=1_000_000)
    with trio.fail_after(20):
        async with running_agent(config):
            await server.run_command("big", python_script(code))
            result = await server.wait_result("big")
    assert result.status == CommandStatus.SUCCESS
    assert result.exit_code == 0
    assert server.output("big", STDOUT) == binary_payload(3, 3_000_000)
    assert server.output("big", STDERR) == binary_payload(4, 1_000_000)
    # Coalesced: 4 MB of output in far fewer than 3,000 messages.
    assert len(server.of_kind("batch_command_output_stream", "big")) < 200
    kinds = [item.kind for item in server.received if getattr(item.payload, "command_id", "")]
    # Accepting it is said by its start: no separate ack (one message fewer per command).
    assert kinds[0] == "batch_command_started"
    assert kinds[-1] == "batch_command_result"
    assert server.of_kind("batch_command_ack", "big") == []
    (started,) = server.of_kind("batch_command_started", "big")
    assert started.pid > 0
    assert started.timestamp > 0


async def test_exit_code_timeout_and_missing_directory(
    server: FakeServer, config: AgentConfig, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("exit", "echo out; echo err >&2; exit 5")
            await server.run_command("slow", "sleep 30", timeout_seconds=1)
            await server.run_command("nodir", "pwd", working_directory=str(tmp_path / "gone"))
            exited = await server.wait_result("exit")
            slow = await server.wait_result("slow")
            nodir = await server.wait_result("nodir")
    assert (exited.status, exited.exit_code) == (CommandStatus.FAILURE, 5)
    assert server.output("exit", STDOUT) == b"out\n"
    assert server.output("exit", STDERR) == b"err\n"
    assert (slow.status, slow.error_message) == (CommandStatus.FAILURE, "timed out after 1 s")
    assert nodir.status == CommandStatus.FAILURE
    assert "working directory does not exist" in nodir.error_message


async def test_terminate_and_unknown_terminate(server: FakeServer, config: AgentConfig) -> None:
    content = "trap '' TERM; sleep 300 & echo $!; echo $$; while :; do sleep 0.05; done"
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("t", content)
            await server.wait_for(lambda: server.output("t", STDOUT).count(b"\n") == 2)
            pids = [int(pid) for pid in server.output("t", STDOUT).split()]
            await server.terminate("t")
            await server.terminate("nope")
            result = await server.wait_result("t")
            unknown = await server.wait_result("nope")
    assert result.status == CommandStatus.TERMINATED
    assert result.exit_code == -signal.SIGKILL
    assert not any(alive(pid) for pid in pids)
    assert (unknown.status, unknown.error_message) == (
        CommandStatus.FAILURE,
        "no such running command",
    )


async def test_max_concurrent_rejects_extra_commands(server: FakeServer) -> None:
    config = AgentConfig.for_test(server.address, max_concurrent=1)
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("first", "echo go; sleep 30")
            await server.wait_for(lambda: server.output("first", STDOUT))
            await server.run_command("second", "echo never")
            (ack,) = await server.wait_for(lambda: server.of_kind("batch_command_ack", "second"))
            await server.terminate("first")
            await server.wait_result("first")
    assert not ack.accepted
    assert "max concurrent 1" in ack.reason
    assert not server.of_kind("batch_command_started", "second")
    assert server.result("second") is None


async def test_no_exec_rejects_every_command(server: FakeServer) -> None:
    config = AgentConfig.for_test(server.address, no_exec=True)
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("x", "touch /tmp/should-not-exist")
            (ack,) = await server.wait_for(lambda: server.of_kind("batch_command_ack", "x"))
    assert not ack.accepted
    assert "--no-exec" in ack.reason
    assert not server.of_kind("batch_command_started")


async def test_duplicate_request_is_acked_again_but_not_rerun(
    server: FakeServer, config: AgentConfig
) -> None:
    server.ack_results = False
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("d", "echo once")
            await server.wait_result("d")
            await server.run_command("d", "echo once")
            await server.wait_for(lambda: len(server.of_kind("batch_command_result", "d")) == 2)
    (ack,) = server.of_kind("batch_command_ack", "d")  # the first was said by its start
    assert ack.accepted
    assert "duplicate" in ack.reason
    assert len(server.of_kind("batch_command_started", "d")) == 1
    assert server.output("d", STDOUT) == b"once\n"


async def test_unknown_payloads_are_ignored(server: FakeServer, config: AgentConfig) -> None:
    # Field 12 of MessageToAgent is not in this protocol version: a newer server's payload.
    unknown = pb.MessageToAgent.parse(bytes([0x08, 7, 0x62, 2, 0x08, 1]))
    with trio.fail_after(10):
        async with running_agent(config):
            await server.send(server_message_id=3)  # no payload at all
            await server.send_message(unknown)
            await server.send(server_handshake_ack=pb.ServerHandshakeAck())
            await server.run_command("after", "echo still here")
            result = await server.wait_result("after")
    assert result.status == CommandStatus.SUCCESS
    assert server.connections == 1


async def test_server_restart_mid_command(
    server: FakeServer, config: AgentConfig, tmp_path: Path
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    os.mkfifo(gate)
    os.mkfifo(done)
    code = f"""
import random, sys
print("before", flush=True)
open({str(gate)!r}).read()
sys.stdout.buffer.write(random.Random(5).randbytes(300_000) + b"after\\n"); sys.stdout.flush()
sys.stderr.write("meanwhile\\n"); sys.stderr.flush()
open({str(done)!r}, "w").write("x")
"""
    with trio.fail_after(20):
        async with running_agent(config):
            await server.run_command("r", python_script(code))
            await server.wait_for(lambda: server.output("r", STDOUT) == b"before\n")
            await server.stop()
            # The command goes on while the server is down: let it finish its output.
            await trio.to_thread.run_sync(gate.write_text, "go", abandon_on_cancel=True)
            await trio.to_thread.run_sync(done.read_text, abandon_on_cancel=True)
            await server.start()  # same port
            result = await server.wait_result("r")
    assert result.status == CommandStatus.SUCCESS
    assert server.connections == 2
    assert server.port == int(config.server.rsplit(":", 1)[1])
    # Byte-exact once duplicates are dropped by offset (FakeServer.output also asserts no gap).
    assert server.output("r", STDOUT) == b"before\n" + binary_payload(5, 300_000) + b"after\n"
    assert server.output("r", STDERR) == b"meanwhile\n"
    assert len(server.of_kind("batch_command_started", "r")) == 1


async def test_result_is_resent_until_acknowledged(server: FakeServer, config: AgentConfig) -> None:
    server.ack_results = False
    with trio.fail_after(15):
        async with running_agent(config):
            await server.run_command("k", "echo kept")
            await server.wait_result("k")
            server.ack_results = True  # the next connection acknowledges it
            await server.restart()
            await server.wait_for(lambda: results_on(server, "k", connection=2))
            await server.restart()
            await server.wait_connected()
            await server.run_command("probe", "echo probe")
            await server.wait_result("probe")
    assert len(results_on(server, "k", connection=1)) == 1
    assert len(results_on(server, "k", connection=2)) == 1
    assert results_on(server, "k", connection=3) == []
    assert server.output("k", STDOUT) == b"kept\n"


def results_on(server: FakeServer, command_id: str, *, connection: int) -> list[Any]:
    return [
        item.payload
        for item in server.received
        if item.connection == connection
        and item.kind == "batch_command_result"
        and item.payload.command_id == command_id
    ]


async def test_refused_handshake_backs_off(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.refuse = "unknown vps"
    config = AgentConfig.for_test(server.address, reconnect_min_s=0.1, reconnect_max_s=0.4)
    caplog.set_level(logging.WARNING, logger="fleet.agent")
    with trio.fail_after(10):
        async with running_agent(config) as connected:
            assert not connected
            await server.wait_for(lambda: len(server.handshake_times) >= 6)
    times = server.handshake_times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Delay n is uniform(0.5, 1) × min(0.4, 0.1 × 2ⁿ): it grows, never spins.
    minimums = [0.05, 0.1, 0.2, 0.2, 0.2]
    assert all(gap >= minimum * 0.95 for gap, minimum in zip(gaps, minimums, strict=False))
    assert "unknown vps" in caplog.text


async def test_started_false_when_server_is_down_then_connects(aio_loop: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = AgentConfig.for_test(f"127.0.0.1:{port}")
    late = FakeServer(port=port)
    with trio.fail_after(10):
        async with running_agent(config) as connected:
            assert not connected
            await late.start()
            try:
                await late.wait_connected()
                await late.run_command("c", "echo up")
                result = await late.wait_result("c")
            finally:
                await late.stop()
    assert result.status == CommandStatus.SUCCESS


async def test_graceful_stop_reports_terminated_commands(
    server: FakeServer, config: AgentConfig
) -> None:
    stop = trio.Event()
    content = "trap '' TERM; echo running; while :; do sleep 0.05; done"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_agent, config, stop=stop))
            await server.run_command("g", content)
            await server.wait_for(lambda: server.output("g", STDOUT))
            pid = server.of_kind("batch_command_started", "g")[0].pid
            stop.set()
        # run_agent returned by itself: the nursery did not need cancelling.
    result = server.result("g")
    assert result is not None
    assert result.status == CommandStatus.TERMINATED
    assert result.error_message == "the agent is shutting down"
    assert not alive(pid)


async def test_cancelling_the_agent_stops_its_commands(
    server: FakeServer, config: AgentConfig
) -> None:
    with trio.fail_after(10):
        async with running_agent(config):
            await server.run_command("c", "sleep 300 & echo $!; echo $$; sleep 300")
            await server.wait_for(lambda: server.output("c", STDOUT).count(b"\n") == 2)
            pids = [int(pid) for pid in server.output("c", STDOUT).split()]
    assert not any(alive(pid) for pid in pids)


async def test_several_agents_in_one_process(aio_loop: Any) -> None:
    servers = [FakeServer(vps_id=index + 1, secret=f"s{index}") for index in range(3)]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for index, fake in enumerate(servers):
                await fake.start()
                config = AgentConfig.for_test(fake.address, vps_id=index + 1, secret=f"s{index}")
                assert await nursery.start(functools.partial(run_agent, config))
            for index, fake in enumerate(servers):
                await fake.run_command("same-id", f"echo agent {index}")
            for index, fake in enumerate(servers):
                await fake.wait_result("same-id")
                assert fake.output("same-id", STDOUT) == f"agent {index}\n".encode()
            nursery.cancel_scope.cancel()
    for fake in servers:
        await fake.stop()


async def test_keepalive_notices_a_silent_server(aio_loop: Any, server: FakeServer) -> None:
    async with trio.open_nursery() as nursery:
        proxy = FreezableProxy(server.port)
        proxy_port = await nursery.start(proxy.serve)
        config = AgentConfig.for_test(
            f"127.0.0.1:{proxy_port}", keepalive_time_s=0.3, keepalive_timeout_s=0.6
        )
        with trio.fail_after(10):
            async with running_agent(config) as connected:
                assert connected
                proxy.freeze()  # the connection stays open but nothing gets through any more
                await server.wait_for(lambda: len(server.handshake_times) == 2)
                await server.run_command("alive", "echo again")
                await server.wait_result("alive")
        nursery.cancel_scope.cancel()


class FreezableProxy:
    """A TCP proxy whose existing connections can be frozen (a server that went silent)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._frozen: list[trio.CancelScope] = []

    def freeze(self) -> None:
        for scope in self._frozen:
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self._upstream_port)
        scope = trio.CancelScope()
        self._frozen.append(scope)
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pipe, client, upstream)
                nursery.start_soon(_pipe, upstream, client)
        await trio.sleep_forever()  # frozen: keep both sockets open, forward nothing


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    while data := await source.receive_some(65536):
        await sink.send_all(data)


def _tls_server(ca: trustme.CA) -> FakeServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    return FakeServer(ssl_context=context)


async def test_tls_with_a_ca_file(aio_loop: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = _tls_server(ca)
    await server.start()
    try:
        config = AgentConfig.for_test(server.address, tls=True, ca_file=ca_file)
        with trio.fail_after(10):
            async with running_agent(config) as connected:
                assert connected
                await server.run_command("tls", "echo secure")
                await server.wait_result("tls")
        assert server.output("tls", STDOUT) == b"secure\n"
    finally:
        await server.stop()


async def test_tls_with_the_wrong_ca_does_not_connect(
    aio_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca_file = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    server = _tls_server(trustme.CA())
    await server.start()
    try:
        config = AgentConfig.for_test(server.address, tls=True, ca_file=other_ca_file)
        with trio.fail_after(10):
            async with running_agent(config) as connected:
                assert not connected
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert server.received == []
    finally:
        await server.stop()


async def test_output_overflow_while_disconnected_is_marked(
    server: FakeServer, tmp_path: Path
) -> None:
    config = AgentConfig.for_test(server.address, output_buffer_bytes=64 * 1024)
    gate, done = tmp_path / "gate", tmp_path / "done"
    os.mkfifo(gate)
    os.mkfifo(done)
    code = f"""
import random, sys
print("before", flush=True)
open({str(gate)!r}).read()
data = random.Random(9).randbytes(300_000)
for i in range(0, len(data), 10_000):
    sys.stdout.buffer.write(data[i:i + 10_000]); sys.stdout.flush()
open({str(done)!r}, "w").write("x")
"""
    with trio.fail_after(20):
        async with running_agent(config):
            await server.run_command("o", python_script(code))
            await server.wait_for(lambda: server.output("o", STDOUT) == b"before\n")
            await server.stop()
            await trio.to_thread.run_sync(gate.write_text, "go", abandon_on_cancel=True)
            await trio.to_thread.run_sync(done.read_text, abandon_on_cancel=True)
            await server.start()
            result = await server.wait_result("o")
    assert result.status == CommandStatus.SUCCESS
    data = binary_payload(9, 300_000)
    output = server.output("o", STDOUT)
    assert output.startswith(b"before\n")
    head, marker_and_tail = output[len(b"before\n") :].split(b"\n[fleet: ", 1)
    count, tail = marker_and_tail.split(b" bytes dropped while disconnected]\n", 1)
    dropped = int(count)
    # What was kept is the stream minus one contiguous dropped run, marked where it was.
    assert data.startswith(head)
    assert data.endswith(tail)
    assert len(head) + dropped + len(tail) == len(data)
    assert len(tail) <= 64 * 1024
    assert dropped >= 300_000 - 2 * 64 * 1024


async def test_run_agent_needs_a_trio_asyncio_loop() -> None:
    config = AgentConfig.for_test("127.0.0.1:1")
    with trio.fail_after(5), pytest.raises(RuntimeError, match=r"trio_asyncio\.open_loop"):
        await run_agent(config)
