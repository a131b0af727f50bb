"""Hypothesis strategies for hostile protobuf bytes: well-framed fields of the wrong wire type.

Random bytes rarely get past a protobuf decoder's first tag; these build messages from fields
whose numbers are the schema's and whose wire types and payloads are anything, nested inside
the payload fields of the envelope, which is where betterproto2 turns a wrong wire type into a
value of the wrong Python type (or raises something other than ``ValueError``).
"""

from __future__ import annotations

from hypothesis import strategies as st


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, value: int, payload: bytes) -> bytes:
    tag = varint((number << 3) | wire)
    if wire == 0:
        return tag + varint(value)
    if wire == 1:
        return tag + value.to_bytes(8, "little")
    if wire == 5:
        return tag + (value & 0xFFFFFFFF).to_bytes(4, "little")
    if wire == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload  # groups (3, 4) and invalid wire types (6, 7)


def fields(numbers: list[int], depth: int = 1) -> st.SearchStrategy[bytes]:
    """A message body made of fields numbered from ``numbers`` with any wire type."""
    inner = fields(numbers, depth - 1) if depth > 0 else st.binary(max_size=12)
    one = st.builds(
        _field,
        st.sampled_from(numbers),
        st.sampled_from([0, 0, 1, 2, 2, 2, 5, 3, 4, 6, 7]),
        st.one_of(
            st.integers(0, 2**64 - 1), st.sampled_from([2**63 + 5, 2**53, 2**31, -1 % 2**64])
        ),
        st.one_of(inner, st.binary(max_size=12)),
    )
    return st.lists(one, max_size=5).map(b"".join)


def envelope(payloads: list[int], plain: list[int]) -> st.SearchStrategy[bytes]:
    """An envelope: some plain fields (any wire type) and a payload field holding a body of
    fields 1-8 (any wire type), in any order."""
    payload = st.builds(
        lambda number, body: _field(number, 2, 0, body),
        st.sampled_from(payloads),
        fields(list(range(1, 9))),
    )
    return st.lists(st.one_of(payload, fields(plain, 0)), max_size=3).map(b"".join)


#: Bodies of a ``MessageToServer`` and a ``MessageToAgent``.
to_server = envelope([2, 13, 14, 16, 17, 20], [1, 9, 10])
to_agent = envelope([2, 8, 9, 11, 12], [1])
