"""Real ``fleet-server`` and ``fleet-agent`` processes for the fault suite.

Both run their real command-line entry point in their own process; a two-line launcher only
shortens timings production keeps long (HTTP/2 keepalive, the agent's reconnect back-off and
connect timeout), so every case settles in seconds. Agents dial the server through
``tests.faults.proxy.Proxy``, which also survives server restarts (its upstream follows the
server's new gRPC port).

Each command of a case writes a marker file of its own before its output
(``mktemp MARKERS/TAG.VPS.COMMAND_ID.XXXXXX``, the VPS from the agent's environment and the id
from ``FLEET_COMMAND_ID``) and appends ``done`` to it after, so the suite knows, apart from
anything the server says, which commands ran, to the end or not, and how many times per VPS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from .proxy import Proxy

READY = re.compile(rb"Fleet is ready[^:]*: (http\S+)/\?token=(\S+)")
GRPC = re.compile(rb"Agents connect to 127\.0\.0\.1:(\d+)")
FINAL = {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}
TERMINAL = {"SUCCESS", "FAILURE", "TERMINATED", "AGENT_UNREACHABLE", "AGENT_REJECTED", "SKIPPED"}
RAN = {"SUCCESS", "FAILURE", "TERMINATED"}

_SERVER = (
    "import dataclasses, sys\n"
    "from fleet.server import cli\n"
    "build = cli.build_config\n"
    "cli.build_config = lambda argv, env: dataclasses.replace(\n"
    "    build(argv, env), keepalive_s=1.0, keepalive_timeout_s=1.0)\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)
_AGENT = (
    "import sys\n"
    "from fleet.agent import cli\n"
    "build = cli.build_config\n"
    "cli.build_config = lambda argv, env: build(argv, env).replace(\n"
    "    reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_time_s=1.0,\n"
    "    keepalive_timeout_s=1.0, connect_timeout_s=3.0)\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def _environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return {**environ, **extra}


class Server:
    """A ``fleet-server`` that can be killed and started again on the same data directory."""

    def __init__(self, data_dir: Path, grace: float, proxy: Proxy, db: str | None = None) -> None:
        self.data_dir = data_dir
        self.grace = grace
        self.proxy = proxy
        self.db = db
        self.process: trio.Process | None = None
        self.url = ""
        self.token = ""
        self.output = bytearray()  # everything every run printed (stdout and stderr)

    async def start(self, nursery: trio.Nursery) -> None:
        argv = [sys.executable, "-c", _SERVER, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                "--data-dir", str(self.data_dir), "--reconnect-grace", f"{self.grace:g}",
                "--terminate-confirm", "3", "--log-level", "INFO"]  # fmt: skip
        if self.db:
            argv += ["--db", self.db]
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_environ()
        )
        self.process = process
        assert process.stdout is not None
        start = len(self.output)
        with trio.fail_after(30):
            while not (GRPC.search(self.output, start) and READY.search(self.output, start)):
                chunk = await process.stdout.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"fleet-server ended: {bytes(self.output[start:])!r}")
                self.output += chunk
        ready = READY.search(self.output, start)
        grpc = GRPC.search(self.output, start)
        assert ready is not None
        assert grpc is not None
        self.url, self.token = ready[1].decode(), ready[2].decode()
        self.proxy.upstream = ("127.0.0.1", int(grpc[1]))
        nursery.start_soon(self._drain, process)

    async def _drain(self, process: trio.Process) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.receive_some(65536):
            self.output += chunk

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        with trio.fail_after(20):
            return await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


@dataclass
class Agent:
    """A ``fleet-agent`` process; restarting it keeps its ``--state-dir`` (the journal)."""

    vps_id: int
    name: str
    secret_file: Path
    state_dir: Path
    proxy: Proxy
    process: trio.Process | None = None
    runs: int = 0

    @property
    def log(self) -> Path:
        """The agent's stderr, every run appended."""
        return self.state_dir.with_suffix(".log")

    async def start(self) -> None:
        self.runs += 1
        with self.log.open("ab") as log:
            self.process = await self._open(log)

    async def _open(self, log: Any) -> trio.Process:
        return await trio.lowlevel.open_process(
            [sys.executable, "-c", _AGENT, "--server", self.proxy.address,
             "--vps-id", str(self.vps_id), "--secret-file", str(self.secret_file),
             "--state-dir", str(self.state_dir), "--terminate-grace", "1",
             "--log-level", "INFO"],
            env=_environ(FAULT_VPS=self.name), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip

    async def kill(self, signum: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        with trio.fail_after(20):
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill(signal.SIGTERM)


@dataclass
class Fleet:
    """A server, its agents, and the directory their commands leave markers in."""

    server: Server
    agents: list[Agent]
    markers: Path
    root: Path
    nursery: trio.Nursery
    cases: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def open(
        cls, root: Path, nursery: trio.Nursery, n: int, grace: float, db: str | None = None
    ) -> Fleet:
        proxy = Proxy()
        await nursery.start(proxy.serve)
        server = Server(root / "data", grace, proxy, db)
        await server.start(nursery)
        markers = root / "markers"
        markers.mkdir()
        agents = []
        async with server.client() as client:
            for i in range(n):
                name = f"vps{i + 1}"
                response = await client.post("/api/vps", json={"name": name})
                assert response.status_code == 201, response.text
                vps = response.json()
                secret = root / f"{name}.secret"
                secret.write_text(vps["agent_secret"])
                secret.chmod(0o600)
                agents.append(Agent(vps["id"], name, secret, root / f"{name}.state", proxy))
        fleet = cls(server, agents, markers, root, nursery)
        for agent in agents:
            await agent.start()
        await fleet.wait_online()
        return fleet

    def crashed_agents(self) -> list[str]:
        """Agents that exited by themselves or logged a traceback (a crash is a bug)."""
        return [
            f"{a.name}: exit {a.process.returncode if a.process else None}: "
            + a.log.read_text(errors="replace")[-3000:]
            for a in self.agents
            if a.process is None
            or a.process.returncode is not None
            or "Traceback" in a.log.read_text(errors="replace")
        ]

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for agent in self.agents:
                await agent.stop()
            await self.server.stop()

    async def wait_online(self, agents: list[Agent] | None = None, bound: float = 30) -> None:
        wanted = {a.vps_id for a in agents or self.agents}
        with trio.fail_after(bound):
            async with self.server.client() as client:
                while True:
                    vps = (await client.get("/api/vps")).json()
                    rows = vps["items"] if isinstance(vps, dict) else vps
                    if wanted <= {v["id"] for v in rows if v["online"]}:
                        return
                    await trio.sleep(0.05)

    def command(self, tag: str, lines: int, interval: float) -> tuple[str, bytes]:
        """A command that leaves its marker and prints ``lines`` known lines; its output."""
        pause = f"sleep {interval:g}; " if interval else ""
        content = (
            f'm=$(mktemp "{self.markers}/{tag}.$FAULT_VPS.$FLEET_COMMAND_ID.XXXXXX") || exit 99\n'
            f'i=0; while [ $i -lt {lines} ]; do echo "{tag} line $i"; {pause}i=$((i+1)); done\n'
            'echo done >> "$m"\n'
        )
        expected = b"".join(f"{tag} line {i}\n".encode() for i in range(lines))
        return content, expected

    def runs(self, tag: str) -> dict[str, list[tuple[str, bool]]]:
        """Per VPS name: (command id, finished) of every run of ``tag`` the markers show."""
        found: dict[str, list[tuple[str, bool]]] = {}
        for path in self.markers.glob(f"{tag}.*"):
            _, vps, command_id, _ = path.name.split(".")
            found.setdefault(vps, []).append((command_id, path.read_text() == "done\n"))
        return found
