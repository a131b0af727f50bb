"""The outbox: ordering, offsets, re-sending after a reconnect, bounds and drop markers."""

from __future__ import annotations

import betterproto2
import trio
import trio.testing

from fleet.agent.outbox import DROP_MARKER, Outbox
from fleet.core import StreamCursor
from fleet.proto import agent_service as pb

from .helpers import STDERR, STDOUT

KIB = 1024


def make_outbox(buffer_bytes: int = 64 * KIB, **options: int) -> Outbox:
    values = {"max_results": 100, "keep_finished_output": 4, **options}
    return Outbox(buffer_bytes=buffer_bytes, **values)


def kinds(messages: list[pb.MessageToServer]) -> list[str]:
    return [betterproto2.which_one_of(message, "payload")[0] for message in messages]


def chunks(messages: list[pb.MessageToServer]) -> list[pb.BatchCommandOutputStream]:
    return [m.batch_command_output_stream for m in messages if m.batch_command_output_stream]


def result(
    command_id: str, status: pb.CommandStatus = pb.CommandStatus.SUCCESS
) -> pb.BatchCommandResult:
    return pb.BatchCommandResult(command_id=command_id, status=status)


def control(command_id: str) -> pb.MessageToServer:
    return pb.MessageToServer(batch_command_ack=pb.BatchCommandAck(command_id=command_id))


async def test_order_controls_then_output_then_result() -> None:
    with trio.fail_after(5):
        outbox = make_outbox()
        outbox.connect()
        outbox.open("a")
        outbox.add_control(control("a"))
        await outbox.write("a", STDOUT, b"one", 1)
        await outbox.write("a", STDERR, b"two", 2)
        await outbox.write("a", STDOUT, b"three", 3)
        outbox.finish(result("a"))
        messages = outbox.take(100)
        assert kinds(messages) == ["batch_command_ack"] + ["batch_command_output_stream"] * 3 + [
            "batch_command_result"
        ]
        sent = chunks(messages)
        assert [(c.stream_type, c.chunk, c.offset, c.timestamp) for c in sent] == [
            (STDOUT, b"one", 0, 1),
            (STDERR, b"two", 0, 2),
            (STDOUT, b"three", 3, 3),
        ]
        assert outbox.take(100) == []


async def test_result_waits_for_output_beyond_the_take_limit() -> None:
    with trio.fail_after(5):
        outbox = make_outbox()
        outbox.connect()
        outbox.open("a")
        for index in range(5):
            await outbox.write("a", STDOUT, b"x%d" % index, index)
        outbox.finish(result("a"))
        first = outbox.take(3)
        assert kinds(first) == ["batch_command_output_stream"] * 3
        assert kinds(outbox.take(100)) == ["batch_command_output_stream"] * 2 + [
            "batch_command_result"
        ]


async def test_reconnect_resends_with_the_same_offsets_until_acknowledged() -> None:
    with trio.fail_after(5):
        outbox = make_outbox()
        outbox.connect()
        outbox.open("a")
        await outbox.write("a", STDOUT, b"hello ", 1)
        first = outbox.take(100)
        outbox.disconnect()
        await outbox.write("a", STDOUT, b"world", 2)  # produced while disconnected
        outbox.finish(result("a"))
        outbox.connect()
        second = outbox.take(100)
        assert kinds(second) == ["batch_command_output_stream"] * 2 + ["batch_command_result"]
        cursor = StreamCursor(cap=1 << 20)
        log = b"".join(cursor.accept(c.chunk, c.offset).data for c in chunks(first + second))
        assert log == b"hello world"  # the re-sent "hello " was dropped as a duplicate
        outbox.connect()  # yet another reconnect: the unacknowledged result goes again
        assert kinds(outbox.take(100))[-1] == "batch_command_result"
        assert outbox.acknowledge("a")
        outbox.connect()
        assert outbox.take(100) == []
        assert not outbox.acknowledge("a")


async def test_overflow_while_disconnected_drops_oldest_with_a_marker() -> None:
    with trio.fail_after(5):
        outbox = make_outbox(buffer_bytes=64 * KIB)
        outbox.open("a")
        piece = 16 * KIB
        payload = bytes(range(256)) * (piece * 10 // 256)
        for index in range(10):  # 160 KiB produced while disconnected, 64 KiB kept
            await outbox.write("a", STDOUT, payload[index * piece : (index + 1) * piece], index)
        stats = outbox.statistics()
        assert stats.unsent_bytes == 64 * KIB
        assert stats.dropped_bytes == 96 * KIB
        outbox.finish(result("a"))
        outbox.connect()
        sent = chunks(outbox.take(100))
        marker = DROP_MARKER.format(96 * KIB).encode()
        assert sent[0].chunk == marker
        cursor = StreamCursor(cap=1 << 20)
        log = b""
        for chunk in sent:
            accepted = cursor.accept(chunk.chunk, chunk.offset)
            assert accepted.gap == 0
            log += accepted.data
        assert log == marker + payload[6 * piece :]
        assert b"[fleet: 98304 bytes dropped while disconnected]" in log


async def test_writer_waits_for_room_while_connected() -> None:
    outbox = make_outbox(buffer_bytes=64 * KIB)
    outbox.connect()
    outbox.open("a")
    done: list[int] = []

    async def writer() -> None:
        for index in range(3):
            await outbox.write("a", STDOUT, b"x" * (32 * KIB), index)
            done.append(index)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [0, 1]  # the third chunk waits: nothing dropped
            assert len(chunks(outbox.take(1))) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert done == [0, 1, 2]
    assert outbox.statistics().dropped_bytes == 0


async def test_disconnect_releases_a_waiting_writer_which_then_drops() -> None:
    outbox = make_outbox(buffer_bytes=64 * KIB)
    outbox.connect()
    outbox.open("a")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(outbox.write, "a", STDOUT, b"y" * (32 * KIB), index)
            await trio.testing.wait_all_tasks_blocked()
            outbox.disconnect()
    assert outbox.statistics().dropped_bytes == 32 * KIB


async def test_sent_output_kept_for_resending_is_bounded() -> None:
    with trio.fail_after(5):
        outbox = make_outbox(buffer_bytes=64 * KIB)
        outbox.connect()
        outbox.open("a")
        for index in range(8):
            await outbox.write("a", STDOUT, b"z" * (16 * KIB), index)
            outbox.take(100)
        assert outbox.statistics().retained_bytes == 64 * KIB
        outbox.connect()
        resent = chunks(outbox.take(100))
        assert [c.offset for c in resent] == [i * 16 * KIB for i in range(4, 8)]


def test_orphan_result_does_not_hold_the_id() -> None:
    outbox = make_outbox()
    outbox.add_orphan_result(result("ghost", pb.CommandStatus.FAILURE))
    assert outbox.has_result("ghost")
    assert not outbox.holds("ghost")
    outbox.connect()
    assert kinds(outbox.take(100)) == ["batch_command_result"]
    assert outbox.acknowledge("ghost")


def test_result_cap_drops_the_oldest() -> None:
    outbox = make_outbox(max_results=2)
    for name in "abc":
        outbox.open(name)
        outbox.finish(result(name))
    assert not outbox.has_result("a")
    assert outbox.has_result("b")
    assert outbox.has_result("c")


async def test_finished_commands_give_up_retained_output_beyond_the_limit() -> None:
    with trio.fail_after(5):
        outbox = make_outbox(keep_finished_output=1)
        outbox.connect()
        for name in "abc":
            outbox.open(name)
            await outbox.write(name, STDOUT, b"q" * 1000, 0)
            outbox.finish(result(name))
        outbox.take(100)
        assert outbox.statistics().retained_bytes == 1000
        assert outbox.statistics().unacknowledged_results == 3


async def test_wait_results_acknowledged() -> None:
    outbox = make_outbox()
    outbox.open("a")
    outbox.finish(result("a"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.wait_results_acknowledged)
            await trio.testing.wait_all_tasks_blocked()
            outbox.acknowledge("a")
