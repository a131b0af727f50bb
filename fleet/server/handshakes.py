"""Agent handshakes: who may in, what it said about itself, and what refusals cost.

``check_handshake`` decides whether a stream's first message is a valid handshake
(``agent_info`` keeps what it says about the machine, within bounds).

Refused handshakes have a per-address rate limit and log lines aggregated per minute.

A peer that keeps presenting wrong credentials must cost the server nearly nothing and must not
flood its log. Each source address has a token bucket of refusals (``burst`` tokens, refilled
at ``per_minute``); while its bucket is empty, every handshake from that address is answered
at once without looking at it (no decoding, no secret hashing, no store). The first refusal
from an address is logged when it happens; later ones are counted and reported at most once a
minute per address as "N refused handshakes from ADDR in the last minute".

IPv6 addresses are grouped by their /64 (one host usually holds a whole /64), IPv4 by address.
At most ``max_addresses`` addresses are tracked; beyond that the least recently refused are
forgotten (their pending counts are logged first), so memory stays bounded.

``RefusedHandshakes`` is pure bookkeeping: time comes in as ``now`` (seconds on any monotonic
clock; the server uses trio's, so tests run on the virtual clock) and log lines come out as
strings, which the ``log_refusals`` task writes to the ``fleet.server.handshakes`` logger.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import unicodedata
from dataclasses import dataclass

import betterproto2
import trio

from fleet.proto import agent_service as pb

from .agents import AgentInfo, Credentials
from .reports import check_report

__all__ = [
    "RefusedHandshakes",
    "address_key",
    "agent_info",
    "check_handshake",
    "handshake_ack",
    "log_refusals",
]

logger = logging.getLogger(__name__)

_OS_TYPES = {member.value: member.name for member in pb.OsType}


def check_handshake(message: pb.MessageToServer, credentials: Credentials) -> str | None:
    """Why ``message`` is not a valid first message of a stream (None: it is).

    The answer is sent to the peer and logged: it never quotes the peer's text.

    Raises:
        InvalidReport: the message is malformed (``fleet.server.reports.check_report``).
    """
    check_report(message)
    field, _ = betterproto2.which_one_of(message, "payload")
    if field != "agent_handshake":
        return "the first message must be an agent_handshake"
    if message.vps_db_id <= 0 or not credentials.verify(message.vps_db_id, message.agent_secret):
        return "unknown VPS id or wrong agent secret"
    return None


def agent_info(handshake: pb.AgentHandshake) -> AgentInfo:
    """What the agent says about its machine, each field cut to what the store keeps and with
    control and format characters (terminal escapes, newlines, bidi overrides) replaced by
    U+FFFD: these strings are shown in terminals and pages, and no machine's name holds them."""
    return AgentInfo(
        hostname=_printable(handshake.hostname[:255]),
        os_type=_OS_TYPES.get(handshake.os_type, "OTHER"),
        os_name=_printable(handshake.os_name[:255]),
        arch=_printable(handshake.arch[:64]),
        kernel_version=_printable(handshake.kernel_version[:255]),
        agent_version=_printable(handshake.agent_version[:64]),
        open_command_ids=(
            frozenset(handshake.open_command_ids) if handshake.open_command_ids_complete else None
        ),
    )


_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _printable(text: str) -> str:
    if text.isprintable():  # the usual case, checked in C
        return text
    return "".join(
        "\ufffd" if unicodedata.category(char) in _UNPRINTABLE else char for char in text
    )


def handshake_ack(ok: bool, error: str = "") -> pb.MessageToAgent:
    """The server's answer to a handshake."""
    return pb.MessageToAgent(
        server_handshake_ack=pb.ServerHandshakeAck(
            authentication_successful=ok,
            error_message=error,
            server_time_unix_ms=int(time.time() * 1000),
        )
    )


def address_key(host: str) -> str:
    """The rate limit's key for a peer host: an IPv4 address, an IPv6 /64, or the text itself
    (a Unix socket path, or ``?`` when the peer is unknown)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Entry:
    tokens: float
    updated: float  # when tokens were last refilled
    window_start: float  # start of the minute whose refusals are being counted
    pending: int = 0  # refusals since the last log line


class RefusedHandshakes:
    """Per-address bookkeeping of refused handshakes.

    Args:
        burst: refusals an address may have before it is limited.
        per_minute: the rate at which an address earns refusals back.
        log_interval_s: how often at most one line per address is logged.
        max_addresses: addresses tracked at once.
    """

    def __init__(
        self,
        *,
        burst: int = 20,
        per_minute: float = 20.0,
        log_interval_s: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        if burst < 1 or per_minute <= 0 or log_interval_s <= 0 or max_addresses < 1:
            raise ValueError("burst, per_minute, log_interval_s and max_addresses must be > 0")
        self.burst = burst
        self.rate = per_minute / 60.0
        self.log_interval_s = log_interval_s
        self.max_addresses = max_addresses
        self._entries: dict[str, _Entry] = {}
        self._overflow: list[str] = []  # lines of entries forgotten to stay bounded
        #: Handshakes answered without work because their address was limited.
        self.limited = 0
        #: Handshakes examined and refused (``refused`` calls); with ``limited``, every refusal.
        self.refused_total = 0

    def allowed(self, key: str, now: float) -> bool:
        """Whether a handshake from ``key`` may be examined (False: answer it without work)."""
        entry = self._entries.get(key)
        if entry is None:
            return True
        self._refill(entry, now)
        if entry.tokens >= 1:
            return True
        self.limited += 1
        entry.pending += 1  # answered without work: still a refusal, counted in the log
        return False

    def refused(self, key: str, now: float) -> bool:
        """Record a refusal from ``key``; True when it should be logged now (the first one
        from this address, or the first after a quiet minute), False when it is only counted.
        """
        self.refused_total += 1
        entry = self._entries.pop(key, None)  # re-inserted last: dict order is recency
        if entry is None:
            self._make_room()
            entry = _Entry(tokens=float(self.burst), updated=now, window_start=now)
            log_now = True
        else:
            self._refill(entry, now)
            log_now = entry.pending == 0 and now - entry.window_start >= self.log_interval_s
            if log_now:
                entry.window_start = now
        self._entries[key] = entry
        entry.tokens = max(entry.tokens - 1, 0.0)
        if not log_now:
            entry.pending += 1
        return log_now

    def due(self, now: float) -> list[str]:
        """Aggregated lines for every address whose minute is over, and forget addresses that
        are quiet and fully refilled. Call about every ``log_interval_s`` (or more often)."""
        lines, self._overflow = self._overflow, []
        for key in list(self._entries):
            entry = self._entries[key]
            if now - entry.window_start < self.log_interval_s:
                continue
            if entry.pending:
                lines.append(_line(entry.pending, key, self.log_interval_s))
                entry.pending = 0
                entry.window_start = now
                continue
            self._refill(entry, now)
            if entry.tokens >= self.burst:
                del self._entries[key]
        return lines

    def __len__(self) -> int:
        return len(self._entries)

    def _refill(self, entry: _Entry, now: float) -> None:
        elapsed = max(now - entry.updated, 0.0)
        entry.tokens = min(float(self.burst), entry.tokens + elapsed * self.rate)
        entry.updated = now

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_addresses:
            key = next(iter(self._entries))
            entry = self._entries.pop(key)
            if entry.pending:
                self._overflow.append(_line(entry.pending, key, self.log_interval_s))


def _line(count: int, key: str, interval: float) -> str:
    span = "minute" if interval == 60 else f"{interval:g} s"
    return f"{count} refused handshake{'s' * (count != 1)} from {key} in the last {span}"


async def log_refusals(refusals: RefusedHandshakes, *, every_s: float = 10.0) -> None:
    """Log the aggregated refusal lines as they fall due, until cancelled (a trio task)."""
    while True:
        await trio.sleep(every_s)
        for line in refusals.due(trio.current_time()):
            logger.warning("%s", line)
