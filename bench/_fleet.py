"""Running Fleet for a benchmark: a ``fleet-server`` process, its REST API and its live feed,
and one timed batch from POST to its final status."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket

from fleet.cli.feedsocket import open_feed
from fleet.core import BatchStatus, ChildStatus

from ._processes import PY, open_log, spawn, split, stop_process, tail
from ._report import BenchError

__all__ = [
    "Api",
    "Feed",
    "Server",
    "TimedBatch",
    "agent_host_argvs",
    "child_statuses",
    "fleet_server",
    "timed_batch",
    "watch_batch",
]

FINAL_BATCH = frozenset(status.value for status in BatchStatus if status.is_terminal)
TERMINAL_CHILD = frozenset(status.value for status in ChildStatus if status.is_terminal)


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
                    async with open_feed(
                        url,
                        None,
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
class TimedBatch:
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
) -> TimedBatch:
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
    return TimedBatch(batch_id, status, post_s, final_s, latencies, view)


def child_statuses(view: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in view.get("tasks", []):
        counts[task["status"]] = counts.get(task["status"], 0) + 1
    return counts
