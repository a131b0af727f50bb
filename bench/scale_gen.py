"""A protocol-level load generator: many agent streams from one process, answering instantly.

    python -m bench.scale_gen --server HOST:PORT --agents FILE.json [--pb-dir DIR]

Plain asyncio + grpclib, one HTTP/2 connection per agent (like real agents). Each stream sends
the ``agent_handshake``, waits for the server's answer, and then answers every
``BatchAgentCommandRequest`` at once with ``BatchCommandResult(SUCCESS, exit_code=0)``.
Messages are Google protobuf classes generated from ``fleet/proto`` into ``--pb-dir`` (much
cheaper than betterproto2, so the generator stays light); without it, betterproto2's.

Protocol on stdin/stdout as ``bench.agents_host``: ``ready``, then ``go`` →
``connected OK FAILED SECONDS``; holds the streams until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality

METHOD_PATH = "/agent_service.AgentCommunicationService/EstablishCommunicationStream"


class Messages:
    """The few messages the generator needs, in Google protobuf or betterproto2."""

    def __init__(self, pb_dir: str | None) -> None:
        if pb_dir:
            sys.path.insert(0, pb_dir)
            import messages_pb2  # type: ignore[import-not-found]

            self.to_server = messages_pb2.MessageToServer
            self.to_agent = messages_pb2.MessageToAgent
            self.google = True
        else:
            from fleet.proto import agent_service as pb

            self.pb = pb
            self.to_server = pb.MessageToServer
            self.to_agent = pb.MessageToAgent
            self.google = False

    def payload(self, message: Any) -> str | None:
        if self.google:
            return message.WhichOneof("payload")  # type: ignore[no-any-return]
        import betterproto2

        return betterproto2.which_one_of(message, "payload")[0] or None

    def handshake(self, vps_id: int, secret: str) -> Any:
        if self.google:
            m = self.to_server(client_message_id=1, vps_db_id=vps_id, agent_secret=secret)
            m.agent_handshake.hostname = f"gen-{vps_id}"
            m.agent_handshake.agent_version = "bench"
            m.agent_handshake.os_type = 1
            return m
        pb = self.pb
        return pb.MessageToServer(
            client_message_id=1,
            vps_db_id=vps_id,
            agent_secret=secret,
            agent_handshake=pb.AgentHandshake(
                hostname=f"gen-{vps_id}", agent_version="bench", os_type=pb.OsType.LINUX
            ),
        )

    def result(self, vps_id: int, secret: str, message_id: int, command_id: str) -> Any:
        if self.google:
            m = self.to_server(client_message_id=message_id, vps_db_id=vps_id, agent_secret=secret)
            m.batch_command_result.command_id = command_id
            m.batch_command_result.status = 1  # SUCCESS
            return m
        pb = self.pb
        return pb.MessageToServer(
            client_message_id=message_id,
            vps_db_id=vps_id,
            agent_secret=secret,
            batch_command_result=pb.BatchCommandResult(
                command_id=command_id, status=pb.CommandStatus.SUCCESS, exit_code=0
            ),
        )


class Generator:
    def __init__(
        self,
        host: str,
        port: int,
        agents: list[tuple[int, str]],
        messages: Messages,
        concurrency: int,
    ) -> None:
        self.host, self.port = host, port
        self.agents = agents
        self.m = messages
        self.gate = asyncio.Semaphore(concurrency)
        self.channels: dict[int, Channel] = {}
        self.ok = 0
        self.failed = 0
        self.retries = 0
        self.results = 0
        self.all_reported = asyncio.Event()

    def _report(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if self.ok + self.failed == len(self.agents):
            self.all_reported.set()

    async def agent(self, vps_id: int, secret: str) -> None:
        reported = False
        for attempt in range(6):
            channel = Channel(self.host, self.port)
            self.channels[vps_id] = channel
            try:
                stream = channel.request(
                    METHOD_PATH, Cardinality.STREAM_STREAM, self.m.to_server, self.m.to_agent
                )
                async with stream:
                    async with self.gate:
                        await stream.send_message(self.m.handshake(vps_id, secret))
                        ack = await stream.recv_message()
                    if (
                        ack is None
                        or self.m.payload(ack) != "server_handshake_ack"
                        or not ack.server_handshake_ack.authentication_successful
                    ):
                        raise RuntimeError(f"vps={vps_id} handshake refused")
                    reported = True
                    self._report(True)
                    message_id = 1
                    while (message := await stream.recv_message()) is not None:
                        if self.m.payload(message) == "batch_agent_command_request":
                            message_id += 1
                            command_id = message.batch_agent_command_request.command_id
                            await stream.send_message(
                                self.m.result(vps_id, secret, message_id, command_id)
                            )
                            self.results += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if reported:
                    return  # the stream ended (bench teardown or server shutdown)
                self.retries += 1
                if attempt == 5:
                    print(f"vps={vps_id}: {error!r}", file=sys.stderr)
                await asyncio.sleep(0.2 * (attempt + 1))
            finally:
                channel.close()
        self._report(False)


async def main_async(args: argparse.Namespace, agents: list[tuple[int, str]]) -> None:
    host, _, port = args.server.rpartition(":")
    gen = Generator(host, int(port), agents, Messages(args.pb_dir), args.concurrency)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line.startswith("go"):
        return
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(gen.agent(v, s)) for v, s in agents]
    await gen.all_reported.wait()
    seconds = time.perf_counter() - start
    print(f"connected {gen.ok} {gen.failed} {seconds:.4f}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # hold until the bench closes stdin
    print(f"results sent {gen.results}, connect retries {gen.retries}", file=sys.stderr)
    for channel in gen.channels.values():
        channel.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--agents", required=True)
    parser.add_argument("--pb-dir")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    args = parser.parse_args()
    with open(args.agents, encoding="utf-8") as f:
        agents = [(int(v), str(s)) for v, s in json.load(f)]
    asyncio.run(main_async(args, agents))
    sys.stdout.flush()
    os._exit(0)  # skip tearing down thousands of transports one by one


if __name__ == "__main__":
    main()
