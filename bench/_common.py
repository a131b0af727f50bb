"""Shared pieces of the benchmarks: the server process, worker processes, REST, the feed, stats.

Everything runs under trio in the bench process; the server, the agent hosts and the load
generators are separate processes started here and always stopped here (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import trio
import trio_websocket

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
FINAL_BATCH = frozenset(
    {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}
)
TERMINAL_CHILD = frozenset(
    {"SUCCESS", "FAILURE", "TERMINATED", "AGENT_UNREACHABLE", "AGENT_REJECTED"}
)


class BenchError(Exception):
    """A benchmark could not produce its figure (the message says why)."""


# --- the machine ---------------------------------------------------------------------------


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_notes() -> dict[str, Any]:
    load = os.getloadavg()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_avg_1m": round(load[0], 2),
        "mem_total_mib": _meminfo_mib("MemTotal"),
        "python": sys.version.split()[0],
    }


def _meminfo_mib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return 0


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def peak_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``/proc/PID/clear_refs`` ← 5); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_s(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process in seconds (plus its waited-for children's with ``children``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (for CPU accounting of agent hosts and their commands)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


# --- statistics and tables -----------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        text = f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def log(message: str) -> None:
    """Progress on stderr (the tables and JSON go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


async def stop_process(process: trio.Process, grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; always waits. Call shielded."""
    if process.returncode is None:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        with trio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        await process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


async def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    stdin: int = subprocess.DEVNULL,
    stdout: int | BinaryIO | None = None,
    env: dict[str, str] | None = None,
) -> trio.Process:
    """Start a process with its stderr (and stdout unless given) in ``log_path``."""
    with open_log(log_path) as err:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=stdin,
            stdout=err if stdout is None else stdout,
            stderr=err,
            env=child_env() if env is None else env,
            cwd=ROOT,
        )


@asynccontextmanager
async def temp_dir(prefix: str) -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Server:
    """A running ``fleet-server`` process."""

    process: trio.Process
    http_url: str
    token: str
    grpc_address: str
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url[len("http") :]


_READY = re.compile(r"Fleet is ready[^:]*: (http://\S+?)/\?token=(\S+)")
_AGENTS = re.compile(r"Agents connect to (\S+)")


@asynccontextmanager
async def fleet_server(tmp: Path, *extra: str, start_timeout: float = 60) -> AsyncIterator[Server]:
    """Start ``python -m fleet.server`` on ports 0 with its data in ``tmp``; stop it after."""
    out_path, log_path = tmp / "server.stdout", tmp / "server.log"
    data_dir = tmp / "data"
    argv = [PY, "-m", "fleet.server", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
    argv += ["--data-dir", str(data_dir), "--log-level", "WARNING", *extra]
    with open_log(out_path) as out:
        process = await spawn(argv, log_path, stdout=out)
    try:
        deadline = trio.current_time() + start_timeout
        while True:
            text = out_path.read_text(errors="replace")
            ready, agents = _READY.search(text), _AGENTS.search(text)
            if ready and agents:
                break
            if process.poll() is not None:
                raise BenchError(f"fleet-server exited at start:\n{tail(log_path)}")
            if trio.current_time() > deadline:
                raise BenchError(f"fleet-server not ready in {start_timeout} s:\n{tail(log_path)}")
            await trio.sleep(0.02)
        yield Server(process, ready[1], ready[2], agents[1], data_dir, log_path)
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process)


class _Lines:
    """Line reader over a trio receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")


@dataclass
class Workers:
    """Worker processes speaking the ready / go / ``connected OK FAILED SECONDS`` protocol.

    ``bench.agents_host`` (real agents) and ``bench.scale_gen`` (protocol-level agents) both
    print ``ready`` once imported, connect everything when they read ``go``, print
    ``connected …`` and then hold their connections until their stdin closes.
    """

    processes: list[trio.Process]
    lines: list[_Lines]
    logs: list[Path]
    connected: int = 0
    failed: int = 0
    per_process_s: list[float] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def go(self, timeout: float) -> float:
        """Tell every worker to connect; return the seconds until the last one reported."""
        start = time.perf_counter()
        for p in self.processes:
            assert p.stdin is not None
            await p.stdin.send_all(b"go\n")
        self.per_process_s = []
        try:
            with trio.fail_after(timeout):
                for n, reader in enumerate(self.lines):
                    line = await self._expect(n, reader, "connected")
                    _, ok, failed, seconds = line.split()
                    self.connected += int(ok)
                    self.failed += int(failed)
                    self.per_process_s.append(float(seconds))
        except trio.TooSlowError:
            raise BenchError(f"workers did not connect within {timeout} s") from None
        return time.perf_counter() - start

    async def _expect(self, n: int, reader: _Lines, word: str) -> str:
        while True:
            try:
                line = await reader.readline()
            except EOFError:
                raise BenchError(
                    f"worker {n} exited before '{word}':\n{tail(self.logs[n])}"
                ) from None
            if line.startswith(word):
                return line

    def rss_mib(self) -> float:
        return sum(rss_mib(pid) for pid in self.pids)


@asynccontextmanager
async def workers(
    argvs: Sequence[Sequence[str]], tmp: Path, name: str, ready_timeout: float = 60
) -> AsyncIterator[Workers]:
    processes: list[trio.Process] = []
    logs: list[Path] = []
    try:
        for n, argv in enumerate(argvs):
            log_path = tmp / f"{name}-{n}.log"
            logs.append(log_path)
            processes.append(
                await spawn(argv, log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
        group = Workers(processes, [_Lines(p.stdout) for p in processes], logs)  # type: ignore[arg-type]
        try:
            with trio.fail_after(ready_timeout):
                for n, reader in enumerate(group.lines):
                    await group._expect(n, reader, "ready")
        except trio.TooSlowError:
            raise BenchError(f"{name} workers not ready within {ready_timeout} s") from None
        yield group
    finally:
        with trio.CancelScope(shield=True):
            for p in processes:
                if p.stdin is not None:
                    try:
                        await p.stdin.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            with trio.move_on_after(10):
                for p in processes:
                    await p.wait()
            for p in processes:
                await stop_process(p, grace=5)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def agent_host_argvs(
    creds: Sequence[tuple[int, str]],
    server_address: str,
    tmp: Path,
    hosts: int,
    *,
    journal: bool = True,
) -> list[list[str]]:
    """Command lines for ``hosts`` ``bench.agents_host`` processes sharing ``creds``.

    With ``journal`` every agent keeps its journal under ``tmp/agent-state`` (as a real
    ``fleet-agent`` does).
    """
    argvs = []
    for k, part in enumerate(split(creds, hosts)):
        path = tmp / f"agents-{k}.json"
        path.write_text(json.dumps(part))
        argv = [PY, "-m", "bench.agents_host", "--server", server_address, "--agents", str(path)]
        if journal:
            (tmp / "agent-state").mkdir(mode=0o700, exist_ok=True)
            argv += ["--state-root", str(tmp / "agent-state")]
        argvs.append(argv)
    return argvs


# --- REST and the feed -----------------------------------------------------------------------


class Api:
    """A keep-alive REST client for one server."""

    def __init__(self, server: Server, connections: int = 32) -> None:
        self.server = server
        self.client = httpx.AsyncClient(
            base_url=server.http_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=300,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            await self.client.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise BenchError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def create_vps_many(
        self, count: int, *, prefix: str = "bench", concurrency: int = 32
    ) -> list[tuple[int, str]]:
        """Register ``count`` VPSes through ``POST /api/vps`` (``concurrency`` at a time)."""
        out: list[tuple[int, str] | None] = [None] * count
        limiter = trio.CapacityLimiter(concurrency)

        async def one(i: int) -> None:
            async with limiter:
                body = await self.request("POST", "/api/vps", json={"name": f"{prefix}-{i:05d}"})
                out[i] = (int(body["id"]), str(body["agent_secret"]))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        return [x for x in out if x is not None]

    async def post_batch(self, command: str, vps_ids: Sequence[int]) -> str:
        body = await self.request(
            "POST",
            "/api/batch_commands",
            json={"command_content": command, "target_vps_ids": list(vps_ids)},
        )
        return str(body["batch_command_id"])

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/batch_commands/{batch_id}")  # type: ignore[no-any-return]

    async def online_count(self) -> int:
        return sum(1 for v in await self.request("GET", "/api/vps") if v["online"])

    async def wait_online(self, count: int, timeout: float) -> float:
        start = time.perf_counter()
        with trio.move_on_after(timeout):
            while True:
                if await self.online_count() >= count:
                    return time.perf_counter() - start
                await trio.sleep(0.25)
        raise BenchError(f"fewer than {count} agents online after {timeout} s")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Feed:
    """What a WebSocket subscriber saw of one batch."""

    status: str | None = None
    final_at: float | None = None  # perf_counter of the event that showed the final status
    snapshots: int = 0
    events: int = 0
    child_final_at: dict[str, float] = field(default_factory=dict)


async def watch_batch(
    server: Server,
    batch_id: str,
    *,
    timeout: float,
    on_event: Callable[[dict[str, Any], float], None] | None = None,
) -> Feed:
    """Follow ``/ws/batch_commands/{id}`` until the batch is final (reconnects after 1013)."""
    feed = Feed()
    url = f"{server.ws_url}/ws/batch_commands/{batch_id}"
    headers = [(b"Authorization", f"Bearer {server.token}".encode())]
    try:
        with trio.fail_after(timeout):
            while feed.final_at is None:
                try:
                    async with trio_websocket.open_websocket_url(
                        url,
                        extra_headers=headers,
                        max_message_size=256 * 1024 * 1024,
                        message_queue_size=4096,
                        receive_buffer_size=256 * 1024,
                    ) as ws:
                        while feed.final_at is None:
                            message = await ws.get_message()
                            now = time.perf_counter()
                            _feed_event(feed, json.loads(message), now, on_event)
                except trio_websocket.ConnectionClosed:
                    continue  # overrun (1013): resubscribe for a fresh snapshot
    except trio.TooSlowError:
        raise BenchError(f"batch {batch_id} not final within {timeout} s") from None
    return feed


def _feed_event(
    feed: Feed,
    event: dict[str, Any],
    now: float,
    on_event: Callable[[dict[str, Any], float], None] | None,
) -> None:
    feed.events += 1
    kind = event.get("type")
    if kind == "SNAPSHOT":
        feed.snapshots += 1
        batch = event["batch"]
        for task in batch["tasks"]:
            if task["status"] in TERMINAL_CHILD:
                feed.child_final_at.setdefault(task["child_command_id"], now)
        status = batch["overall_status"]
    elif kind == "BATCH_TASK_UPDATE":
        status = event["overall_status"]
    else:
        if kind == "CHILD_TASK_UPDATE" and event["status"] in TERMINAL_CHILD:
            feed.child_final_at.setdefault(event["child_command_id"], now)
        status = None
    if on_event is not None:
        on_event(event, now)
    if status is not None:
        feed.status = status
        if status in FINAL_BATCH:
            feed.final_at = now


@dataclass
class BatchRun:
    """One timed batch: POST → final status as a feed subscriber saw it."""

    batch_id: str
    status: str
    post_s: float  # POST round trip
    final_s: float  # POST sent → final status received on the feed
    child_latency_s: list[float]  # POST sent → each child's agent_completed_at (server clock)
    view: dict[str, Any]


async def timed_batch(
    api: Api,
    command: str,
    vps_ids: Sequence[int],
    *,
    timeout: float,
    fetch_view: bool = True,
    poll: float | None = None,
    poll_list: bool = False,
) -> BatchRun:
    """POST a batch, wait until final, then GET it for per-child completion times.

    By default a WebSocket subscriber of the batch's feed sees it become final (what a UI
    user sees). With ``poll`` (seconds) nobody subscribes: the batch is polled with GET at that
    interval and POST → final is taken from its ``completed_at`` (server clock, same machine),
    so the figure does not include the feed's work, e.g. ``NEW_LOG_OUTPUT`` events for every
    output chunk. ``poll_list`` polls the cheap summary (``GET /api/batch_commands?limit=1``,
    newest first) instead of the whole batch, for batches with thousands of tasks.
    """
    wall0 = time.time()
    start = time.perf_counter()
    batch_id = await api.post_batch(command, vps_ids)
    post_s = time.perf_counter() - start
    view: dict[str, Any] = {}
    if poll is None:
        feed = await watch_batch(api.server, batch_id, timeout=timeout)
        assert feed.final_at is not None
        assert feed.status is not None
        final_s, status = feed.final_at - start, feed.status
    else:
        with trio.move_on_after(timeout):
            while True:
                if poll_list:
                    page = await api.request("GET", "/api/batch_commands?limit=1")
                    view = page["items"][0] if page["items"] else {}
                    if view.get("batch_command_id") != batch_id:
                        view = await api.get_batch(batch_id)
                else:
                    view = await api.get_batch(batch_id)
                if view["overall_status"] in FINAL_BATCH:
                    break
                await trio.sleep(poll)
        if view["overall_status"] not in FINAL_BATCH:
            raise BenchError(f"batch {batch_id} not final within {timeout} s")
        completed = parse_iso(view.get("completed_at"))
        if completed is None and poll_list:
            # The list shows a live batch's status but its stored (not yet written back)
            # completed_at: read the batch itself (after the fact, so it costs the figure
            # nothing).
            view = await api.get_batch(batch_id)
            completed = parse_iso(view.get("completed_at"))
        if completed is None:
            raise BenchError(f"batch {batch_id} is final without completed_at")
        final_s, status = completed - wall0, view["overall_status"]
    latencies: list[float] = []
    if fetch_view:
        view = view if "tasks" in view else await api.get_batch(batch_id)
        for task in view["tasks"]:
            done = parse_iso(task.get("agent_completed_at"))
            if done is not None:
                latencies.append(done - wall0)
    return BatchRun(batch_id, status, post_s, final_s, latencies, view)


def child_statuses(view: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in view.get("tasks", []):
        counts[task["status"]] = counts.get(task["status"], 0) + 1
    return counts
