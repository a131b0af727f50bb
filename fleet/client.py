"""The client behind the ``fleet`` CLI: REST over the stdlib, the live feed over trio-websocket.

It ships in the light base install, so it uses trio, trio-websocket and the standard library only,
and never imports ``fleet.server``.

* ``FleetClient`` makes REST calls with ``http.client`` in worker threads
  (``trio.to_thread.run_sync``), keeping a few idle keep-alive connections. It reads each body by
  its Content-Length, because Hypercorn's trio worker ignores ``Connection: close``.
* ``BatchWatch`` is the sans-I/O state of one batch as the feed describes it. It decides which
  output is new, which is a duplicate, and which bytes were missed (``Gap``) and must be fetched
  from the byte-exact log. ``follow`` connects it to the WebSocket and reconnects when the
  server drops a slow client (close code 1013) or the connection breaks.

Errors form one small tree. Each has a one-line ``str()`` and the CLI exit code it maps to::

    ClientError (3)
     ├─ Unreachable (3)     the server cannot be reached, or the feed was lost for good
     ├─ TokenRefused (3)    401/403
     ├─ BadResponse (3)     something that is not the API's JSON
     └─ ApiError (2 for 4xx, 3 for 5xx): {"error": code, "detail": …}
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

__all__ = [
    "FINAL_BATCH",
    "STREAMS",
    "TERMINAL_CHILD",
    "ApiError",
    "BadResponse",
    "BatchWatch",
    "Chunk",
    "ClientError",
    "Ended",
    "FleetClient",
    "Gap",
    "TokenRefused",
    "Unreachable",
    "UsageError",
    "WatchedChild",
    "fill_gaps",
    "follow",
    "select_targets",
]

FINAL_BATCH = frozenset(
    {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}
)
TERMINAL_CHILD = frozenset(
    {"SUCCESS", "FAILURE", "TERMINATED", "AGENT_UNREACHABLE", "AGENT_REJECTED"}
)
STREAMS = ("stdout", "stderr")

#: An idle keep-alive connection older than this is closed rather than reused: Hypercorn drops
#: idle connections after 5 s, and a request sent on a dropped one fails.
IDLE_REUSE_S = 2.0
#: The feed gives up after this many consecutive failed (re)connections.
FEED_ATTEMPTS = 6
CLOSE_TRY_AGAIN = 1013  # the server dropped us for falling behind: reconnect at once
CLOSE_POLICY = 1008  # the server refused the subscription (no such batch)


class ClientError(Exception):
    """Anything that stops a CLI command; ``str()`` is one line, ``exit_code`` its exit code."""

    exit_code = 3


class Unreachable(ClientError):
    """The server cannot be reached (or the live feed was lost and did not come back)."""


class TokenRefused(ClientError):
    """The server answered 401/403."""

    def __init__(self) -> None:
        super().__init__("the token was refused by the server (check --token / FLEET_TOKEN)")


class UsageError(ClientError):
    """The request cannot be made as asked: bad settings, an unknown name, no target (exit 2)."""

    exit_code = 2


class BadResponse(ClientError):
    """The server answered something that is not the API's JSON."""


class ApiError(ClientError):
    """An API error answer ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        text = describe_detail(detail) or code
        super().__init__(f"invalid request: {text}" if status in (400, 422) else text)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 2 if 400 <= self.status < 500 else 3

    @property
    def reasons(self) -> list[str]:
        """Each problem the server listed (``field: reason``), or the one detail."""
        if isinstance(self.detail, list):
            return [_reason(item) for item in self.detail]
        return [str(self)]


def _reason(item: Any) -> str:
    if isinstance(item, dict) and "reason" in item:
        where = item.get("field")
        return f"{where}: {item['reason']}" if where else str(item["reason"])
    return str(item)


def describe_detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(_reason(item) for item in detail)
    return "" if detail is None else str(detail)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class FleetClient:
    """REST calls to one Fleet server with one API token.

    Args:
        url: the server's base URL (``http://host:port``, optionally with a path prefix).
        token: the API token, sent as ``Authorization: Bearer``.
        timeout: seconds to wait for a connection or a read.
        ssl_context: for ``https://``; the system's default trust store when omitted.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._ssl = ssl_context or (ssl.create_default_context() if self._tls else None)
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []

    # --- connections -----------------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (``reused=True``) or a new one. Runs on the trio thread."""
        now = time.monotonic()
        while self._idle:
            since, conn = self._idle.pop()
            if now - since < IDLE_REUSE_S:
                return conn, True
            conn.close()
        if self._tls:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            ), False
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout), False

    def close(self) -> None:
        """Close the idle connections (a later call opens new ones)."""
        for _, conn in self._idle:
            conn.close()
        self._idle.clear()

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Response:
        """One request/response on ``conn`` (blocking; runs in a worker thread)."""
        conn.request(method, target, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()  # by Content-Length: never waits for the server to close
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request; return the response whatever its status.

        Raises:
            Unreachable: no connection, or it broke before an answer came.
        """
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        all_headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                response = await trio.to_thread.run_sync(
                    self._exchange, conn, method, target, payload, all_headers,
                    abandon_on_cancel=True,
                )  # fmt: skip
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A reused connection may have been dropped by the server while idle; a GET is
                # safe to repeat on a new one. Anything else is the caller's to know about.
                if reused and attempt == 1 and method == "GET":
                    continue
                raise Unreachable(
                    f"cannot reach the Fleet server at {self.url} ({_why(exc)})"
                ) from exc
            self._idle.append((time.monotonic(), conn))
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None
    ) -> Any:
        """A JSON API call: the decoded body of a 2xx answer (``None`` when empty).

        Raises:
            TokenRefused, ApiError, BadResponse, Unreachable.
        """
        response = await self.request(method, path, body=body, query=query)
        check(response, self.url)
        if not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError as exc:
            raise BadResponse(f"{self.url}{path} did not answer JSON") from exc

    async def output(self, batch_id: str, child_id: str, stream: str, *, start: int = 0) -> bytes:
        """The bytes of one task's log from ``start`` on (a Range request)."""
        path = f"/api/batch_commands/{_q(batch_id)}/tasks/{_q(child_id)}/output"
        headers = {"Accept": "*/*"}
        if start:
            headers["Range"] = f"bytes={start}-"
        response = await self.request("GET", path, query={"stream": stream}, headers=headers)
        if response.status == 416:  # nothing at or beyond ``start``
            return b""
        check(response, self.url)
        # 206 is the range we asked for; a server that ignores Range sends it all (200).
        return response.body if response.status == 206 else response.body[start:]

    # --- the live feed -----------------------------------------------------------------------

    def ws_url(self, path: str) -> str:
        return ("wss" if self._tls else "ws") + self.url[self.url.index(":") :] + path

    @property
    def ws_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self._token}".encode())]

    @property
    def ws_ssl(self) -> ssl.SSLContext | None:
        return self._ssl

    # --- names → records ---------------------------------------------------------------------

    async def find_vps(self, ref: str) -> dict[str, Any]:
        """The VPS with id or name ``ref`` (an id wins over a name that looks like one)."""
        return find(await self.call("GET", "/api/vps"), ref, "VPS")

    async def find_script(self, ref: str) -> dict[str, Any]:
        """The saved script with id or name ``ref``."""
        return find(await self.call("GET", "/api/scripts"), ref, "saved script")


def find(records: list[dict[str, Any]], ref: str, kind: str) -> dict[str, Any]:
    """The record whose ``id`` or ``name`` is ``ref``. Raises ``UsageError``."""
    ref = ref.strip()
    if ref.isdigit():
        for record in records:
            if record["id"] == int(ref):
                return record
    named = [r for r in records if r["name"] == ref]
    if len(named) == 1:
        return named[0]
    if named:
        raise UsageError(f"{len(named)} {kind}s are named {ref!r}: use the id")
    raise UsageError(f"no {kind} with id or name {ref!r}")


def select_targets(
    vpses: list[dict[str, Any]],
    refs: list[str],
    tags: list[str],
    *,
    everything: bool = False,
    online_only: bool = False,
) -> list[dict[str, Any]]:
    """The VPSes a run targets: ``refs`` (ids or names) + every VPS with one of ``tags``.

    Raises:
        UsageError: an unknown id or name, a tag no VPS has, or nothing left to run on.
    """
    chosen: dict[int, dict[str, Any]] = {}
    if everything:
        chosen.update((v["id"], v) for v in vpses)
    for ref in refs:
        vps = find(vpses, ref, "VPS")
        chosen[vps["id"]] = vps
    for tag in tags:
        tagged = [v for v in vpses if tag in v.get("tags", [])]
        if not tagged:
            raise UsageError(f"no VPS has the tag {tag!r}")
        chosen.update((v["id"], v) for v in tagged)
    selected = list(chosen.values())
    if online_only:
        selected = [v for v in selected if v.get("online")]
        if not selected:
            raise UsageError(f"none of the {len(chosen)} selected VPSes is online")
    if not selected:
        raise UsageError("no VPS is registered yet (fleet vps add NAME)")
    return selected


def check(response: Response, url: str) -> None:
    """Raise the error a non-2xx ``response`` stands for."""
    if response.status < 300:
        return
    if response.status in (401, 403):
        raise TokenRefused()
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        raise ApiError(response.status, str(payload["error"]), payload.get("detail"))
    text = response.body[:200].decode("utf-8", "replace").strip()
    raise ApiError(response.status, f"http_{response.status}", text or f"HTTP {response.status}")


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# --- the sans-I/O batch watch ----------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Output to show: ``text`` of one task's stream."""

    child_id: str
    stream: str
    text: str


@dataclass(frozen=True)
class Gap:
    """Bytes ``[start, end)`` of a stream that the feed did not carry; fetch them from the log."""

    child_id: str
    stream: str
    start: int
    end: int


@dataclass(frozen=True)
class Ended:
    """The task reached a terminal status: all of its output has been shown."""

    child_id: str


Item = Chunk | Gap | Ended


@dataclass
class WatchedChild:
    """One task as the client knows it."""

    child_id: str
    vps_id: int
    name: str
    status: str = "PENDING"
    exit_code: int | None = None
    error_message: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    ended: bool = False
    #: Bytes of each stream shown so far. Exact after a ``Gap`` is filled; otherwise
    #: ``offset + len(text.encode())`` of the last chunk, which overshoots a little where the
    #: output was not UTF-8 (so a resync may skip a few bytes, but never repeats any).
    shown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    #: Per connection: output below these offsets came with the snapshot, so it is not new.
    floor: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_CHILD

    def update(self, fields: dict[str, Any]) -> None:
        self.status = str(fields.get("status", self.status))
        self.exit_code = fields.get("exit_code", self.exit_code)
        self.error_message = fields.get("error_message", self.error_message)
        self.started_at = fields.get("agent_started_at", self.started_at)
        self.completed_at = fields.get("agent_completed_at", self.completed_at)


class BatchWatch:
    """The state of one batch as the live feed tells it; no I/O.

    Feed every message to ``on_message``; it returns what to show: ``Chunk`` output, ``Gap``
    (bytes to fetch from the log and pass to ``fill``, which returns the ``Chunk``), and
    ``Ended`` when a task is over. A ``SNAPSHOT`` (the first message of each connection) starts
    the connection over: output produced before it, or while disconnected, comes back as gaps,
    so nothing is lost and nothing is shown twice.

    Args:
        batch_id: the batch to watch.
        output: False to track statuses only (no chunks, no gaps).
    """

    def __init__(self, batch_id: str, *, output: bool = True) -> None:
        self.batch_id = batch_id
        self.output = output
        self.status: str | None = None
        self.children: dict[str, WatchedChild] = {}
        self.snapshots = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL_BATCH

    def counts(self) -> tuple[int, int, int]:
        """``(done, failed, running)`` task counts."""
        done = failed = 0
        for child in self.children.values():
            if child.terminal:
                done += 1
                failed += child.status != "SUCCESS"
        return done, failed, len(self.children) - done

    def on_message(self, message: dict[str, Any]) -> list[Item]:
        kind = message.get("type")
        if kind == "SNAPSHOT":
            return self.on_snapshot(message.get("batch") or {})
        if kind == "BATCH_TASK_UPDATE":
            self.status = str(message.get("overall_status", self.status))
            return []
        if kind == "CHILD_TASK_UPDATE":
            child = self.children.get(str(message.get("child_command_id")))
            if child is None:
                return []
            child.update(message)
            return self._ended(child)
        if kind == "NEW_LOG_OUTPUT":
            return self._log(message)
        return []  # an event this client does not know: ignore it

    def on_snapshot(self, batch: dict[str, Any]) -> list[Item]:
        """Start over from the batch's full state (also fine with a final ``GET`` body)."""
        self.snapshots += 1
        self.status = str(batch.get("overall_status", self.status))
        items: list[Item] = []
        for task in batch.get("tasks", []):
            child_id = str(task["child_command_id"])
            child = self.children.get(child_id)
            if child is None:
                child = WatchedChild(child_id, int(task["vps_id"]), str(task["vps_name"]))
                self.children[child_id] = child
            child.update(task)
            for stream in STREAMS:
                size = int(task.get(f"{stream}_bytes") or 0)
                child.floor[stream] = size
                if self.output and size > child.shown[stream]:
                    items.append(Gap(child_id, stream, child.shown[stream], size))
                child.shown[stream] = min(child.shown[stream], size)
        for child in self.children.values():
            items += self._ended(child)
        return items

    def fill(self, gap: Gap, data: bytes) -> Chunk:
        """The output of ``gap`` once its bytes were fetched (at most ``gap.end - gap.start``)."""
        data = data[: gap.end - gap.start]
        child = self.children[gap.child_id]
        child.shown[gap.stream] = max(child.shown[gap.stream], gap.start + len(data))
        return Chunk(gap.child_id, gap.stream, data.decode("utf-8", "replace"))

    def _log(self, message: dict[str, Any]) -> list[Item]:
        child = self.children.get(str(message.get("child_command_id")))
        stream = message.get("stream")
        if not self.output or child is None or stream not in STREAMS:
            return []
        text = str(message.get("data", ""))
        offset = int(message.get("offset") or 0)
        encoded = text.encode("utf-8", "surrogatepass")
        below = child.floor[stream] - offset
        if below >= len(encoded):
            return []  # already part of this connection's snapshot
        if below > 0:
            text = encoded[below:].decode("utf-8", "replace")
        child.shown[stream] = max(child.shown[stream], offset + len(encoded))
        return [Chunk(child.child_id, stream, text)] if text else []

    def _ended(self, child: WatchedChild) -> list[Item]:
        if child.terminal and not child.ended:
            child.ended = True
            return [Ended(child.child_id)]
        return []


async def follow(
    client: FleetClient,
    watch: BatchWatch,
    show: Callable[[Iterable[Item]], None],
) -> None:
    """Follow the batch's live feed until its status is final.

    Every message's items go to ``show`` (gaps already filled). A connection the server closes
    with 1013 is reopened at once; other failures are retried with a growing delay and give up
    after ``FEED_ATTEMPTS`` in a row. Cancelling closes the WebSocket.

    Raises:
        TokenRefused, ApiError (404: no such batch), Unreachable, BadResponse.
    """
    url = client.ws_url(f"/ws/batch_commands/{_q(watch.batch_id)}")
    failures = 0
    while not watch.final:
        try:
            async with open_websocket_url(
                url,
                client.ws_ssl,
                extra_headers=client.ws_headers,
                connect_timeout=30,
                disconnect_timeout=5,
            ) as ws:
                while not watch.final:
                    raw = await ws.get_message()
                    try:
                        message = json.loads(raw)
                    except ValueError as exc:
                        raise BadResponse("the live feed sent something that is not JSON") from exc
                    items = watch.on_message(message)
                    failures = 0
                    show(await fill_gaps(client, watch, items))
            return
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason is not None else None
            if code == CLOSE_POLICY:
                detail = (exc.reason.reason if exc.reason else None) or "no such batch"
                raise ApiError(404, "not_found", detail) from None
            if code == CLOSE_TRY_AGAIN:
                continue
            failures += 1
            why = f"closed with code {code}"
        except ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise TokenRefused() from None
            if 400 <= exc.status_code < 500:
                raise ApiError(
                    exc.status_code, "rejected", f"the live feed refused: {url}"
                ) from None
            failures += 1
            why = f"HTTP {exc.status_code}"
        except (HandshakeError, OSError) as exc:
            failures += 1
            why = _why(exc.__cause__ or exc) if isinstance(exc, HandshakeError) else _why(exc)
        if watch.final:  # the socket failed while closing, after the end: nothing is missing
            return
        if failures >= FEED_ATTEMPTS:
            raise Unreachable(f"lost the live feed from {client.url} ({why})")
        await trio.sleep(min(0.25 * 2**failures, 5.0))


async def fill_gaps(client: FleetClient, watch: BatchWatch, items: list[Item]) -> list[Item]:
    """``items`` with every ``Gap`` fetched from its log and turned into a ``Chunk``."""
    filled: list[Item] = []
    for item in items:
        if isinstance(item, Gap):
            data = await client.output(watch.batch_id, item.child_id, item.stream, start=item.start)
            filled.append(watch.fill(item, data))
        else:
            filled.append(item)
    return filled
