"""``fleet.server.handshakes``: refused handshakes rate-limited and logged once a minute per
address, on an injected clock (bookkeeping) and trio's virtual clock (the log task)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from fleet.proto import agent_service as pb
from fleet.server.agents import Credentials, hash_secret
from fleet.server.handshakes import (
    RefusedHandshakes,
    address_key,
    agent_info,
    check_handshake,
    log_refusals,
)
from fleet.server.reports import InvalidReport


def test_burst_then_limited_then_refilled() -> None:
    refusals = RefusedHandshakes(burst=3, per_minute=6)  # one token back every 10 s
    now = 100.0
    for _ in range(3):
        assert refusals.allowed("1.2.3.4", now)
        refusals.refused("1.2.3.4", now)
    assert not refusals.allowed("1.2.3.4", now)
    assert not refusals.allowed("1.2.3.4", now + 9.9)
    assert refusals.allowed("1.2.3.4", now + 10)
    assert refusals.allowed("5.6.7.8", now)  # other addresses are not affected
    assert refusals.limited == 2


def test_logged_once_then_aggregated_per_minute() -> None:
    refusals = RefusedHandshakes(burst=1000)
    assert refusals.refused("a", 0.0)  # the first one is logged at once
    assert not any(refusals.refused("a", t) for t in range(1, 59))
    assert refusals.due(59.0) == []
    assert refusals.due(60.0) == ["58 refused handshakes from a in the last minute"]
    assert refusals.due(120.0) == []  # nothing new: nothing to say
    # A refusal after a quiet minute is logged at once again.
    assert refusals.refused("a", 200.0)
    assert not refusals.refused("a", 201.0)
    assert refusals.due(260.0) == ["1 refused handshake from a in the last minute"]


def test_limited_handshakes_are_counted_in_the_aggregate() -> None:
    refusals = RefusedHandshakes(burst=1, per_minute=1)
    refusals.refused("a", 0.0)
    assert not refusals.allowed("a", 1.0)
    assert not refusals.allowed("a", 2.0)
    assert refusals.due(60.0) == ["2 refused handshakes from a in the last minute"]


def test_memory_is_bounded() -> None:
    refusals = RefusedHandshakes(burst=5, max_addresses=100)
    for index in range(1000):
        refusals.refused(f"10.0.{index // 256}.{index % 256}", 0.0)
        refusals.refused(f"10.0.{index // 256}.{index % 256}", 0.0)  # pending 1 each
    assert len(refusals) == 100
    lines = refusals.due(1.0)  # the forgotten ones' counts are still reported
    assert len(lines) == 900
    # Quiet, refilled addresses are forgotten.
    refusals.due(61.0)
    assert refusals.due(1000.0) == []
    assert len(refusals) == 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("?", "?"),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


async def test_log_task_writes_one_line_per_address_per_minute(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fleet.server.handshakes")
    refusals = RefusedHandshakes(burst=10_000)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_refusals, refusals)
            start = trio.current_time()
            # 1,000 refusals from one address over 50 s, 10 from another.
            for index in range(1000):
                refusals.refused("198.51.100.7", trio.current_time())
                if index % 100 == 0:
                    refusals.refused("203.0.113.9", trio.current_time())
                await trio.sleep(0.05)
            await trio.sleep_until(start + 125)
            nursery.cancel_scope.cancel()
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == [
        "9 refused handshakes from 203.0.113.9 in the last minute",
        "999 refused handshakes from 198.51.100.7 in the last minute",
    ]


def test_check_handshake() -> None:
    credentials = Credentials([(7, hash_secret("right"))])
    good = pb.MessageToServer(
        vps_db_id=7, agent_secret="right", agent_handshake=pb.AgentHandshake()
    )
    assert check_handshake(good, credentials) is None
    wrong = pb.MessageToServer(vps_db_id=7, agent_secret="no", agent_handshake=pb.AgentHandshake())
    assert check_handshake(wrong, credentials) == "unknown VPS id or wrong agent secret"
    no_handshake = pb.MessageToServer(vps_db_id=7, agent_secret="right")
    assert check_handshake(no_handshake, credentials) == (
        "the first message must be an agent_handshake"
    )
    with pytest.raises(InvalidReport):
        check_handshake(pb.MessageToServer.FromString(b"\x50\x05\x12\x00"), credentials)


def test_agent_info_bounds_fields_and_names_unknown_os_types() -> None:
    decoded = pb.AgentHandshake.FromString(
        bytes(pb.AgentHandshake(hostname="h" * 1000, os_type=pb.OsType.LINUX)).replace(
            b"\x18\x01", b"\x18\x63"
        )
    )
    info = agent_info(decoded)
    assert info.os_type == "OTHER"
    assert len(info.hostname) == 255
    assert agent_info(pb.AgentHandshake(os_type=pb.OsType.MACOS)).os_type == "MACOS"


def test_agent_info_replaces_control_and_format_characters() -> None:
    hostile = pb.AgentHandshake(
        hostname="web\x1b[31m-1\nINFO forged", os_name="Debian\u202egnp.exe", arch="x86_64"
    )
    info = agent_info(hostile)
    assert info.hostname == "web\ufffd[31m-1\ufffdINFO forged"
    assert info.os_name == "Debian\ufffdgnp.exe"
    assert info.arch == "x86_64"
    assert agent_info(pb.AgentHandshake(hostname="hôte-é\u00a01")).hostname == "hôte-é\u00a01"
