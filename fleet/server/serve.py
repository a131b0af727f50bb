"""Assembles the server: store, registry, supervisor, gRPC island and HTTP app in one trio run.

Task tree::

    serve(config)                          root; started(Endpoints)
     ├─ open_db_thread                     the one DB thread (Pony)
     ├─ WriteBack.run                      batched store writes
     ├─ Supervisor.run                     the batch nursery: one nursery per batch
     ├─ cluster.ClusterNode.run            with --cluster: lease, adoption, cross-node routing
     ├─ rpc.serve                          the asyncio island (grpclib) for agent streams
     ├─ hypercorn.trio.serve               Quart-Trio: REST, feed, UI
     ├─ metrics.serve_metrics              with --metrics: Prometheus endpoint (Hypercorn)
     └─ demo.run_agents                    with --demo N: N real agents in this process
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from fleet import core

from . import rpc
from .agents import AgentRegistry, Credentials, hash_secret, new_secret
from .batchrun import RunDeps
from .clock import WallClock
from .cluster import ClusterFeed, ClusterHooks, ClusterNode
from .config import ServerConfig
from .datadir import DataDirLock, lock_data_dir
from .dbthread import DbThread, open_db_thread
from .handshakes import RefusedHandshakes
from .health import StoreHealth, watch_store_file
from .http.app import create_app
from .http.common import Services
from .http.feed import FeedHub
from .logins import LoginThrottle
from .metrics import LiveState, ServerMetrics, serve_metrics
from .passwords import Passwords
from .store import Store
from .supervisor import Supervisor
from .writeback import WriteBack

__all__ = ["Endpoints", "serve"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """Where a started server listens, and how to log in."""

    http_url: str
    grpc_address: str
    grpc_port: int
    token: str | None
    services: Services
    #: ``http://HOST:PORT/metrics`` when ``--metrics`` is on.
    metrics_url: str | None = None

    @property
    def login_url(self) -> str:
        return f"{self.http_url}/?token={self.token}" if self.token else f"{self.http_url}/"


async def _admin_token(db: DbThread, data_dir: Path) -> str | None:
    """Create the admin token at first start; return the plaintext when it is on disk.

    The token belongs to the built-in ``admin`` user (made here when the store has no user; a
    store from before teams gets it too, owning its existing tokens): it acts as that user,
    through a bearer header or the login URL (which exchanges it for a session).
    """
    path = data_dir / "admin.token"
    admin = await db.run(Store.ensure_admin)
    if not await db.run(Store.has_tokens):
        token = new_secret()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        await db.run(Store.add_token, "admin", hash_secret(token), user_id=admin.id, builtin=True)
        logger.info("created the admin API token in %s", path)
        return token
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _resume(db: DbThread, supervisor: Supervisor) -> None:
    """Batches a previous run left unfinished carry on: their agents get the reconnect grace."""
    for record in await db.run(Store.unfinished_batches):
        logger.info("batch=%s resumed after a restart", record.id)
        supervisor.submit(record, resumed=True)


async def serve(
    config: ServerConfig,
    *,
    lock: DataDirLock | None = None,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the whole server until cancelled. Must run inside ``trio_asyncio.open_loop()``.

    Supports ``nursery.start``: ``started()`` gets the ``Endpoints`` once both listeners
    accept connections (and, with ``config.demo``, the demo agents are registered).
    Cancelling it stops accepting, ends agent streams with UNAVAILABLE, flushes pending
    writes and returns; running commands on agents are not terminated (a restarted server
    resumes their batches).

    The data directory is locked for the server's life (``fleet.server.datadir``): pass the
    ``lock`` already taken (``fleet-server`` takes it first, to refuse in one line), or serve
    takes it and raises ``DataDirError`` if it cannot.
    """
    if lock is None:
        lock = lock_data_dir(config.data_dir)
        try:
            await _serve(config, lock, task_status)
        finally:
            lock.release()
    else:
        await _serve(config, lock, task_status)


async def _serve(
    config: ServerConfig, lock: DataDirLock, task_status: trio.TaskStatus[Endpoints]
) -> None:
    data_dir = config.data_dir
    await trio.Path(data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    for warning in config.public_listeners() if not config.tls else []:
        logger.warning("listening %s without TLS: use --tls-cert/--tls-key", warning)
    if config.public_metrics:
        logger.warning(
            "metrics on %s: anyone who can reach it reads them (no authentication, no TLS)",
            config.metrics,
        )
    metrics = ServerMetrics()
    async with open_db_thread(config.db_url, data_dir) as db:
        token = await _admin_token(db, data_dir)
        credentials = Credentials(await db.run(Store.vps_secret_hashes))
        cluster = ClusterNode(config) if config.cluster else None
        registry = cluster.registry if cluster is not None else AgentRegistry()
        hub = FeedHub()
        health = StoreHealth()
        writeback = WriteBack(
            db, interval_s=config.flush_interval_s, health=health, metrics=metrics
        )
        deps = RunDeps(
            agents=registry,
            recorder=writeback,
            feed=hub if cluster is None else ClusterFeed(hub, cluster.bus, writeback),
            clock=WallClock(),
            timers=core.BatchTimers(
                reconnect_grace_s=config.reconnect_grace_s,
                result_slack_s=config.result_slack_s,
                terminate_confirm_s=config.terminate_confirm_s,
            ),
            output_cap=config.output_cap_bytes,
            summary_lines=config.summary_lines,
            metrics=metrics,
            chunks=None if cluster is None else cluster.chunk,
        )
        supervisor = Supervisor(deps)
        refusals = RefusedHandshakes()
        metrics.watch(
            LiveState(
                agents_online=registry.online_count,
                batches=lambda: (run.batch for run in supervisor.running()),
                feed_subscribers=hub.subscriber_count,
                store_queued=lambda: db.statistics().queued,
                handshakes_refused=lambda: (
                    refusals.refused_total + refusals.limited,
                    refusals.limited,
                ),
            )
        )
        services = Services(
            config=config,
            db=db,
            credentials=credentials,
            registry=registry,
            supervisor=supervisor,
            hub=hub,
            passwords=Passwords(
                time_cost=config.argon2_time_cost, memory_kib=config.argon2_memory_kib
            ),
            throttle=LoginThrottle(clock=trio.current_time),
            health=health,
            cluster=cluster,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(writeback.run)
                if config.db_url is None:
                    nursery.start_soon(watch_store_file, data_dir / "fleet.db", health)
                await nursery.start(supervisor.run)
                hooks: rpc.AgentHooks = supervisor
                if cluster is None:
                    await _resume(db, supervisor)
                else:
                    cluster.attach(supervisor, db, hub, writeback, credentials)
                    await nursery.start(cluster.run)
                    hooks = ClusterHooks(supervisor, cluster)
                grpc_port = await nursery.start(
                    functools.partial(rpc.serve, refusals=refusals),
                    config,
                    credentials,
                    registry,
                    hooks,
                )
                grpc_host, _ = config.grpc_endpoint
                services.grpc_address = f"{_url_host(grpc_host)}:{grpc_port}"
                http_url = await nursery.start(_serve_http, config, services)
                metrics_url = None
                if (endpoint := config.metrics_endpoint) is not None:
                    metrics_url = await nursery.start(serve_metrics, metrics, *endpoint)
                if config.demo:
                    from . import demo

                    await nursery.start(demo.run_agents, config, services)
                lock.describe(f"pid {os.getpid()}, http {http_url}, grpc {services.grpc_address}")
                task_status.started(
                    Endpoints(
                        http_url=http_url,
                        grpc_address=services.grpc_address,
                        grpc_port=grpc_port,
                        token=token,
                        services=services,
                        metrics_url=metrics_url,
                    )
                )
        finally:
            if cluster is not None:  # stopped (its last changes flushed): adopt it now
                await cluster.release()


async def _serve_http(
    config: ServerConfig,
    services: Services,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    host, port = config.http_endpoint
    hconfig = HypercornConfig()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.graceful_timeout = config.shutdown_grace_s
    hconfig.websocket_ping_interval = 20
    if config.tls_cert is not None and config.tls_key is not None:
        hconfig.certfile = str(config.tls_cert)
        hconfig.keyfile = str(config.tls_key)
    app = create_app(services)
    async with trio.open_nursery() as nursery:
        bound: list[str] = await nursery.start(hypercorn_serve, app, hconfig)
        url = bound[0].replace("0.0.0.0", "127.0.0.1")
        task_status.started(url.rstrip("/"))
