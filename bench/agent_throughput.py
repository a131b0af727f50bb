"""Stream N MB of stdout through the agent to an in-process grpclib server; print MB/s and RSS.

    python bench/agent_throughput.py                 # 200 MB, agent in its own process
    python bench/agent_throughput.py --in-process    # agent and server in one trio run
    python bench/agent_throughput.py --mb 50

The server here is a lean grpclib server written for the benchmark (hand-written
``__mapping__``, port 0): it decodes every message with betterproto2, counts the output bytes
(checking offsets are contiguous), and acknowledges the result. The command is
``head -c N /dev/zero`` so that the producer costs next to nothing.

The agent's peak RSS is ``VmHWM`` of the agent process (or the peak RSS of this process with
``--in-process``, which then includes the server).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio
import trio_asyncio
from grpclib.const import Cardinality, Handler
from grpclib.exceptions import ProtocolError, StreamTerminatedError
from grpclib.server import Server, Stream
from h2.exceptions import H2Error

from fleet.agent.config import AgentConfig, Secret
from fleet.agent.link import METHOD_PATH
from fleet.agent.run import run_agent
from fleet.proto import agent_service as pb

SECRET = "bench-secret"


class BenchServer:
    """Accepts one agent, runs commands on it, and counts what comes back."""

    def __init__(self) -> None:
        self.port = 0
        self.messages = 0
        self.output_messages = 0
        self.output_bytes = 0
        self.next_offset = 0
        self.result: pb.BatchCommandResult | None = None
        self.connected = trio.Event()
        self.finished = trio.Event()
        self._server: Server | None = None
        self._stream: Stream[pb.MessageToServer, pb.MessageToAgent] | None = None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            METHOD_PATH: Handler(
                self._handle, Cardinality.STREAM_STREAM, pb.MessageToServer, pb.MessageToAgent
            )
        }

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await trio_asyncio.aio_as_trio(self._start)(sock)

    async def _start(self, sock: socket.socket) -> None:
        self._server = Server([self])
        await self._server.start(sock=sock, backlog=128)

    async def stop(self) -> None:
        await trio_asyncio.aio_as_trio(self._stop)()

    async def _stop(self) -> None:
        assert self._server is not None
        if self._stream is not None:
            try:
                await self._stream.send_trailing_metadata()
            except (H2Error, ProtocolError, StreamTerminatedError):
                pass  # the agent already went away
        self._server.close()
        await self._server.wait_closed()

    async def run(self, command_id: str, content: str) -> None:
        assert self._stream is not None
        request = pb.BatchAgentCommandRequest(command_id=command_id, content=content)
        message = pb.MessageToAgent(batch_agent_command_request=request)
        await trio_asyncio.aio_as_trio(self._stream.send_message)(message)

    async def _handle(self, stream: Stream[pb.MessageToServer, pb.MessageToAgent]) -> None:
        handshake = await stream.recv_message()
        assert handshake is not None
        assert handshake.agent_secret == SECRET
        ack = pb.ServerHandshakeAck(authentication_successful=True)
        await stream.send_message(pb.MessageToAgent(server_handshake_ack=ack))
        self._stream = stream
        self.connected.set()
        async for message in stream:
            self.messages += 1
            chunk = message.batch_command_output_stream
            if chunk is not None:
                assert chunk.offset == self.next_offset, "output offsets must be contiguous"
                self.next_offset += len(chunk.chunk)
                self.output_messages += 1
                self.output_bytes += len(chunk.chunk)
            result = message.batch_command_result
            if result is not None:
                self.result = result
                reply = pb.BatchResultAck(command_id=result.command_id)
                await stream.send_message(pb.MessageToAgent(batch_result_ack=reply))
                self.finished.set()


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def agent_environment(port: int) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    environ.update(
        FLEET_AGENT_SERVER=f"127.0.0.1:{port}",
        FLEET_AGENT_VPS_ID="1",
        FLEET_AGENT_SECRET=SECRET,
        FLEET_AGENT_LOG_LEVEL="WARNING",
        # A journal of its own (a few hundred bytes), not the machine's /var/lib/fleet-agent.
        FLEET_AGENT_STATE_DIR=tempfile.mkdtemp(prefix="fleet-bench-agent-state-"),
    )
    return environ


async def bench(size_mb: int, in_process: bool) -> dict[str, Any]:
    size = size_mb * 1_000_000
    async with trio_asyncio.open_loop():
        server = BenchServer()
        await server.start()
        async with trio.open_nursery() as nursery:
            process: trio.Process | None = None
            if in_process:
                config = AgentConfig(
                    server=f"127.0.0.1:{server.port}", vps_id=1, secret=Secret(SECRET)
                )
                await nursery.start(functools.partial(run_agent, config))
            else:
                process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        [sys.executable, "-m", "fleet.agent"],
                        env=agent_environment(server.port),
                        check=False,
                        stdin=subprocess.DEVNULL,
                    )
                )
            with trio.fail_after(60):
                await server.connected.wait()
            start = time.perf_counter()
            cpu_start = time.process_time()
            await server.run("bench", f"head -c {size} /dev/zero")
            with trio.fail_after(600):
                await server.finished.wait()
            elapsed = time.perf_counter() - start
            server_cpu = time.process_time() - cpu_start
            if process is not None:
                agent_peak_kib = vm_kib(process.pid, "VmHWM")
                agent_cpu = _process_cpu_seconds(process.pid)
                process.terminate()
                with trio.fail_after(15):
                    await process.wait()
            else:
                agent_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                agent_cpu = server_cpu
            await server.stop()
            nursery.cancel_scope.cancel()
    assert server.result is not None
    assert server.result.status == pb.CommandStatus.SUCCESS
    assert server.output_bytes == size, (server.output_bytes, size)
    return {
        "mb": size / 1e6,
        "seconds": elapsed,
        "mb_per_s": size / 1e6 / elapsed,
        "messages": server.output_messages,
        "avg_chunk_kib": server.output_bytes / max(server.output_messages, 1) / 1024,
        "agent_peak_rss_mib": agent_peak_kib / 1024,
        "agent_cpu_s": agent_cpu,
        "in_process": in_process,
    }


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=200, help="megabytes of stdout (200)")
    parser.add_argument("--in-process", action="store_true", help="run the agent in-process")
    args = parser.parse_args()
    figures = trio.run(bench, args.mb, args.in_process)
    where = "in-process" if figures["in_process"] else "separate process"
    print(f"agent ({where}): {figures['mb']:.0f} MB of stdout in {figures['seconds']:.2f} s")
    print(f"throughput: {figures['mb_per_s']:.1f} MB/s")
    print(
        f"output messages: {figures['messages']} (average chunk {figures['avg_chunk_kib']:.1f} KiB)"
    )
    print(f"agent peak RSS: {figures['agent_peak_rss_mib']:.1f} MiB")
    print(f"agent CPU: {figures['agent_cpu_s']:.2f} s")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
