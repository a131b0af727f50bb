"""What every route shares: the services, the one error format, JSON in and out, arguments.

Errors are always ``{"error": CODE, "detail": …}``: a route raises ``ApiError`` (or a
``fleet.core.FleetError``, which carries its own status and code) and the app's error handlers
answer it. Nothing answers a traceback, and bad input is never a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import Response, request, websocket

from fleet import core
from fleet.server.agents import AgentRegistry, Credentials
from fleet.server.cluster import ClusterNode
from fleet.server.config import ServerConfig
from fleet.server.dbthread import DbThread
from fleet.server.health import StoreHealth
from fleet.server.logins import LoginThrottle
from fleet.server.passwords import Passwords
from fleet.server.reports import valid_command_id
from fleet.server.supervisor import Supervisor

from .feed import FeedHub, Overrun, Subscription

__all__ = [
    "MAX_DIGITS",
    "ApiError",
    "Services",
    "command_path_id",
    "error_response",
    "int_arg",
    "json_body",
    "json_response",
    "path_id",
    "pump",
]


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass
class Services:
    """Everything the routes use, built once in ``serve`` (no globals)."""

    config: ServerConfig
    db: DbThread
    credentials: Credentials
    registry: AgentRegistry
    supervisor: Supervisor
    hub: FeedHub
    passwords: Passwords = field(default_factory=Passwords)
    throttle: LoginThrottle = field(default_factory=lambda: LoginThrottle(clock=trio.current_time))
    grpc_address: str = ""
    health: StoreHealth = field(default_factory=StoreHealth)
    #: This node's cluster membership (``--cluster``), else None.
    cluster: ClusterNode | None = None


def error_response(status: int, code: str, detail: Any) -> Response:
    body = json.dumps({"error": code, "detail": detail})
    return Response(body, status=status, content_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


#: A number (JSON or query) of more digits than this is refused with 422: no id,
#: count or duration needs more, and Python's int conversion limit (4,300 digits) never shows.
MAX_DIGITS = 20


class _TooManyDigits(ValueError):
    """A JSON number longer than ``MAX_DIGITS`` digits (raised before converting it)."""


def _check_digits(literal: str) -> str:
    if sum(ch.isdigit() for ch in literal) > MAX_DIGITS:
        raise _TooManyDigits(literal[:30])
    return literal


def _parse_int(literal: str) -> int:
    return int(_check_digits(literal))


def _parse_float(literal: str) -> float | int:
    # JSON has numbers, not ints and floats: ``5.0`` and ``5e0`` are the integer 5 (as JSON
    # Schema's ``integer`` says), so the server and its OpenAPI document agree on them.
    number = float(_check_digits(literal))
    return int(number) if number.is_integer() and abs(number) < 10**MAX_DIGITS else number


def _no_constant(literal: str) -> Any:
    raise json.JSONDecodeError(f"{literal} is not JSON", literal, 0)


def _number_error(what: str) -> core.ValidationError:
    return core.ValidationError(
        [{"field": what, "reason": f"numbers have at most {MAX_DIGITS} digits"}]
    )


async def json_body(*, optional: bool = False) -> Any:
    """The request's JSON body; malformed JSON is a 400 that says where (``optional``: an empty
    body is ``None``).

    A body still arriving after ``BODY_TIMEOUT`` is a 408 (Quart raises it); a number of more
    than ``MAX_DIGITS`` digits is a 422; ``NaN`` and ``Infinity`` are not JSON (400).
    """
    raw = await request.get_data(cache=False)
    if not raw:
        if optional:
            return None
        raise ApiError(400, "bad_request", "expected a JSON body")
    try:
        return json.loads(
            raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant
        )
    except _TooManyDigits as exc:
        raise _number_error("body") from exc
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", "the body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"malformed JSON: {exc.msg} at {exc.pos}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_request", "the JSON body is nested too deeply") from exc


def int_arg(name: str, default: int, *, low: int, high: int) -> int:
    """The query argument ``name`` as an integer in ``[low, high]``; anything else is a 422."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if len(raw) > MAX_DIGITS and raw.isdigit():
        raise _number_error(name)
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise core.ValidationError(
            [{"field": name, "reason": f"must be an integer in [{low}, {high}]"}]
        )
    return int(raw)


def path_id(value: str, kind: str) -> int:
    """A numeric id from the path; one that cannot name anything is ``core.NotFound`` (404)."""
    parsed = core.parse_id(value)
    if parsed is None:
        raise core.NotFound(kind, repr(value[:40]))
    return parsed


def command_path_id(value: str, kind: str) -> str:
    """A batch or child id from the path, checked by shape before any lookup (404 if it has
    none a server generates: blank, too long, characters no id has)."""
    if not valid_command_id(value):
        raise core.NotFound(kind, repr(value[:40]))
    return value


async def pump(sub: Subscription) -> None:
    """Send a feed subscription's events to the WebSocket until the client falls behind.

    An overrun subscriber is closed with 1013 ("try again later"): the client reconnects and
    starts over from a fresh snapshot.
    """
    while True:
        try:
            items = await sub.get()
        except Overrun:
            await websocket.close(1013, "the client fell behind; reconnect for a new snapshot")
            return
        for text in items:
            await websocket.send(text)
