"""The wire protocol: the committed betterproto2 code is current, and it interoperates with
Google's protobuf compiled from the same ``.proto`` sources at test time: any protobuf
implementation can speak to the server and the agent."""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import betterproto2
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as GoogleMessage
from google.protobuf.unknown_fields import UnknownFieldSet

import fleet.proto
from fleet.proto import agent_service
from fleet.wire import METHOD_PATH

PROTO_DIR = Path(fleet.proto.__file__).parent
SOURCES = ["batch_command.proto", "handshake.proto", "messages.proto", "service.proto"]
GOOGLE_MODULES = [source.removesuffix(".proto") + "_pb2" for source in SOURCES]


def protoc(*args: str, cwd: Path) -> None:
    """Run grpcio-tools' protoc the way ``nox -s proto`` does (plugins from this venv)."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", *args, *SOURCES],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stdout}\n{result.stderr}"


# --- (a) the committed code is what the sources generate ------------------------------------------


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".proto"
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protoc(f"--python_betterproto2_out=client_generation=none:{tmp_path}", cwd=PROTO_DIR)
    generated = _files(tmp_path)
    assert {"agent_service/__init__.py", "message_pool.py"} <= generated

    problems: list[str] = []
    for rel in sorted(generated):
        fresh = (tmp_path / rel).read_text()
        committed_path = PROTO_DIR / rel
        if not committed_path.exists():
            problems.append(f"fleet/proto/{rel} is missing")
            continue
        committed = committed_path.read_text()
        if rel.endswith(".py"):
            # Compare the code, not its layout (the formatter's version or settings may differ).
            same = ast.dump(ast.parse(fresh)) == ast.dump(ast.parse(committed))
        else:
            same = fresh == committed
        if not same:
            diff = difflib.unified_diff(
                committed.splitlines(),
                fresh.splitlines(),
                f"committed/{rel}",
                f"generated/{rel}",
                lineterm="",
            )
            problems.append("\n".join(list(diff)[:60]))
    # The package marker is ours (the generator writes none); anything else is a leftover.
    leftovers = _files(PROTO_DIR) - generated - {"__init__.py"}
    problems += [f"fleet/proto/{rel} is not generated any more" for rel in sorted(leftovers)]
    assert (PROTO_DIR / "__init__.py").is_file(), "fleet/proto/__init__.py is missing"
    assert not problems, (
        "the committed protocol code is stale: run `nox -s proto` and commit the result\n\n"
        + "\n\n".join(problems)
    )


# --- (b) interop with Google's protobuf -----------------------------------------------------------


@pytest.fixture(scope="module")
def google(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    """The ``_pb2`` modules, compiled now and imported without leaving them on sys.path or in
    sys.modules (their generic names, ``messages_pb2``…, must not shadow anything)."""
    out = tmp_path_factory.mktemp("google_pb2")
    protoc(f"--python_out={out}", cwd=PROTO_DIR)
    clashing = [name for name in GOOGLE_MODULES if name in sys.modules]
    assert not clashing, f"modules named {clashing} are already imported"
    saved_path = list(sys.path)
    sys.path.insert(0, str(out))
    try:
        return {name: importlib.import_module(name) for name in GOOGLE_MODULES}
    finally:
        sys.path[:] = saved_path
        for name in GOOGLE_MODULES:
            sys.modules.pop(name, None)


def g_class(google: dict[str, ModuleType], name: str) -> type[GoogleMessage]:
    for module in google.values():
        if name in module.DESCRIPTOR.message_types_by_name:
            cls: type[GoogleMessage] = getattr(module, name)
            return cls
    raise KeyError(name)


def g_descriptors(google: dict[str, ModuleType]) -> Iterator[Descriptor]:
    for module in google.values():
        yield from module.DESCRIPTOR.message_types_by_name.values()


def _repeated(fd: FieldDescriptor) -> bool:
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)  # protobuf < 6


def _map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def to_bp(g: GoogleMessage) -> betterproto2.Message:
    """The betterproto2 message with the same content, built field by field (not via bytes)."""
    kwargs: dict[str, Any] = {}
    for fd in g.DESCRIPTOR.fields:
        value = getattr(g, fd.name)
        if _map(fd):
            kwargs[fd.name] = dict(value)
        elif fd.message_type is not None:
            if g.HasField(fd.name):
                kwargs[fd.name] = to_bp(value)
        elif _repeated(fd):
            kwargs[fd.name] = list(value)
        elif fd.has_presence and not g.HasField(fd.name):
            continue
        elif fd.enum_type is not None:
            kwargs[fd.name] = getattr(agent_service, fd.enum_type.name)(value)
        else:
            kwargs[fd.name] = value
    cls: type[betterproto2.Message] = getattr(agent_service, g.DESCRIPTOR.name)
    return cls(**kwargs)


def assert_same(g: GoogleMessage, b: betterproto2.Message, where: str = "") -> None:
    """Field by field: the Google message and the betterproto2 one say the same thing."""
    where = where or g.DESCRIPTOR.name
    assert type(b).__name__ == g.DESCRIPTOR.name, where
    for fd in g.DESCRIPTOR.fields:
        here = f"{where}.{fd.name}"
        gv, bv = getattr(g, fd.name), getattr(b, fd.name)
        if _map(fd):
            assert dict(bv) == dict(gv), here
        elif fd.message_type is not None:
            assert (bv is not None) == g.HasField(fd.name), here
            if bv is not None:
                assert_same(gv, bv, here)
        elif _repeated(fd):
            assert list(bv) == list(gv), here
        elif fd.has_presence and not g.HasField(fd.name):
            assert bv is None, here
        elif fd.enum_type is not None:
            assert int(bv) == gv, here
        else:
            assert type(bv) is type(gv), here
            assert bv == gv, here
    for oneof in g.DESCRIPTOR.oneofs:
        if oneof.name.startswith("_"):
            continue  # the synthetic oneof of a proto3 `optional` field
        assert (g.WhichOneof(oneof.name) or "") == betterproto2.which_one_of(b, oneof.name)[0]


# Every message, with every field set (values chosen to stress the encodings).
HANDSHAKE = {
    "agent_id_hint": "host-7",
    "agent_version": "1.2.3",
    "os_type": 1,
    "os_name": "Debian GNU/Linux 12 (bookworm)",
    "arch": "x86_64",
    "hostname": "web-7.example.org",
    "public_ip_addresses": ["203.0.113.7", "2001:db8::7", ""],
    "kernel_version": "6.1.0-18-amd64",
    "open_command_ids": ["3f2a-child", "", "☃-7"],
    "open_command_ids_complete": True,
}
OUTPUT = {
    "command_id": "3f2a-child",
    "stream_type": 2,
    "chunk": b"\xff\xfe\x00\x80 not UTF-8 \xc3\x28 \xe2\x82",
    "timestamp": -5_000_000_000_000,
    "offset": 2**40 + 17,
}
RESULT = {"command_id": "3f2a-child", "status": 2, "exit_code": -1, "error_message": "killed ☠"}
ACK = {"command_id": "3f2a-child", "accepted": True, "reason": "queued", "timestamp": 2**62}
STARTED = {"command_id": "3f2a-child", "pid": 2**31 - 1, "timestamp": 1_733_000_000_000}
HANDSHAKE_ACK = {
    "authentication_successful": True,
    "error_message": "welcome",
    "server_time_unix_ms": 1_733_000_000_123,
}
REQUEST = {
    "command_id": "3f2a-child",
    "type": 2,
    "content": '#!/bin/sh\necho ☃ "$HOME"\n',
    "working_directory": "/srv/app",
    "timeout_seconds": 2**32 - 1,
    "environment": {"FLEET_PARAM_A": "$(touch pwned); '\"", "FLEET_PARAM_EMPTY": "", "É": "☃"},
}
ONE_ID = {"command_id": "3f2a-child"}
TO_SERVER = {"client_message_id": 2**64 - 1, "vps_db_id": 2**31 - 1, "agent_secret": "s3cret"}
TO_AGENT = {"server_message_id": 2**63 + 1}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "handshake": ("AgentHandshake", HANDSHAKE),
    "handshake-without-open-ids": (  # a peer that predates the open-ids fields
        "AgentHandshake",
        {k: v for k, v in HANDSHAKE.items() if not k.startswith("open_command_ids")},
    ),
    "output": ("BatchCommandOutputStream", OUTPUT),
    "output-offset-zero": ("BatchCommandOutputStream", OUTPUT | {"offset": 0}),
    "output-offset-max": ("BatchCommandOutputStream", OUTPUT | {"offset": 2**64 - 1}),
    "output-no-offset": (
        "BatchCommandOutputStream",
        {k: v for k, v in OUTPUT.items() if k != "offset"},
    ),
    "result": ("BatchCommandResult", RESULT),
    "result-min-exit": ("BatchCommandResult", RESULT | {"exit_code": -(2**31)}),
    "result-max-exit": ("BatchCommandResult", RESULT | {"exit_code": 2**31 - 1}),
    "ack": ("BatchCommandAck", ACK),
    "ack-rejected": ("BatchCommandAck", ACK | {"accepted": False, "timestamp": -1}),
    "started": ("BatchCommandStarted", STARTED),
    "handshake-ack": ("ServerHandshakeAck", HANDSHAKE_ACK),
    "request": ("BatchAgentCommandRequest", REQUEST),
    "terminate": ("BatchTerminateCommandRequest", ONE_ID),
    "result-ack": ("BatchResultAck", ONE_ID),
    "empty-result": ("BatchCommandResult", {}),
    **{
        f"to-server-{field}": ("MessageToServer", TO_SERVER | {field: payload})
        for field, payload in [
            ("agent_handshake", HANDSHAKE),
            ("batch_command_output_stream", OUTPUT),
            ("batch_command_result", RESULT),
            ("batch_command_ack", ACK),
            ("batch_command_started", STARTED),
        ]
    },
    "to-server-empty-payload": ("MessageToServer", TO_SERVER | {"batch_command_result": {}}),
    "to-server-unset": ("MessageToServer", TO_SERVER),
    "to-server-negative-vps": ("MessageToServer", {"vps_db_id": -(2**31)}),
    **{
        f"to-agent-{field}": ("MessageToAgent", TO_AGENT | {field: payload})
        for field, payload in [
            ("server_handshake_ack", HANDSHAKE_ACK),
            ("batch_agent_command_request", REQUEST),
            ("batch_terminate_command_request", ONE_ID),
            ("batch_result_ack", ONE_ID),
        ]
    },
    "to-agent-unset": ("MessageToAgent", TO_AGENT),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_both_ways(google: dict[str, ModuleType], case: str) -> None:
    name, spec = CASES[case]
    cls = g_class(google, name)
    g = cls(**spec)
    b = to_bp(g)
    assert_same(g, b)

    # betterproto2 → Google
    from_bp = cls.FromString(bytes(b))
    assert from_bp == g
    assert from_bp.SerializeToString(deterministic=True) == g.SerializeToString(deterministic=True)

    # Google → betterproto2
    parsed = type(b).parse(g.SerializeToString())
    assert_same(g, parsed)
    assert parsed == b


def test_every_field_of_every_message_is_exercised(google: dict[str, ModuleType]) -> None:
    """CASES set every field of every message to a non-default value at least once."""
    seen: set[tuple[str, str]] = set()

    def visit(g: GoogleMessage) -> None:
        for fd, value in g.ListFields():
            seen.add((g.DESCRIPTOR.name, fd.name))
            if fd.message_type is not None and not _map(fd):
                visit(value)

    for name, spec in CASES.values():
        visit(g_class(google, name)(**spec))
    every = {(d.name, fd.name) for d in g_descriptors(google) for fd in d.fields}
    assert every - seen == set()


def test_offset_presence_on_the_wire(google: dict[str, ModuleType]) -> None:
    bp = agent_service.BatchCommandOutputStream
    zero, absent = bytes(bp(command_id="x", offset=0)), bytes(bp(command_id="x"))
    assert zero != absent
    g = g_class(google, "BatchCommandOutputStream")
    assert g.FromString(zero).HasField("offset")
    assert not g.FromString(absent).HasField("offset")
    assert bp.parse(g(offset=0).SerializeToString()).offset == 0
    assert bp.parse(g().SerializeToString()).offset is None


ENUMS = ["CommandType", "OutputType", "CommandStatus", "OsType"]
ENUM_FIELDS = {
    "CommandType": ("MessageToAgent", "batch_agent_command_request", "type"),
    "OutputType": ("MessageToServer", "batch_command_output_stream", "stream_type"),
    "CommandStatus": ("MessageToServer", "batch_command_result", "status"),
    "OsType": ("MessageToServer", "agent_handshake", "os_type"),
}


@pytest.mark.parametrize("enum", ENUMS)
def test_every_enum_value(google: dict[str, ModuleType], enum: str) -> None:
    g_enum = next(m.DESCRIPTOR.enum_types_by_name[enum] for m in google.values()
                  if enum in m.DESCRIPTOR.enum_types_by_name)  # fmt: skip
    bp_enum = getattr(agent_service, enum)
    assert {v.name: v.number for v in g_enum.values} == {m.name: m.value for m in bp_enum}
    wrapper, payload, field = ENUM_FIELDS[enum]
    cls = g_class(google, wrapper)
    for value in g_enum.values:
        g = cls(**{payload: {field: value.number}})
        b = to_bp(g)
        assert getattr(getattr(b, payload), field) is bp_enum(value.number)
        assert cls.FromString(bytes(b)) == g
        assert type(b).parse(g.SerializeToString()) == b


# --- a newer peer: unknown fields and enum values -------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return key + varint(payload)
    assert isinstance(payload, bytes)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


UNKNOWN = b"".join(
    [
        field(99, 0, 300),  # varint
        field(100, 2, b"from the future"),  # length-delimited
        field(101, 5, b"\x01\x02\x03\x04"),  # fixed32
        field(102, 1, b"\x00" * 8),  # fixed64
        field(2**29 - 1, 0, 1),  # the largest field number
    ]
)


@pytest.mark.parametrize("case", ["to-server-batch_command_result", "to-agent-batch_result_ack",
                                  "output", "to-server-unset"])  # fmt: skip
def test_unknown_fields_are_skipped(google: dict[str, ModuleType], case: str) -> None:
    name, spec = CASES[case]
    g = g_class(google, name)(**spec)
    b = to_bp(g)
    known = g.SerializeToString()
    for data in (known + UNKNOWN, UNKNOWN + known, UNKNOWN + known + UNKNOWN):
        assert type(b).parse(data) == b
        # Google keeps them as unknown fields; re-serialized, betterproto2 still skips them.
        g_with = type(g).FromString(data)
        assert len(UnknownFieldSet(g_with)) >= 5
        assert type(b).parse(g_with.SerializeToString()) == b


def test_unknown_payload_members_leave_the_oneof_unset(google: dict[str, ModuleType]) -> None:
    creds = g_class(google, "MessageToServer")(**TO_SERVER).SerializeToString()
    newer = field(18, 2, field(1, 2, b"cmd") + field(2, 0, 1))  # a future payload message
    family = field(3, 2, b"\x08\x01") + field(15, 2, b"")  # reserved family numbers
    parsed = agent_service.MessageToServer.parse(creds + newer + family)
    assert betterproto2.which_one_of(parsed, "payload") == ("", None)
    assert (parsed.client_message_id, parsed.vps_db_id, parsed.agent_secret) == (
        2**64 - 1,
        2**31 - 1,
        "s3cret",
    )
    to_agent = field(1, 0, 5) + field(12, 2, b"") + field(10, 2, b"\x0a\x01x")
    parsed_agent = agent_service.MessageToAgent.parse(to_agent)
    assert betterproto2.which_one_of(parsed_agent, "payload") == ("", None)
    assert parsed_agent.server_message_id == 5


def test_unknown_fields_inside_a_payload_are_skipped(google: dict[str, ModuleType]) -> None:
    inner = g_class(google, "BatchCommandResult")(**RESULT).SerializeToString() + UNKNOWN
    parsed = agent_service.MessageToServer.parse(field(14, 2, inner))
    assert_same(g_class(google, "BatchCommandResult")(**RESULT), parsed.batch_command_result)


@pytest.mark.parametrize("enum", ENUMS)
def test_unknown_enum_values_do_not_crash(google: dict[str, ModuleType], enum: str) -> None:
    wrapper, payload, name = ENUM_FIELDS[enum]
    g = g_class(google, wrapper)(**{payload: {name: 77}})
    parsed = getattr(agent_service, wrapper).parse(g.SerializeToString())
    assert int(getattr(getattr(parsed, payload), name)) == 77
    # ...and it survives a trip back to a peer that knows the value.
    assert type(g).FromString(bytes(parsed)) == g


# --- the contract: numbers, reservations, the method path -----------------------------------------

CONTRACT: dict[str, dict[str, int]] = {
    "MessageToServer": {"client_message_id": 1, "agent_handshake": 2, "vps_db_id": 9,
                        "agent_secret": 10, "batch_command_output_stream": 13,
                        "batch_command_result": 14, "batch_command_ack": 16,
                        "batch_command_started": 17},
    "MessageToAgent": {"server_message_id": 1, "server_handshake_ack": 2,
                       "batch_agent_command_request": 8, "batch_terminate_command_request": 9,
                       "batch_result_ack": 11},
    "AgentHandshake": {"agent_id_hint": 1, "agent_version": 2, "os_type": 3, "os_name": 4,
                       "arch": 5, "hostname": 6, "public_ip_addresses": 7, "kernel_version": 8,
                       "open_command_ids": 20, "open_command_ids_complete": 21},
    "ServerHandshakeAck": {"authentication_successful": 1, "error_message": 2,
                           "server_time_unix_ms": 6},
    "BatchAgentCommandRequest": {"command_id": 1, "type": 2, "content": 3,
                                 "working_directory": 4, "timeout_seconds": 5,
                                 "environment": 6},
    "BatchTerminateCommandRequest": {"command_id": 1},
    "BatchCommandOutputStream": {"command_id": 1, "stream_type": 2, "chunk": 3, "timestamp": 4,
                                 "offset": 5},
    "BatchCommandResult": {"command_id": 1, "status": 2, "exit_code": 3, "error_message": 4},
    "BatchCommandAck": {"command_id": 1, "accepted": 2, "reason": 3, "timestamp": 4},
    "BatchCommandStarted": {"command_id": 1, "pid": 2, "timestamp": 3},
    "BatchResultAck": {"command_id": 1},
}  # fmt: skip
PAYLOADS = {
    "MessageToServer": {"agent_handshake", "batch_command_output_stream", "batch_command_result",
                        "batch_command_ack", "batch_command_started"},
    "MessageToAgent": {"server_handshake_ack", "batch_agent_command_request",
                       "batch_terminate_command_request", "batch_result_ack"},
}  # fmt: skip
RESERVED = {
    "MessageToServer": {3, 4, 5, 6, 7, 8, 11, 12, 15},
    "MessageToAgent": {3, 4, 5, 6, 7, 10},
    "ServerHandshakeAck": {3, 4, 5},
}
F = FieldDescriptor
TYPES = {
    ("MessageToServer", "client_message_id"): F.TYPE_UINT64,
    ("MessageToServer", "vps_db_id"): F.TYPE_INT32,
    ("MessageToAgent", "server_message_id"): F.TYPE_UINT64,
    ("BatchCommandOutputStream", "chunk"): F.TYPE_BYTES,
    ("BatchCommandOutputStream", "offset"): F.TYPE_UINT64,
    ("BatchCommandOutputStream", "timestamp"): F.TYPE_INT64,
    ("BatchCommandResult", "exit_code"): F.TYPE_INT32,
    ("BatchAgentCommandRequest", "timeout_seconds"): F.TYPE_UINT32,
    ("BatchCommandAck", "accepted"): F.TYPE_BOOL,
    ("BatchCommandStarted", "pid"): F.TYPE_INT32,
    ("ServerHandshakeAck", "server_time_unix_ms"): F.TYPE_INT64,
}


def test_field_numbers_match_the_spec_in_both_implementations(
    google: dict[str, ModuleType],
) -> None:
    descriptors = {d.name: d for d in g_descriptors(google)}
    assert set(descriptors) == set(CONTRACT)
    for name, numbers in CONTRACT.items():
        desc = descriptors[name]
        assert {fd.name: fd.number for fd in desc.fields} == numbers, name
        bp_fields = getattr(agent_service, name).__dataclass_fields__
        assert {n: f.metadata["betterproto"].number for n, f in bp_fields.items()} == numbers
        if name in PAYLOADS:
            (oneof,) = desc.oneofs
            assert oneof.name == "payload"
            assert {fd.name for fd in oneof.fields} == PAYLOADS[name]
    for (name, field_name), kind in TYPES.items():
        assert descriptors[name].fields_by_name[field_name].type == kind, (name, field_name)
    offset = descriptors["BatchCommandOutputStream"].fields_by_name["offset"]
    assert offset.has_presence  # `optional`: presence is on the wire


def test_reserved_numbers_are_declared(google: dict[str, ModuleType]) -> None:
    descriptors = {d.name: d for d in g_descriptors(google)}
    for name, numbers in RESERVED.items():
        proto = descriptor_pb2.DescriptorProto()
        descriptors[name].CopyToProto(proto)
        reserved = {n for r in proto.reserved_range for n in range(r.start, r.end)}
        assert reserved == numbers, name
        assert not reserved & {fd.number for fd in descriptors[name].fields}


def test_the_service_method_path(google: dict[str, ModuleType]) -> None:
    service = google["service_pb2"].DESCRIPTOR.services_by_name["AgentCommunicationService"]
    (method,) = service.methods
    assert (
        f"/{service.full_name}/{method.name}"
        == METHOD_PATH
        == ("/agent_service.AgentCommunicationService/EstablishCommunicationStream")
    )
    assert method.client_streaming
    assert method.server_streaming
    assert method.input_type.full_name == "agent_service.MessageToServer"
    assert method.output_type.full_name == "agent_service.MessageToAgent"


def test_every_generated_message_and_enum_is_known(google: dict[str, ModuleType]) -> None:
    names = {d.name for d in g_descriptors(google)}
    names |= {e for m in google.values() for e in m.DESCRIPTOR.enum_types_by_name}
    assert set(agent_service.__all__) == names
