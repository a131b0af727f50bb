"""The seams between one node and the rest of the cluster: where agents are, where sends and
feed events go, and how a report travels (``fleet.server.cluster.node`` drives them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.proto import agent_service as pb
from fleet.server.agents import AgentRegistry, SessionClosed
from fleet.server.batchrun import Recorder
from fleet.server.http.feed import FeedHub, encode
from fleet.server.supervisor import VPS_TOPIC

from .bus import Bus

__all__ = ["REPORTS", "ClusterFeed", "ClusterRegistry", "Remote", "RoutedSession", "report_only"]

REPORTS = (
    pb.BatchCommandOutputStream,
    pb.BatchCommandResult,
    pb.BatchCommandAck,
    pb.BatchCommandStarted,
)


@dataclass(frozen=True)
class Remote:
    node: str
    since: Any
    open_ids: frozenset[str] | None


class ClusterRegistry(AgentRegistry):
    """The local sessions, plus where every other agent of the cluster is connected."""

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self._bus = bus
        self.remote: dict[int, Remote] = {}

    def send(self, vps_id: int, message: pb.MessageToAgent) -> bool:
        """The local stream, else a row for the node holding the agent; False if none."""
        if super().send(vps_id, message):
            return True
        remote = self.remote.get(vps_id)
        if remote is None:
            return False
        self._bus.post_message(remote.node, "agent", vps_id, None, bytes(message))
        return True

    def is_online(self, vps_id: int) -> bool:
        return super().is_online(vps_id) or vps_id in self.remote

    def online_count(self) -> int:
        return super().online_count() + len(self.remote)


class ClusterFeed:
    """The feed of batches run here: to local subscribers at once and, through the database,
    to every other node. A status change travels once it is committed here (a subscriber
    elsewhere reads its snapshot from the store: a status it gets is never older than that
    snapshot); output travels at once, since its offset places it against any snapshot (the
    overlap is skipped, as after a reconnect) and its bytes go in the same or an earlier
    transaction (``RunDeps.chunks``)."""

    def __init__(self, hub: FeedHub, bus: Bus, recorder: Recorder) -> None:
        self._hub = hub
        self._bus = bus
        self._recorder = recorder

    def publish(self, batch_id: str, event: dict[str, Any]) -> None:
        if batch_id == VPS_TOPIC:
            self._hub.publish(batch_id, event)
            return
        text = encode(event)  # once, for the subscribers here and for the other nodes
        self._hub.publish(batch_id, event, text=text)
        if event.get("type") == "NEW_LOG_OUTPUT":
            self._bus.post_feed(batch_id, text)
        else:
            self._recorder.after_flush(lambda: self._bus.post_feed(batch_id, text))

    def has_subscribers(self, batch_id: str) -> bool:
        return True  # subscribers may be on another node


class RoutedSession:
    """An agent held by another node, as a ``Supervisor`` sees it (replies go back through
    ``ClusterRegistry.send``)."""

    def __init__(self, vps_id: int, registry: AgentRegistry) -> None:
        self.vps_id = vps_id
        self._registry = registry

    @property
    def closed(self) -> bool:
        return False

    def send(self, message: pb.MessageToAgent) -> None:
        if not self._registry.send(self.vps_id, message):
            raise SessionClosed(f"vps {self.vps_id} is connected nowhere")

    def close(self, reason: str) -> None:
        pass  # its own node closes it


def report_only(
    vps_id: int,
    payload: pb.BatchCommandOutputStream
    | pb.BatchCommandResult
    | pb.BatchCommandAck
    | pb.BatchCommandStarted,
) -> pb.MessageToServer:
    """The report alone, to travel between nodes (never the agent's credentials)."""
    if isinstance(payload, pb.BatchCommandOutputStream):
        return pb.MessageToServer(vps_db_id=vps_id, batch_command_output_stream=payload)
    if isinstance(payload, pb.BatchCommandResult):
        return pb.MessageToServer(vps_db_id=vps_id, batch_command_result=payload)
    if isinstance(payload, pb.BatchCommandAck):
        return pb.MessageToServer(vps_db_id=vps_id, batch_command_ack=payload)
    return pb.MessageToServer(vps_db_id=vps_id, batch_command_started=payload)
