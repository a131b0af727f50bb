"""``fleet.server.reports`` and ``fleet.wellformed``: what an agent may report, field by field."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.proto import agent_service as pb
from fleet.server.reports import (
    MAX_OFFSET,
    MAX_TEXT_CHARS,
    MAX_TIMESTAMP_MS,
    InvalidReport,
    check_report,
    valid_command_id,
)
from fleet.wellformed import problem

CID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _msg(**payload: Any) -> pb.MessageToServer:
    return pb.MessageToServer(client_message_id=1, vps_db_id=1, agent_secret="s", **payload)


def _out(**fields: Any) -> pb.MessageToServer:
    return _msg(
        batch_command_output_stream=pb.BatchCommandOutputStream(
            **{"command_id": CID, "stream_type": 1, "chunk": b"x", **fields}
        )
    )


POSSIBLE = {
    "output without offset": _out(),
    "output at offset 0": _out(offset=0),
    "output ending exactly at 2**53": _out(offset=MAX_OFFSET - 1, chunk=b"x"),
    "output far past the output cap": _out(offset=2**40),
    "output of an unknown stream type": _out(stream_type=77),
    "result, unknown status, negative exit code": _msg(
        batch_command_result=pb.BatchCommandResult(command_id=CID, status=9, exit_code=-9)
    ),
    "result with the longest error": _msg(
        batch_command_result=pb.BatchCommandResult(
            command_id=CID, status=2, error_message="é" * MAX_TEXT_CHARS
        )
    ),
    "ack with a reason": _msg(
        batch_command_ack=pb.BatchCommandAck(
            command_id=CID, accepted=False, reason="--no-exec", timestamp=MAX_TIMESTAMP_MS
        )
    ),
    "started, pid 0": _msg(batch_command_started=pb.BatchCommandStarted(command_id="a", pid=0)),
    "a short id of another scheme": _msg(
        batch_command_started=pb.BatchCommandStarted(command_id="cmd_42-A", pid=1)
    ),
    "handshake": _msg(
        agent_handshake=pb.AgentHandshake(
            hostname="h", os_type=99, open_command_ids=[CID], open_command_ids_complete=True
        )
    ),
    "no payload": _msg(),
}

IMPOSSIBLE = {
    "offset 2**63 + 5": (_out(offset=2**63 + 5), "offset"),
    "offset 2**53": (_out(offset=MAX_OFFSET, chunk=b""), "offset"),
    "chunk past 2**53": (_out(offset=MAX_OFFSET - 1, chunk=b"xy"), "offset"),
    "negative pid": (
        _msg(batch_command_started=pb.BatchCommandStarted(command_id=CID, pid=-1)),
        "pid",
    ),
    "id of 37 characters": (_out(command_id=CID + "a"), "command_id"),
    "empty id": (_out(command_id=""), "command_id"),
    "id with whitespace": (_out(command_id=" " + CID[1:]), "command_id"),
    "id with a newline": (_out(command_id="abc\nINFO forged"), "command_id"),
    "id with a slash": (_out(command_id="../../etc"), "command_id"),
    "long error": (
        _msg(
            batch_command_result=pb.BatchCommandResult(
                command_id=CID, error_message="e" * (MAX_TEXT_CHARS + 1)
            )
        ),
        "error_message",
    ),
    "long reason": (
        _msg(
            batch_command_ack=pb.BatchCommandAck(command_id=CID, reason="r" * (MAX_TEXT_CHARS + 1))
        ),
        "reason",
    ),
    "negative timestamp": (_out(timestamp=-1), "timestamp"),
    "open command id of another shape": (
        _msg(agent_handshake=pb.AgentHandshake(open_command_ids=[CID, "a b"])),
        "open_command_ids",
    ),
    "timestamp after 9999": (
        _msg(batch_command_ack=pb.BatchCommandAck(command_id=CID, timestamp=MAX_TIMESTAMP_MS + 1)),
        "timestamp",
    ),
}


@pytest.mark.parametrize("name", list(POSSIBLE))
def test_possible_reports_pass(name: str) -> None:
    message = pb.MessageToServer.FromString(bytes(POSSIBLE[name]))  # as decoded off the wire
    check_report(message)


@pytest.mark.parametrize("name", list(IMPOSSIBLE))
def test_impossible_reports_are_refused(name: str) -> None:
    message, field = IMPOSSIBLE[name]
    with pytest.raises(InvalidReport) as caught:
        check_report(pb.MessageToServer.FromString(bytes(message)))
    assert caught.value.field.endswith(field)
    assert "\n" not in str(caught.value)  # never quotes the peer's text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # agent_secret (10) as a varint: betterproto2 gives an int
        (b"\x50\x05", "agent_secret"),
        # client_message_id (1) with wire type 7: betterproto2 gives None
        (b"\x0f", "client_message_id"),
        # batch_command_output_stream.command_id (1) as a varint
        (b"\x6a\x02\x08\x05", "batch_command_output_stream.command_id"),
        # batch_command_started.pid (2) as a length-delimited field: a list
        (b"\x8a\x01\x03\x12\x01\x61", "batch_command_started.pid"),
        # batch_command_output_stream.chunk (3) as a varint: an int, not bytes
        (b"\x6a\x02\x18\x05", "batch_command_output_stream.chunk"),
        # two payloads (13 and 16): betterproto2 keeps both, which_one_of raises
        (b"\x6a\x00\x82\x01\x00", "payload"),
    ],
)
def test_mistyped_fields_are_refused(raw: bytes, field: str) -> None:
    message = pb.MessageToServer.FromString(raw)
    found = problem(message)
    assert found is not None
    assert found.startswith(field + ":"), found
    with pytest.raises(InvalidReport):
        check_report(message)


def test_well_formed_messages_have_no_problem() -> None:
    for message in POSSIBLE.values():
        assert problem(pb.MessageToServer.FromString(bytes(message))) is None
    assert problem(pb.MessageToAgent(server_handshake_ack=pb.ServerHandshakeAck())) is None
    listed = pb.AgentHandshake(public_ip_addresses=["1.2.3.4", "::1"])
    assert problem(pb.AgentHandshake.FromString(bytes(listed))) is None
    listed.public_ip_addresses = ["1.2.3.4", 5]  # type: ignore[list-item]
    assert problem(listed) == "public_ip_addresses[1]: not a string"


@pytest.mark.parametrize(
    ("command_id", "valid"),
    [(CID, True), ("a", True), ("A_b-9", True), ("", False), ("-a", False), ("a" * 37, False)],
)
def test_command_id_shape(command_id: str, valid: bool) -> None:
    assert valid_command_id(command_id) is valid
