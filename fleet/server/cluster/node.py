"""One node of a cluster: presence, routing across nodes, its lease, and adoption.

Who owns what:

* A batch belongs to the node that created it (``batch_command_task.owner_node``): that node's
  ``Supervisor`` runs it exactly as a single server does (one nursery, one scope per child).
* An agent's stream belongs to the node it connected to; that node writes its presence row.
* ``ClusterRegistry.send`` is the one seam between them: the local stream if the agent is here,
  else a ``fleet_dispatch`` row for the node holding it. Reports travel back the same way to the
  batch's owner (``ClusterHooks.message``), and a user's terminate to the owner likewise.

A node renews its lease every quarter lease. When a node's lease has lapsed, the first live
node to lock its row adopts its unfinished batches and resumes them as after a restart
(``BatchRun(resumed=True)``: every live child waits for its agent and reconciles with the
agent's open commands, so nothing is stranded and nothing runs twice). A node that finds its own
row gone or taken stops: it was declared dead and its batches run elsewhere now.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from dataclasses import replace

import betterproto2
import trio

from fleet.core import STREAMS
from fleet.proto import agent_service as pb
from fleet.server.agents import (
    AgentInfo,
    AgentSession,
    Credentials,
    PeerViolation,
    SessionClosed,
    result_ack_message,
)
from fleet.server.batchrun import Publisher, Recorder
from fleet.server.config import ServerConfig
from fleet.server.dbthread import DbThread
from fleet.server.store import BatchRecord, Store
from fleet.server.store.schema import bind_args
from fleet.server.supervisor import VPS_TOPIC, Supervisor

from . import sql
from .bus import Bus, ClusterError, Inbound, Report
from .routing import REPORTS, ClusterFeed, ClusterRegistry, Remote, RoutedSession, report_only

__all__ = ["ClusterError", "ClusterFeed", "ClusterHooks", "ClusterNode", "ClusterRegistry"]

logger = logging.getLogger(__name__)


#: Why an agent's stream is closed when a batch of its moved to this node.
RESYNC = "its batches moved to another server of the cluster: reconnect to reconcile"
#: How often the agents' credentials are read again (VPSes created or changed elsewhere).
CREDENTIALS_S = 1.0
#: How long a stopping node tries to give up its lease.
RELEASE_S = 5.0


class ClusterNode:
    """This server's membership of the cluster. ``attach`` it, then ``nursery.start(run)``."""

    def __init__(self, config: ServerConfig, *, bus: Bus | None = None) -> None:
        port = config.grpc_endpoint[1]
        self.name = config.node_name or f"{socket.gethostname()}:{port or os.getpid()}"
        self.incarnation = secrets.token_hex(8)
        self.lease_s = config.node_lease_s
        self._config = config
        if bus is None:
            connect = bind_args(config.db_url, config.data_dir)
            connect.pop("provider")
            bus = Bus(connect, self.name)
        self.bus = bus
        self.registry = ClusterRegistry(self.bus)
        self._local_open: dict[int, frozenset[str] | None] = {}
        self._inbox: list[Inbound] = []
        self._arrived = trio.Event()
        self._adopting: trio.Event | None = None
        self._supervisor: Supervisor | None = None
        self._db: DbThread | None = None
        self._hub: Publisher | None = None
        self._recorder: Recorder | None = None
        self._credentials: Credentials | None = None
        self._joined = False  # registered: there is a lease to give up

    def attach(
        self,
        supervisor: Supervisor,
        db: DbThread,
        hub: Publisher,
        recorder: Recorder,
        credentials: Credentials,
    ) -> None:
        self._credentials = credentials
        self._supervisor = supervisor
        self._db = db
        self._hub = hub
        self._recorder = recorder

    def chunk(self, child_id: str, stream: str, offset: int, data: bytes) -> None:
        """Store output bytes (``RunDeps.chunks``) so any node serves the download."""
        self.bus.post_chunk(child_id, stream, offset, data)

    # --- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join: connect, register, learn presence, resume this node's batches; then renew the
        lease, adopt dead nodes' batches and handle what arrives, until cancelled.

        Supports ``nursery.start``: ``started()`` once this node's batches are resumed. Raises
        ``ClusterError`` (``LeaseLost``) when the node must stop: its lease was taken over.
        """
        assert self._supervisor is not None, "ClusterNode.attach first"
        await self.bus.open(self._arrive)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.bus.run)
            config = self._config
            await self.bus.call(
                sql.register, self.name, self.incarnation, self.lease_s, config.http, config.grpc
            )
            self._joined = True
            self.bus.keep_lease(self.incarnation, self.lease_s)
            for presence in await self.bus.call(sql.live_presence):
                if presence.node is not None and presence.node != self.name:
                    self.registry.remote[presence.vps_id] = Remote(
                        presence.node, presence.since, presence.open_ids
                    )
            for batch_id in await self.bus.call(sql.claim_own, self.name):
                logger.info("batch=%s resumed after a restart", batch_id)
                await self._resume(batch_id)
            nursery.start_soon(self._handle_inbound)
            nursery.start_soon(self._lease)
            nursery.start_soon(self._follow_credentials)
            logger.info("node=%s joined the cluster (lease %s s)", self.name, self.lease_s)
            task_status.started()

    async def release(self) -> None:
        """After the node stopped (its last changes committed), give up its lease, so that a
        live node adopts its unfinished batches at once rather than once the lease lapses.
        Best effort and bounded: on failure the lease simply lapses, as after a crash."""
        if not self._joined:
            return
        with trio.move_on_after(RELEASE_S, shield=True) as bounded:
            try:
                released = await self.bus.call_once(sql.release, self.name, self.incarnation)
            except Exception as exc:  # the database may be why the node stops
                logger.warning(
                    "node=%s could not give up its lease (%s): it lapses in %s s",
                    self.name,
                    type(exc).__name__,
                    self.lease_s,
                )
                return
        if bounded.cancelled_caught:
            logger.warning("node=%s could not give up its lease in %s s", self.name, RELEASE_S)
        elif released:
            logger.info("node=%s gave up its lease: a live node adopts its batches", self.name)

    async def _lease(self) -> None:
        """Adopt the batches of nodes whose lease lapsed (the bus renews this node's own)."""
        while True:
            await trio.sleep(self.lease_s / 4)
            await self._adopt()
            await self.bus.call(sql.retarget)

    async def _follow_credentials(self) -> None:
        """Agents may connect here with VPSes and secrets another node created or changed."""
        assert self._credentials is not None
        while True:
            await trio.sleep(CREDENTIALS_S)
            changed = self._credentials.reset(await self.bus.call(sql.vps_secrets))
            for vps_id in changed:
                self.registry.close(vps_id, "its secret changed or the VPS was deleted")

    async def _adopt(self) -> None:
        self._adopting = trio.Event()
        try:
            dead, batches = await self.bus.call(sql.adopt, self.name)
            for node in dead:
                logger.warning("node=%s lease lapsed: its batches are adopted here", node)
            for batch_id in batches:
                logger.info("batch=%s adopted", batch_id)
                await self._resume(batch_id)
        finally:
            self._adopting.set()
            self._adopting = None

    async def _resume(self, batch_id: str) -> None:
        """Run a stored batch here, resumed, and have its agents reconcile with it."""
        assert self._db is not None
        assert self._supervisor is not None
        record = await self._local_logs(await self._db.run(Store.get_batch, batch_id))
        run = self._supervisor.submit(record, resumed=True)
        await run.started.wait()
        # What agents said in their handshakes may predate commands the previous owner sent
        # since: each connected agent of a live child reconnects, and its fresh handshake
        # tells exactly which commands it holds (nothing stranded, nothing sent twice).
        for vps_id in {c.vps_id for c in record.children if not c.status.is_terminal}:
            if self.registry.get(vps_id) is not None:
                self.registry.close(vps_id, RESYNC)
            elif (remote := self.registry.remote.get(vps_id)) is not None:
                self.bus.post_message(remote.node, "resync", vps_id, None, b"")

    async def _local_logs(self, record: BatchRecord) -> BatchRecord:
        """Write the batch's logs as the database has them under this node's data directory
        (the previous owner's files may be on another machine); the children point there."""
        stored = await self.bus.call(sql.output_many, [c.id for c in record.children])
        base = self._config.data_dir / "logs" / record.id

        def write() -> None:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            for child in record.children:
                for stream in STREAMS:
                    path = base / f"{child.id}.{stream}"
                    data = stored.get((child.id, stream))
                    if data is None:
                        path.unlink(missing_ok=True)  # a stale file of an earlier run here
                        continue
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)

        await trio.to_thread.run_sync(write)
        children = tuple(
            replace(
                c,
                stdout_log_path=str(base / f"{c.id}.stdout"),
                stderr_log_path=str(base / f"{c.id}.stderr"),
            )
            for c in record.children
        )
        return replace(record, children=children)

    # --- what arrives from other nodes -------------------------------------------------------

    def _arrive(self, inbound: Inbound) -> None:
        self._inbox.append(inbound)
        self._arrived.set()

    async def _handle_inbound(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            while self._adopting is not None:  # reports of batches being adopted wait
                await self._adopting.wait()
            inbox, self._inbox = self._inbox, []
            for inbound in inbox:
                for step in (self._presence, self._dispatch, self._unrouted, self._feed):
                    try:
                        step(inbound)
                    except Exception:  # the boundary with other nodes: log, keep serving
                        logger.exception("node=%s could not apply what arrived", self.name)

    def _presence(self, inbound: Inbound) -> None:
        supervisor = self._supervisor
        assert supervisor is not None
        for presence in inbound.presence:
            vps_id = presence.vps_id
            if presence.node is None or presence.node == self.name:
                gone = self.registry.remote.pop(vps_id, None)
                if gone is not None and self.registry.get(vps_id) is None:
                    for run in supervisor.running():
                        run.agent_lost(vps_id)
                    self._publish_vps(vps_id, online=False)
                continue
            remote = Remote(presence.node, presence.since, presence.open_ids)
            if self.registry.remote.get(vps_id) == remote:
                continue
            self.registry.remote[vps_id] = remote
            if self.registry.get(vps_id) is not None:
                # It connected to another node since: this stream is stale (the newest wins).
                self.registry.close(vps_id, "the agent connected to another server")
                continue
            for run in supervisor.running():
                run.agent_connected(vps_id, presence.open_ids)
            self._publish_vps(vps_id, online=True)

    def _dispatch(self, inbound: Inbound) -> None:
        supervisor = self._supervisor
        assert supervisor is not None
        assert self._recorder is not None
        done: list[int] = []
        for row in inbound.dispatch:
            if row.kind == "agent":
                session = self.registry.get(row.vps_id)
                if session is not None:
                    try:
                        session.send(pb.MessageToAgent.FromString(row.payload))
                    except SessionClosed:
                        pass  # the owner hears it is lost, and reconciles when it is back
            elif row.kind == "report":
                self._report(row.vps_id, pb.MessageToServer.FromString(row.payload))
            elif row.kind == "resync":
                self.registry.close(row.vps_id, RESYNC)
            elif row.kind == "terminate":
                request = json.loads(row.payload)
                run = supervisor.get(request["batch_id"])
                child_id = request.get("child_id")
                if run is not None and (child_id is None or child_id in run.batch.children):
                    run.terminate(child_id)
            done.append(row.id)
        if done:
            # Reports are forgotten once what they changed is committed: a node that dies
            # before leaves them to the node that adopts its batches.
            self._recorder.after_flush(lambda: self.bus.post_handled(done))

    def _unrouted(self, inbound: Inbound) -> None:
        for report in inbound.unrouted:
            self._report(report.vps_id, pb.MessageToServer.FromString(report.payload))

    def _report(self, vps_id: int, message: pb.MessageToServer) -> None:
        supervisor = self._supervisor
        assert supervisor is not None
        _, payload = betterproto2.which_one_of(message, "payload")
        if not isinstance(payload, REPORTS):
            return
        session: AgentSession = self.registry.get(vps_id) or RoutedSession(vps_id, self.registry)
        if supervisor.routes(payload.command_id):
            try:
                supervisor.message(session, message)
            except PeerViolation as exc:
                logger.warning("vps=%s report dropped: %s", vps_id, exc)
        elif isinstance(payload, pb.BatchCommandResult):
            # Its batch ended long ago (or never was): the agent may forget it.
            self.registry.send(vps_id, result_ack_message(payload.command_id))

    def _feed(self, inbound: Inbound) -> None:
        supervisor, hub = self._supervisor, self._hub
        assert supervisor is not None
        assert hub is not None
        for batch_id, event in inbound.feed:
            if supervisor.get(batch_id) is None and hub.has_subscribers(batch_id):
                hub.publish(batch_id, event)

    def _publish_vps(self, vps_id: int, *, online: bool) -> None:
        if self._hub is not None:
            self._hub.publish(
                VPS_TOPIC, {"type": "VPS_UPDATE", "vps": {"id": vps_id, "online": online}}
            )

    # --- for the API -------------------------------------------------------------------------

    async def output(self, child_id: str, stream: str) -> bytes:
        """A child's stream as the cluster stored it."""
        return await self.bus.call(sql.output, child_id, stream)

    async def request_terminate(self, batch_id: str, child_id: str | None) -> None:
        """Ask the node running the batch to terminate it (or one child)."""
        await self.bus.call(sql.request_terminate, self.name, batch_id, child_id)


class ClusterHooks:
    """The agent streams held here (``rpc.AgentHooks``): the supervisor's hooks, plus presence
    for the cluster and reports forwarded to batches other nodes run."""

    def __init__(self, supervisor: Supervisor, node: ClusterNode) -> None:
        self._supervisor = supervisor
        self._node = node

    def connected(self, session: AgentSession, info: AgentInfo) -> None:
        node = self._node
        node.registry.remote.pop(session.vps_id, None)
        node._local_open[session.vps_id] = info.open_command_ids
        node.bus.post_presence(session.vps_id, info.open_command_ids, True)
        self._supervisor.connected(session, info)

    def disconnected(self, session: AgentSession) -> None:
        node = self._node
        self._supervisor.disconnected(session)
        vps_id = session.vps_id
        if node.registry.get(vps_id) is not None:
            return  # a newer stream here replaced it
        node._local_open.pop(vps_id, None)
        node.bus.post_presence(vps_id, None, False)
        remote = node.registry.remote.get(vps_id)
        if remote is not None:  # it is connected to another node already
            for run in self._supervisor.running():
                run.agent_connected(vps_id, remote.open_ids)

    def message(self, session: AgentSession, message: pb.MessageToServer) -> None:
        _, payload = betterproto2.which_one_of(message, "payload")
        if isinstance(payload, REPORTS) and not self._supervisor.routes(payload.command_id):
            self._node.bus.post_report(
                Report(
                    session.vps_id,
                    payload.command_id,
                    bytes(report_only(session.vps_id, payload)),
                    isinstance(payload, pb.BatchCommandResult),
                )
            )
            return
        self._supervisor.message(session, message)
