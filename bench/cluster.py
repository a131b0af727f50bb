"""``cluster``: three ``fleet-server --cluster`` processes on one PostgreSQL database.

    python -m bench cluster [--quick] [--agents N]      (N agent streams per node)

Needs PostgreSQL (``FLEET_TEST_POSTGRES_DSN``, else ``postgres://postgres@127.0.0.1:5432/test``);
a database of its own is created and dropped. Measured, in one run:

1. **spread**: 3 nodes × N protocol-level agent streams (``bench.scale_gen``, one generator per
   node), a 3·N-target ``true`` batch created on node a: POST → final on a's feed;
2. **one node**: the same 3·N streams on a single server (SQLite, the default), the same batch;
3. **cross-node feed**: real agents (``bench.agents_host``) on node b print a timestamped line
   every 50 ms; a subscriber of the batch's feed on node c takes each ``NEW_LOG_OUTPUT`` line's
   delay from the agent's print (end to end: agent coalescing, b, PostgreSQL, c);
4. **failover**: real agents spread over the nodes (each with the three nodes as its server
   list) run a ``sleep`` batch created on node b; b is SIGKILLed while every child executes;
   measured is SIGKILL → the batch's last child settled (polled on node a every 0.1 s), with
   ``--node-lease 5``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

from fleet.cli.feedsocket import open_feed

from ._fleet import FINAL_BATCH, Api, Server, fleet_server, timed_batch
from ._processes import PY, split, temp_dir, workers
from ._report import BenchError, fmt, log, percentile, table

DEFAULT_DSN = "postgres://postgres@127.0.0.1:5432/test"
LEASE_S = 5.0
PRINT_EVERY_MS = 50  # each agent of the feed measurement prints a line this often
NODES = ("a", "b", "c")


@contextmanager
def _database(dsn: str) -> Iterator[str]:
    import psycopg2  # type: ignore[import-untyped,unused-ignore]

    name = f"fleet_bench_cluster_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise BenchError(f"cluster: PostgreSQL at {dsn} does not answer: {exc}") from None
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(dsn)._replace(path=f"/{name}", query=""))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@asynccontextmanager
async def _cluster(tmp: Path, db: str) -> AsyncIterator[list[Server]]:
    """Nodes a, b, c (a first: it creates the schema and the admin token)."""
    servers: list[Server] = []
    for name in NODES:
        (tmp / name).mkdir(parents=True)
    async with fleet_server(tmp / "a", *_node_args(db, "a")) as a:
        servers.append(a)
        token = (a.data_dir / "admin.token").read_text()
        for name in NODES[1:]:
            data = tmp / name / "data"
            data.mkdir(mode=0o700)
            fd = os.open(data / "admin.token", os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)
        try:
            async with (
                fleet_server(tmp / "b", *_node_args(db, "b")) as b,
                fleet_server(tmp / "c", *_node_args(db, "c")) as c,
            ):
                servers += [b, c]
                yield servers
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="fleet-bench-cluster-logs-"))
            for name in NODES:
                if (tmp / name / "server.log").exists():
                    shutil.copy(tmp / name / "server.log", kept / f"{name}.log")
            log(f"cluster: the nodes' logs are kept in {kept}")
            raise


def _node_args(db: str, name: str) -> list[str]:
    return ["--db", db, "--cluster", "--node-name", name, "--node-lease", str(LEASE_S)]


def _generators(creds: list[tuple[int, str]], addresses: list[str], tmp: Path) -> list[list[str]]:
    argvs = []
    for k, (part, address) in enumerate(zip(split(creds, len(addresses)), addresses, strict=True)):
        path = tmp / f"gen-{k}.json"
        path.write_text(json.dumps(part))
        argvs.append([PY, "-m", "bench.scale_gen", "--server", address, "--agents", str(path)])
    return argvs


def _agent_hosts(creds: list[tuple[int, str]], addresses: list[str], tmp: Path) -> list[list[str]]:
    """One agents_host per node; each host's agents prefer that node, then the others."""
    argvs = []
    (tmp / "agent-state").mkdir(mode=0o700, exist_ok=True)
    for k, part in enumerate(split(creds, len(addresses))):
        order = addresses[k:] + addresses[:k]
        path = tmp / f"agents-{k}.json"
        path.write_text(json.dumps(part))
        argv = [PY, "-m", "bench.agents_host", "--server", ",".join(order), "--agents", str(path)]
        argvs.append([*argv, "--state-root", str(tmp / "agent-state")])
    return argvs


async def _spread(tmp: Path, db: str, n: int) -> dict[str, Any]:
    async with _cluster(tmp, db) as servers, Api(servers[0], connections=64) as api:
        log(f"cluster: registering {3 * n} VPSes")
        creds = await api.create_vps_many(3 * n, concurrency=64)
        ids = [vps_id for vps_id, _ in creds]
        addresses = [s.grpc_address for s in servers]
        async with workers(_generators(creds, addresses, tmp), tmp, "gen") as group:
            connect_s = await group.go(timeout=900)
            online = 3 * n - group.failed
            if group.failed:  # measured anyway: their children end AGENT_UNREACHABLE at once
                log(f"cluster: {group.failed} generator streams did not connect")
            await api.wait_online(online, timeout=120)  # node a sees every node's agents
            log(f"cluster: {3 * n} streams on 3 nodes in {connect_s:.1f} s; batch on node a")
            await timed_batch(api, "true", ids, timeout=600, fetch_view=False)  # warm-up
            await trio.sleep(1.0)
            run = await timed_batch(api, "true", ids, timeout=600, fetch_view=False)
    log(f"cluster: {3 * n}-target batch across 3 nodes final in {run.final_s:.2f} s")
    return {
        "connect_s": connect_s,
        "final_s": run.final_s,
        "status": run.status,
        "not_connected": group.failed,
    }


async def _single(tmp: Path, n: int) -> dict[str, Any]:
    await trio.Path(tmp).mkdir(parents=True, exist_ok=True)
    async with fleet_server(tmp) as server, Api(server, connections=64) as api:
        creds = await api.create_vps_many(3 * n, concurrency=64)
        ids = [vps_id for vps_id, _ in creds]
        async with workers(_generators(creds, [server.grpc_address] * 3, tmp), tmp, "gen") as g:
            await g.go(timeout=900)
            await timed_batch(api, "true", ids, timeout=600, fetch_view=False)  # warm-up
            await trio.sleep(1.0)
            run = await timed_batch(api, "true", ids, timeout=600, fetch_view=False)
    log(f"cluster: the same batch on one node final in {run.final_s:.2f} s")
    return {"final_s": run.final_s, "status": run.status}


async def _feed_and_failover(tmp: Path, db: str, agents: int, *, failover: bool) -> dict[str, Any]:
    async with _cluster(tmp, db) as servers:
        a, b, c = servers
        async with Api(a) as api_a, Api(b) as api_b:
            creds = await api_a.create_vps_many(agents)
            ids = [vps_id for vps_id, _ in creds]
            addresses = [s.grpc_address for s in servers]
            async with workers(_agent_hosts(creds, addresses, tmp), tmp, "agents") as group:
                await group.go(timeout=300)
                await api_a.wait_online(agents, timeout=120)
                delays, owner_delays = await _cross_node_feed(api_b, b, c, ids)
                result: dict[str, Any] = {
                    "agents": agents,
                    "lines_per_s": agents * 1000 // PRINT_EVERY_MS,
                    "feed_p50_ms": percentile(delays, 50) * 1000 if delays else None,
                    "feed_p99_ms": percentile(delays, 99) * 1000 if delays else None,
                    "feed_lines": len(delays),
                    "owner_feed_p50_ms": percentile(owner_delays, 50) * 1000
                    if owner_delays
                    else None,
                    "owner_feed_p99_ms": percentile(owner_delays, 99) * 1000
                    if owner_delays
                    else None,
                }
                if failover:
                    settle_s, statuses = await _failover(api_a, api_b, b, ids)
                    result.update(failover_s=settle_s, failover_statuses=statuses)
    return result


async def _cross_node_feed(
    api_b: Api, b: Server, c: Server, ids: list[int]
) -> tuple[list[float], list[float]]:
    """Lines printed by agents of a batch node b runs, as feed subscribers on c (another node)
    and on b (the owner, for reference) see them."""
    gate = Path(f"/tmp/fleet-bench-gate-{uuid.uuid4().hex}")
    # One Python process per agent prints the lines (a shell loop forking `date` and `sleep`
    # 40 times a second per agent measured this machine's fork rate, not the feed).
    command = (
        f"exec {PY} -c '\n"
        "import os, sys, time\n"
        f'while not os.path.exists("{gate}"): time.sleep(0.02)\n'
        "for i in range(40):\n"
        "    sys.stdout.write(repr(time.time()) + chr(10)); sys.stdout.flush()\n"
        f"    time.sleep({PRINT_EVERY_MS / 1000})\n"
        "'"
    )
    batch_id = await api_b.post_batch(command, ids)
    delays: dict[str, list[float]] = {"b": [], "c": []}
    subscribed = trio.Semaphore(0)

    async def watch(server: Server, out: list[float]) -> None:
        url = f"{server.ws_url}/ws/batch_commands/{batch_id}"
        headers = [(b"Authorization", f"Bearer {server.token}".encode())]
        async with open_feed(url, None, extra_headers=headers) as ws:
            json.loads(await ws.get_message())
            subscribed.release()
            while True:
                event = json.loads(await ws.get_message())
                now = time.time()
                if event["type"] == "NEW_LOG_OUTPUT":
                    for line in event["data"].split():
                        try:
                            out.append(now - float(line))
                        except ValueError:
                            continue
                elif (
                    event["type"] == "BATCH_TASK_UPDATE" and event["overall_status"] in FINAL_BATCH
                ):
                    return

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, c, delays["c"])
                nursery.start_soon(watch, b, delays["b"])
                for _ in range(2):
                    await subscribed.acquire()
                await trio.Path(gate).touch()  # both subscribed: let the output come
    finally:
        with trio.CancelScope(shield=True):
            await trio.Path(gate).unlink(missing_ok=True)
    log(
        f"cluster: {len(delays['c'])} lines seen on node c, p99 "
        f"{percentile(delays['c'], 99) * 1000:.0f} ms (on b, the owner: "
        f"{percentile(delays['b'], 99) * 1000:.0f} ms)"
    )
    return delays["c"], delays["b"]


async def _failover(
    api_a: Api, api_b: Api, b: Server, ids: list[int]
) -> tuple[float, dict[str, int]]:
    """SIGKILL node b while its batch executes; seconds until the batch's last child settled."""
    batch_id = await api_b.post_batch("sleep 4; echo done", ids)
    with trio.fail_after(120):
        while True:
            view = await api_a.get_batch(batch_id)
            if all(t["status"] == "EXECUTING" for t in view["tasks"]):
                break
            await trio.sleep(0.1)
    b.process.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    log("cluster: node b SIGKILLed mid-batch")
    with trio.fail_after(180):
        while True:
            view = await api_a.get_batch(batch_id)
            if view["overall_status"] in FINAL_BATCH:
                break
            await trio.sleep(0.1)
    settle_s = time.perf_counter() - killed
    statuses: dict[str, int] = {}
    for task in view["tasks"]:
        key = task["status"]
        if task["error_message"]:
            key += f" ({task['error_message'][:80]})"
        statuses[key] = statuses.get(key, 0) + 1
    log(f"cluster: node b's batch settled {settle_s:.2f} s after SIGKILL: {statuses}")
    return settle_s, statuses


async def run(
    quick: bool = False, runs: int | None = None, agents: int | None = None
) -> dict[str, Any]:
    n = agents or (200 if quick else 1000)
    feed_loads = (30,) if quick else (30, 60)  # real agents printing, 20 lines/s each
    dsn = os.environ.get("FLEET_TEST_POSTGRES_DSN") or DEFAULT_DSN
    result: dict[str, Any] = {"benchmark": "cluster", "agents_per_node": n, "lease_s": LEASE_S}
    with _database(dsn) as db:
        async with temp_dir("fleet-bench-cluster-") as tmp:
            result["spread"] = await _spread(tmp / "spread", db, n)
    async with temp_dir("fleet-bench-cluster-one-") as tmp:
        result["one_node"] = await _single(tmp, n)
    result["feed"] = []
    for k, load in enumerate(feed_loads):
        last = k == len(feed_loads) - 1
        with _database(dsn) as db:
            async with temp_dir("fleet-bench-cluster-feed-") as tmp:
                measured = await _feed_and_failover(tmp, db, load, failover=last)
        if last:
            result["failover_agents"] = load
            result["failover_s"] = measured.pop("failover_s")
            result["failover_statuses"] = measured.pop("failover_statuses")
        result["feed"].append(measured)
    return result


def render(result: dict[str, Any]) -> str:
    n = result["agents_per_node"]
    rows = [
        ["3 nodes, agents spread", f"{3 * n}", fmt(result["spread"]["final_s"], "s")],
        ["1 node (SQLite), all agents", f"{3 * n}", fmt(result["one_node"]["final_s"], "s")],
    ]
    text = table(["'true' batch POST → final", "targets", "final"], rows)
    feed_rows = [
        [
            f"{m['agents']} agents, {m['lines_per_s']:,} lines/s",
            f"{fmt(m['feed_p50_ms'], 'ms')} / {fmt(m['feed_p99_ms'], 'ms')}",
            f"{fmt(m['owner_feed_p50_ms'], 'ms')} / {fmt(m['owner_feed_p99_ms'], 'ms')}",
            f"{m['feed_lines']:,}",
        ]
        for m in result["feed"]
    ]
    text += (
        "\n\nfeed: print → subscriber, end to end (agents spread over a, b, c; batch run by b)\n"
    )
    text += table(
        ["load", "on c (another node) p50/p99", "on b (the owner) p50/p99", "lines"], feed_rows
    )
    text += (
        f"\nfailover: SIGKILL of node b → its batch's last child settled in "
        f"{fmt(result['failover_s'], 's')} ({result['failover_agents']} real agents, "
        f"--node-lease {result['lease_s']:g}): {result['failover_statuses']}"
    )
    return text
