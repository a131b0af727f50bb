"""``BatchWatch`` (sans-I/O) and ``follow`` against a scripted feed: resync without duplicates."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

from fleet.cli.client import ApiError, FleetClient, TokenRefused
from fleet.cli.watch import BatchWatch, Chunk, Ended, Gap, follow

BATCH = "b-1"


def task(child: str, status: str = "EXECUTING", out: int = 0, err: int = 0) -> dict[str, Any]:
    return {
        "child_command_id": child,
        "vps_id": int(child[-1]),
        "vps_name": f"vps-{child[-1]}",
        "status": status,
        "exit_code": 0 if status == "SUCCESS" else None,
        "stdout_bytes": out,
        "stderr_bytes": err,
    }


def snapshot(*tasks: dict[str, Any], status: str = "IN_PROGRESS") -> dict[str, Any]:
    return {
        "type": "SNAPSHOT",
        "batch": {"batch_command_id": BATCH, "overall_status": status, "tasks": list(tasks)},
    }


def log(child: str, offset: int, data: str, stream: str = "stdout") -> dict[str, Any]:
    return {"type": "NEW_LOG_OUTPUT", "child_command_id": child, "stream": stream,
            "offset": offset, "data": data}  # fmt: skip


def done(child: str) -> dict[str, Any]:
    return {"type": "CHILD_TASK_UPDATE", "child_command_id": child, "status": "SUCCESS",
            "exit_code": 0}  # fmt: skip


FINAL = {"type": "BATCH_TASK_UPDATE", "overall_status": "COMPLETED_SUCCESSFULLY"}


def test_output_before_the_snapshot_is_a_gap_and_later_output_a_chunk() -> None:
    watch = BatchWatch(BATCH)
    assert watch.on_message(snapshot(task("c1", out=5), task("c2"))) == [Gap("c1", "stdout", 0, 5)]
    assert watch.fill(Gap("c1", "stdout", 0, 5), b"hello, more") == Chunk("c1", "stdout", "hello")
    assert watch.on_message(log("c1", 5, "!\n")) == [Chunk("c1", "stdout", "!\n")]
    assert watch.on_message(log("c2", 0, "e\n", "stderr")) == [Chunk("c2", "stderr", "e\n")]
    assert watch.counts() == (0, 0, 2)
    assert watch.on_message(done("c1")) == [Ended("c1")]
    assert watch.on_message(done("c1")) == []
    assert watch.counts() == (1, 0, 1)
    assert not watch.final
    watch.on_message(FINAL)
    assert watch.final


def test_a_new_snapshot_fills_only_what_was_missed() -> None:
    watch = BatchWatch(BATCH)
    watch.on_message(snapshot(task("c1")))
    watch.on_message(log("c1", 0, "ab\n"))
    # Reconnected: the server has 7 bytes; 3 were shown, so 3..7 is the gap.
    assert watch.on_message(snapshot(task("c1", out=7))) == [Gap("c1", "stdout", 3, 7)]
    assert watch.fill(Gap("c1", "stdout", 3, 7), b"cd\ne") == Chunk("c1", "stdout", "cd\ne")
    # An event from before the snapshot is not shown again, even partly.
    assert watch.on_message(log("c1", 3, "cd\n")) == []
    assert watch.on_message(log("c1", 5, "\nef\n")) == [Chunk("c1", "stdout", "f\n")]
    # Nothing missed: no gap.
    assert watch.on_message(snapshot(task("c1", out=9))) == []


def test_non_utf8_output_is_never_shown_twice() -> None:
    watch = BatchWatch(BATCH)
    watch.on_message(snapshot(task("c1")))
    # Two bytes b"\xff\n" arrive as the text "\ufffd\n" (4 bytes once encoded).
    assert watch.on_message(log("c1", 0, "\ufffd\n")) == [Chunk("c1", "stdout", "\ufffd\n")]
    assert watch.on_message(log("c1", 2, "x\n")) == [Chunk("c1", "stdout", "x\n")]
    assert watch.on_message(snapshot(task("c1", status="SUCCESS", out=4))) == [Ended("c1")]


def test_statuses_only() -> None:
    watch = BatchWatch(BATCH, output=False)
    items = watch.on_message(
        snapshot(task("c1", "SUCCESS", out=3), status="COMPLETED_SUCCESSFULLY")
    )
    assert items == [Ended("c1")]
    assert watch.on_message(log("c1", 3, "x")) == []
    assert watch.final
    assert watch.children["c1"].exit_code == 0


# --- follow() against a scripted WebSocket server ---------------------------------------------

Script = Callable[[WebSocketConnection, int], Awaitable[None]]


class FakeLogs(FleetClient):
    """A client whose log downloads come from memory and whose feed is the test's server."""

    def __init__(self, port: int, logs: dict[str, bytes]) -> None:
        super().__init__(f"http://127.0.0.1:{port}", "t0ken")
        self.logs = logs
        self.fetched: list[tuple[str, int]] = []

    async def output(self, batch_id: str, child_id: str, stream: str, *, start: int = 0) -> bytes:
        self.fetched.append((child_id, start))
        return self.logs[child_id][start:]


async def serve(nursery: trio.Nursery, script: Script, *, reject: int = 0) -> tuple[int, list[str]]:
    connections: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        connections.append(dict(request.headers).get(b"authorization", b"").decode())
        if reject:
            await request.reject(reject)
            return
        ws = await request.accept()
        await script(ws, len(connections))

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    return server.port, connections


async def send(ws: WebSocketConnection, *messages: dict[str, Any]) -> None:
    for message in messages:
        await ws.send_message(json.dumps(message))


async def test_follow_resyncs_after_1013_without_duplicates() -> None:
    async def script(ws: WebSocketConnection, n: int) -> None:
        if n == 1:
            await send(ws, snapshot(task("c1")), log("c1", 0, "a\n"))
            await ws.aclose(code=1013, reason="fell behind")  # as the server's _pump does
        else:
            await send(ws, snapshot(task("c1", out=7)), log("c1", 5, "c\n"), log("c1", 7, "d\n"),
                       done("c1"), FINAL)  # fmt: skip
            await ws.get_message()  # until the client closes

    shown: list[Chunk | Gap | Ended] = []

    def show(items: Iterable[Chunk | Gap | Ended]) -> None:
        shown.extend(items)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, connections = await serve(nursery, script)
            client = FakeLogs(port, {"c1": b"a\nbb\nc\nd\n"})
            watch = BatchWatch(BATCH)
            await follow(client, watch, show)
            nursery.cancel_scope.cancel()
    text = "".join(item.text for item in shown if isinstance(item, Chunk))
    assert text == "a\nbb\nc\nd\n"
    assert client.fetched == [("c1", 2)]
    assert shown[-1] == Ended("c1")
    assert connections == ["Bearer t0ken", "Bearer t0ken"]
    assert watch.final


async def test_follow_reports_refusals() -> None:
    async def unknown(ws: WebSocketConnection, n: int) -> None:
        await ws.aclose(code=1008, reason="no such batch")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await serve(nursery, unknown)
            with pytest.raises(ApiError, match="no batch with id b-1"):
                await follow(FakeLogs(port, {}), BatchWatch(BATCH), lambda items: None)
            port, _ = await serve(nursery, unknown, reject=401)
            with pytest.raises(TokenRefused):
                await follow(FakeLogs(port, {}), BatchWatch(BATCH), lambda items: None)
            nursery.cancel_scope.cancel()


async def test_follow_ends_cleanly_when_a_ping_arrives_while_it_closes() -> None:
    """trio-websocket 0.12 answers a ping that arrives after it sent its close frame and fails on
    it (python-trio/trio-websocket#184; Hypercorn pings as soon as it accepts): once the final
    status is in, that failure is not the user's problem."""
    import wsproto
    from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

    async def handler(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        closing = False
        while not closing:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                    for message in (snapshot(task("c1")), done("c1"), FINAL):
                        await stream.send_all(ws.send(TextMessage(json.dumps(message))))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(b"\x89\x00")  # a ping, after the client's close
                    await stream.send_all(ws.send(event.response()))
                    closing = True
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            watch = BatchWatch(BATCH)
            shown: list[Chunk | Gap | Ended] = []
            await follow(FakeLogs(port, {}), watch, shown.extend)
            returned = True  # a stray Cancelled would end the nursery before this line
            nursery.cancel_scope.cancel()
    assert returned
    assert watch.final
    assert shown == [Ended("c1")]
