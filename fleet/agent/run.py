"""The agent's top level: the reconnect loop, one task per command, and shutdown.

Task tree of one :func:`run_agent` call (nothing is shared between calls, so one process can
run many agents at once, e.g. the server's ``--demo N``)::

    run_agent(config, *, stop, task_status)         the agent's nursery
     ├─ _Agent.connect_forever                      reconnect loop, backoff 1 s → 60 s + jitter
     │   └─ open_link(...) → _Agent.session(link)   per connection: handle server messages
     │        └─ _Agent.pump(link)                  outbox → link
     └─ _Agent.run_one(spec, control)  × N          one per accepted command (runner)

Commands belong to the agent's nursery, not to a connection: they keep running while the link
is down, and their output and results wait in the :class:`~fleet.agent.outbox.Outbox`.

With ``config.state_dir`` the agent keeps a :class:`~fleet.agent.journal.Journal` (SPEC §6): a
command is journaled before its process starts, its result before it is sent, and forgotten
once acknowledged. At start, what a previous agent process left is settled first: its running
commands are stopped (``fleet.agent.orphans``) and reported ``FAILURE`` ("the agent restarted
while the command ran"), its unacknowledged results are sent again, and an id it ran is never
run again. Every handshake lists the open commands (``open_command_ids``) and says whether the
list is the whole truth (``open_command_ids_complete``: only with a journal that was intact).

Loggers: ``fleet.agent.run`` (connections, commands), ``fleet.agent.outbox`` (dropped output and
results), ``fleet.agent.link``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Callable

import betterproto2
import trio

from fleet.proto import agent_service as pb

from .backoff import Backoff
from .config import AgentConfig
from .host import describe_host
from .journal import MAX_ID_CHARS, ProcessInfo, StoredResult
from .link import HandshakeRefused, Link, LinkError, check_asyncio_loop, open_link
from .metrics import AgentStats
from .orphans import boot_id, process_info, settle_left_over
from .outbox import Outbox, unix_ms
from .runner import COULD_NOT_START, CommandControl, CommandSpec, run_command
from .statedir import Journal

__all__ = ["Backoff", "run_agent"]

logger = logging.getLogger(__name__)

#: Messages the pump takes from the outbox at a time.
PUMP_BATCH = 16
#: After a graceful stop, how long to wait for the server to acknowledge the last results.
SHUTDOWN_REPORT_S = 3.0


async def run_agent(
    config: AgentConfig,
    *,
    stop: trio.Event | None = None,
    journal: Journal | None = None,
    stats: AgentStats | None = None,
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one agent: keep a link to the server and run the commands it sends.

    Must run inside ``trio_asyncio.open_loop()`` (else RuntimeError). Installs no signal
    handlers and keeps no global state: any number may run concurrently in one process.

    Supports ``await nursery.start(run_agent, config)``: ``started(connected)`` is called after
    the *first connection attempt*, with True once the server accepted the handshake, or False
    if that attempt failed or was refused (after at most ``config.connect_timeout_s``). The
    agent keeps reconnecting either way, so a server that is down never blocks the caller.

    Args:
        config: the agent's configuration.
        stop: when set, stop gracefully: reject new commands, terminate the running ones
            (SIGTERM, SIGKILL after the grace), report their results while the link is up
            (waiting up to ``SHUTDOWN_REPORT_S`` for the acks), then return.
        journal: the journal of ``config.state_dir``, already opened (``fleet-agent`` opens it
            first, to refuse an unusable state directory in one line); run_agent closes it.
            By default run_agent opens it.
        stats: where the agent counts what ``--metrics`` shows (:mod:`fleet.agent.metrics`).

    Cancellation stops every command's process group (SIGTERM, SIGKILL after
    ``config.terminate_grace_s``) in shielded cleanup bounded by the grace plus three seconds,
    closes the link, and propagates. Results not yet reported are lost then, unless journaled.

    Raises:
        JournalError: ``config.state_dir`` cannot be used (before anything starts).
    """
    check_asyncio_loop()
    if journal is None:
        journal = Journal(config.state_dir, max_results=config.max_unacked_results)
        await trio.to_thread.run_sync(journal.open)
    try:
        async with trio.open_nursery() as nursery:
            agent = _Agent(config, nursery, journal, stats or AgentStats())
            agent.recover()
            connected: bool = await nursery.start(agent.connect_forever)
            task_status.started(connected)
            if stop is not None:
                await stop.wait()
                await agent.shutdown()
                nursery.cancel_scope.cancel(reason="agent stopped")
    finally:
        journal.close()


class _CommandOutput:
    """A command's view of the outbox (the runner's ``OutputSink``)."""

    def __init__(self, outbox: Outbox, command_id: str) -> None:
        self._outbox = outbox
        self._command_id = command_id

    async def write(self, kind: pb.OutputType, data: bytes, timestamp: int) -> None:
        await self._outbox.write(self._command_id, kind, data, timestamp)


class _Agent:
    """The state of one ``run_agent`` call; its methods run as tasks in ``nursery``."""

    def __init__(
        self, config: AgentConfig, nursery: trio.Nursery, journal: Journal, stats: AgentStats
    ) -> None:
        self._config = config
        self._nursery = nursery
        self._journal = journal
        self._boot = boot_id()
        self._outbox = Outbox(
            buffer_bytes=config.output_buffer_bytes,
            max_results=config.max_unacked_results,
            keep_finished_output=config.max_concurrent,
        )
        self._running: dict[str, CommandControl] = {}
        self._stats = stats
        stats.running_commands = self._running.__len__
        self._command_ended = trio.lowlevel.ParkingLot()
        self._message_ids = itertools.count(1)
        self._handshake = describe_host()
        self._shutting_down = False
        self._random = random.Random()

    async def connect_forever(self, *, task_status: trio.TaskStatus[bool]) -> None:
        """Connect, serve the session, and reconnect after every failure, forever.

        With several servers (``--server a:1,b:2``) a failed one is followed at once by the
        next; the backoff delay comes after a full round of failures.
        ``started(connected)`` after the first attempt (see :func:`run_agent`).
        """
        config = self._config
        targets = (
            [config]
            if len(config.servers) == 1
            else [config.replace(server=address) for address in config.servers]
        )
        backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, self._random)
        reported = False
        index = failed = 0
        while True:
            target = targets[index]
            connected = False
            try:
                self._handshake.open_command_ids = self._outbox.open_ids()
                self._handshake.open_command_ids_complete = self._journal.complete
                async with open_link(target, self._handshake, self._message_ids) as link:
                    connected = True
                    self._stats.link_up()
                    backoff.reset()
                    logger.info("vps=%d connected to %s", config.vps_id, target.server)
                    if not reported:
                        task_status.started(True)
                        reported = True
                    await self.session(link)
            except HandshakeRefused as error:
                logger.warning("vps=%d %s", config.vps_id, error)
            except LinkError as error:
                if connected:
                    logger.warning("vps=%d link lost: %s", config.vps_id, error)
                else:
                    logger.warning(
                        "vps=%d cannot connect to %s: %s", config.vps_id, target.server, error
                    )
            self._stats.link_down()
            if not reported:
                task_status.started(False)
                reported = True
            failed = 1 if connected else failed + 1
            index = (index + 1) % len(targets)
            if failed < len(targets):
                continue  # the next server, at once
            failed = 0
            delay = backoff.next_delay()
            logger.info("vps=%d reconnecting in %.1f s", config.vps_id, delay)
            await trio.sleep(delay)

    async def session(self, link: Link) -> None:
        """Serve one connection: re-send what the server may lack, then handle its messages.

        Returns when the link's messages end (the link failed; ``open_link`` raises why).
        """
        self._outbox.connect()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.pump, link)
                async for message in link:
                    self.handle(message)
                nursery.cancel_scope.cancel()
        finally:
            self._outbox.disconnect()

    async def pump(self, link: Link) -> None:
        """Move messages from the outbox to the link, forever (cancelled with the session)."""
        while True:
            batch = self._outbox.take(PUMP_BATCH)
            if not batch:
                await self._outbox.wait_pending()
                continue
            for message in batch:
                await link.send(message)
                self._stats.sent(message)

    def handle(self, message: pb.MessageToAgent) -> None:
        """Act on one message from the server (synchronously; commands start as tasks)."""
        name, payload = betterproto2.which_one_of(message, "payload")
        if isinstance(payload, pb.BatchAgentCommandRequest):
            self._submit(payload)
        elif isinstance(payload, pb.BatchTerminateCommandRequest):
            self._terminate(payload.command_id)
        elif isinstance(payload, pb.BatchResultAck):
            if not self._outbox.acknowledge(payload.command_id):
                logger.debug("command=%s ack for no held result", payload.command_id)
            try:
                self._journal.acknowledge(payload.command_id)
            except OSError as error:
                logger.warning("command=%s cannot journal its ack: %s", payload.command_id, error)
        else:
            # A newer server's payload (or a repeated handshake answer): not an error.
            logger.debug("ignoring a server message with payload %r", name or "unknown")

    async def run_one(self, spec: CommandSpec, control: CommandControl) -> None:
        """Run one accepted command and put its result in the journal and the outbox.

        The command counts as running until its result is in the outbox (so a graceful stop
        waits for it). Cancellation (agent shutdown) stops its process group (see
        ``run_command``) and propagates; no result is recorded then.
        """
        command_id = spec.command_id
        try:
            result = await self._execute(spec, control)
            logger.info(
                "command=%s finished: %s exit_code=%d %s",
                command_id,
                result.status.name,
                result.exit_code,
                result.error_message,
            )
            await self._finish(result)
        finally:
            del self._running[command_id]
            self._command_ended.unpark_all()

    async def _execute(self, spec: CommandSpec, control: CommandControl) -> pb.BatchCommandResult:
        command_id = spec.command_id
        try:
            try:
                await self._durably(self._journal.accept, command_id)
            except OSError as error:
                # Never run a command the journal does not know: after a crash it could run a
                # second time.
                raise _NotJournaled(
                    f"cannot journal the command in {self._journal.directory}: "
                    f"{error.strerror or error}; it was not started"
                ) from None
            return await run_command(
                spec,
                _CommandOutput(self._outbox, command_id),
                control=control,
                shell=self._config.shell,
                grace_s=self._config.terminate_grace_s,
                drain_s=self._config.output_drain_s,
                on_started=functools.partial(self._started, command_id),
                chunk_bytes=self._config.chunk_bytes,
            )
        except _NotJournaled as error:
            return pb.BatchCommandResult(
                command_id=command_id,
                status=pb.CommandStatus.FAILURE,
                exit_code=COULD_NOT_START,
                error_message=str(error),
            )
        except Exception as error:
            # The command task is a boundary: report the agent's own failure as the result
            # instead of taking every other command down with it.
            logger.exception("command=%s failed inside the agent", command_id)
            return pb.BatchCommandResult(
                command_id=command_id,
                status=pb.CommandStatus.FAILURE,
                exit_code=0,
                error_message=f"internal agent error: {error!r}",
            )

    def recover(self) -> None:
        """Settle what the journal says a previous agent process left (at start)."""
        state = self._journal.state
        running = 0
        for command_id, entry in list(state.open.items()):
            self._outbox.open(command_id)
            if entry.result is not None:
                self._outbox.finish(entry.result.to_result(command_id))
                continue
            running += 1
            self._running[command_id] = CommandControl()  # terminate: it is being stopped anyway
            self._nursery.start_soon(
                self.stop_left_over, command_id, entry.process, name=f"left-over {command_id}"
            )
        if state.open:
            logger.info(
                "vps=%d journal: %d command(s) were running when the agent stopped, %d "
                "result(s) wait for the server's ack",
                self._config.vps_id,
                running,
                len(state.open) - running,
            )

    async def stop_left_over(self, command_id: str, process: ProcessInfo | None) -> None:
        """Stop a command the previous agent process ran and report it ``FAILURE``."""
        try:
            result = await settle_left_over(
                command_id, process, boot=self._boot, grace_s=self._config.terminate_grace_s
            )
            await self._finish(result)
        finally:
            del self._running[command_id]
            self._command_ended.unpark_all()

    async def _finish(self, result: pb.BatchCommandResult) -> None:
        """Journal a final result (durably), then queue it for the server."""
        try:
            await self._durably(self._journal.finish, result.command_id, StoredResult.of(result))
        except OSError as error:
            logger.warning(
                "command=%s cannot journal the result (it is lost if the agent restarts "
                "before the server has it): %s",
                result.command_id,
                error,
            )
        self._outbox.finish(result)

    async def _durably(self, method: Callable[..., object], *args: object) -> None:
        """Call a journal method that fsyncs: in a worker thread, unless it is memory-only."""
        if self._journal.durable:
            await trio.to_thread.run_sync(method, *args)
        else:
            method(*args)

    async def shutdown(self) -> None:
        """Stop gracefully: see ``stop`` in :func:`run_agent`. Bounded in time."""
        config = self._config
        self._shutting_down = True
        logger.info("vps=%d stopping: terminating %d command(s)", config.vps_id, len(self._running))
        for control in list(self._running.values()):
            control.terminate("the agent is shutting down")
        with trio.move_on_after(config.terminate_grace_s + config.output_drain_s + 2):
            while self._running:
                await self._command_ended.park()
        if self._outbox.connected:
            with trio.move_on_after(SHUTDOWN_REPORT_S):
                await self._outbox.wait_results_acknowledged()

    # -- message handling --------------------------------------------------------------------

    def _submit(self, request: pb.BatchAgentCommandRequest) -> None:
        command_id = request.command_id
        if command_id in self._running or self._outbox.holds(command_id):
            # A repeated request (e.g. re-sent after a reconnect) never starts a second process.
            self._ack(command_id, True, "duplicate request: the command was already accepted")
            self._outbox.resend_result(command_id)
            return
        if self._journal.ran(command_id):
            logger.warning("command=%s delivered again after it ran: not run twice", command_id)
            self._ack(command_id, False, DUPLICATE)
            return
        reason = self._rejection(command_id)
        if reason is not None:
            logger.info("command=%s rejected: %s", command_id, reason)
            self._ack(command_id, False, reason)
            return
        control = CommandControl()
        self._running[command_id] = control
        self._outbox.open(command_id)
        # No ``BatchCommandAck(accepted)`` here: ``BatchCommandStarted`` says it, a moment later
        # (journal, then process start), and a command that cannot start is answered by its
        # result. One message fewer per command on both ends; a duplicate or a rejection is
        # still answered with an ack at once.
        logger.info("command=%s accepted", command_id)
        self._nursery.start_soon(
            self.run_one, CommandSpec.from_request(request), control, name=f"command {command_id}"
        )

    def _rejection(self, command_id: str) -> str | None:
        if not command_id:
            return "the request has no command id"
        if len(command_id) > MAX_ID_CHARS or "\0" in command_id:
            return f"invalid command id (more than {MAX_ID_CHARS} characters, or a NUL)"
        if self._shutting_down:
            return "the agent is shutting down"
        if self._config.no_exec:
            return "this agent runs with --no-exec and accepts no commands"
        if len(self._running) >= self._config.max_concurrent:
            return f"too many commands running (max concurrent {self._config.max_concurrent})"
        return None

    def _terminate(self, command_id: str) -> None:
        control = self._running.get(command_id)
        if control is not None:
            logger.info("command=%s terminate requested", command_id)
            control.terminate()
        elif self._outbox.has_result(command_id):
            self._outbox.resend_result(command_id)  # it already finished: report that again
        else:
            logger.info("command=%s terminate for no such running command", command_id)
            self._outbox.add_orphan_result(
                pb.BatchCommandResult(
                    command_id=command_id,
                    status=pb.CommandStatus.FAILURE,
                    error_message="no such running command",
                )
            )

    def _ack(self, command_id: str, accepted: bool, reason: str) -> None:
        self._outbox.add_control(
            pb.MessageToServer(
                batch_command_ack=pb.BatchCommandAck(
                    command_id=command_id, accepted=accepted, reason=reason, timestamp=unix_ms()
                )
            )
        )

    def _started(self, command_id: str, pid: int) -> None:
        logger.info("command=%s started pid=%d", command_id, pid)
        if self._journal.durable and (info := process_info(pid, self._boot)) is not None:
            try:
                self._journal.started(command_id, info)
            except OSError as error:
                logger.warning("command=%s cannot journal its process: %s", command_id, error)
        self._outbox.add_control(
            pb.MessageToServer(
                batch_command_started=pb.BatchCommandStarted(
                    command_id=command_id, pid=pid, timestamp=unix_ms()
                )
            )
        )


#: The answer to a command id this agent already ran and whose result the server acknowledged.
DUPLICATE = "duplicate delivery: this command already ran on this agent; it is not run again"


class _NotJournaled(Exception):
    """The journal could not record a command, so it must not start."""
