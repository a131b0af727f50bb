"""What every route shares: the services, the one error format, JSON in and out, arguments.

Errors are always ``{"error": CODE, "detail": …}``: a route raises ``ApiError`` (or a
``fleet.core.FleetError``, which carries its own status and code) and the app's error handlers
answer it. Nothing answers a traceback, and bad input is never a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quart import Response, request, websocket

from fleet import core
from fleet.server.agents import AgentRegistry, Credentials
from fleet.server.config import ServerConfig
from fleet.server.dbthread import DbThread
from fleet.server.health import StoreHealth
from fleet.server.supervisor import Supervisor

from .feed import FeedHub, Overrun, Subscription

__all__ = [
    "ApiError",
    "Services",
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
    token_hashes: set[str] = field(default_factory=set)
    grpc_address: str = ""
    health: StoreHealth = field(default_factory=StoreHealth)


def error_response(status: int, code: str, detail: Any) -> Response:
    body = json.dumps({"error": code, "detail": detail})
    return Response(body, status=status, content_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


async def json_body() -> Any:
    """The request's JSON body; malformed JSON is a 400 that says where."""
    raw = await request.get_data(cache=False)
    if not raw:
        raise ApiError(400, "bad_request", "expected a JSON body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", "the body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"malformed JSON: {exc.msg} at {exc.pos}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_request", "the JSON body is nested too deeply") from exc


def int_arg(name: str, default: int, *, low: int, high: int) -> int:
    """The query argument ``name`` as an integer in ``[low, high]``; anything else is a 400."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "bad_request", f"{name} must be an integer in [{low}, {high}]")
    return int(raw)


def path_id(value: str, kind: str) -> int:
    """A numeric id from the path; one that cannot name anything is ``core.NotFound`` (404)."""
    parsed = core.parse_id(value)
    if parsed is None:
        raise core.NotFound(kind, repr(value))
    return parsed


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
