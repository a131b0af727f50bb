"""The REST client behind the ``fleet`` CLI, over the standard library, and its errors.

It ships in the light base install, so it uses trio and the standard library only, and never
imports ``fleet.server``. ``FleetClient`` makes REST calls with ``http.client`` in worker threads
(``trio.to_thread.run_sync``), keeping a few idle keep-alive connections. It reads each body by
its Content-Length, because Hypercorn's trio worker ignores ``Connection: close``. The live feed
is ``fleet.cli.watch``.

Errors form one small tree. Each has a one-line ``str()`` and the CLI exit code it maps to (the
``EXIT_*`` codes below are every code ``fleet`` exits with)::

    ClientError (3)
     ├─ Unreachable (3)     the server cannot be reached, or the feed was lost for good
     ├─ TokenRefused (3)    401/403
     ├─ UsageError (2)      bad settings, an unknown name, nothing to run on
     ├─ BadResponse (3)     something that is not the API's JSON
     └─ ApiError (2 for 4xx, 3 for 5xx): {"error": code, "detail": …}
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import trio

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "ApiError",
    "BadResponse",
    "ClientError",
    "FleetClient",
    "TokenRefused",
    "Unreachable",
    "UsageError",
    "batch_path",
    "connection_problem",
    "feed_path",
    "select_targets",
]

EXIT_OK = 0
EXIT_FAILED = 1  # fleet run: at least one VPS did not succeed
EXIT_USAGE = 2  # bad flags or settings, or a request the server refused as invalid (4xx)
EXIT_SERVER = 3  # cannot reach the server, token refused, or a server error
EXIT_INTERRUPTED = 130

#: An idle keep-alive connection older than this is closed rather than reused: Hypercorn drops
#: idle connections after 5 s, and a request sent on a dropped one fails.
IDLE_REUSE_S = 2.0


class ClientError(Exception):
    """Anything that stops a CLI command; ``str()`` is one line, ``exit_code`` its exit code."""

    exit_code = EXIT_SERVER


class Unreachable(ClientError):
    """The server cannot be reached (or the live feed was lost and did not come back)."""


class TokenRefused(ClientError):
    """The server answered 401 (no valid token) or 403 (the token's user may not do that)."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail or "the token was refused by the server (check --token / FLEET_TOKEN)"
        )


class UsageError(ClientError):
    """The request cannot be made as asked: bad settings, an unknown name, no target (exit 2)."""

    exit_code = EXIT_USAGE


class BadResponse(ClientError):
    """The server answered something that is not the API's JSON."""


class ApiError(ClientError):
    """An API error answer ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        text = describe_detail(detail) or code
        super().__init__(f"invalid request: {text}" if status in (400, 409, 422) else text)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return EXIT_USAGE if 400 <= self.status < 500 else EXIT_SERVER


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
        all_headers = {"Accept": "application/json"}
        if self._token:  # ``fleet login`` has none yet
            all_headers["Authorization"] = f"Bearer {self._token}"
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
                    f"cannot reach the Fleet server at {self.url} ({connection_problem(exc)})"
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
        check(response)
        if not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError as exc:
            raise BadResponse(f"{self.url}{path} did not answer JSON") from exc

    async def output(self, batch_id: str, child_id: str, stream: str, *, start: int = 0) -> bytes:
        """The bytes of one task's log from ``start`` on (a Range request)."""
        path = batch_path(batch_id, "tasks", child_id, "output")
        headers = {"Accept": "*/*"}
        if start:
            headers["Range"] = f"bytes={start}-"
        response = await self.request("GET", path, query={"stream": stream}, headers=headers)
        if response.status == 416:  # nothing at or beyond ``start``
            return b""
        check(response)
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


def check(response: Response) -> None:
    """Raise the error a non-2xx ``response`` stands for."""
    if response.status < 300:
        return
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if response.status == 401:
        raise TokenRefused()
    if response.status == 403:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        raise TokenRefused(f"refused: {_one_line(detail)}" if detail else None)
    if isinstance(payload, dict) and "error" in payload:
        raise ApiError(response.status, str(payload["error"]), payload.get("detail"))
    text = response.body[:200].decode("utf-8", "replace").strip()
    raise ApiError(response.status, f"http_{response.status}", text or f"HTTP {response.status}")


def _one_line(detail: Any) -> str:
    if isinstance(detail, dict):
        reason = detail.get("reason", "")
        ids = detail.get("vps_ids")
        return f"{reason}: VPS {', '.join(map(str, ids))}" if ids else str(reason or detail)
    return " ".join(str(detail).split())


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def batch_path(batch_id: str, *rest: str) -> str:
    """``/api/batch_commands/{id}/…`` with each part quoted."""
    return "/".join(["/api/batch_commands", *(_q(part) for part in (batch_id, *rest))])


def feed_path(batch_id: str) -> str:
    """``/ws/batch_commands/{id}``, the batch's live feed (see ``FleetClient.ws_url``)."""
    return f"/ws/batch_commands/{_q(batch_id)}"


def connection_problem(exc: BaseException) -> str:
    """Why a connection failed, in a few words for an error message."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted: {exc.verify_message}; see --ca-file"
    return str(exc) or type(exc).__name__
