"""The audit log: ``GET /api/audit?actor=&action=&since=&until=&limit=
&before=`` → ``{items, next}``, newest first; ``next`` is the ``before`` of the next page."""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from fleet import core
from fleet.server.records import AuditRecord
from fleet.server.store import Store
from fleet.server.views import iso

from .common import Services, int_arg, json_response

__all__ = ["audit_view", "register"]

_QUERY = frozenset({"actor", "action", "since", "until", "limit", "before"})


def audit_view(entry: AuditRecord) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "details": entry.details,
        "source_ip": entry.source_ip,
        "outcome": entry.outcome,
    }


def _bad(name: str, reason: str) -> core.ValidationError:
    return core.ValidationError([{"field": name, "reason": reason}])


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_arg(name: str, limit: int) -> str | None:
    value = request.args.get(name)
    if value is None:
        return None
    if len(value) > limit or "\x00" in value or (not value.isascii() and not _utf8(value)):
        raise _bad(name, f"at most {limit} characters of text")
    return value


def _time_arg(name: str) -> Any:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return core.parse_timestamp(value, name)
    except core.ValidationError as exc:
        raise _bad(name, "must be an ISO-8601 timestamp") from exc


def register(app: QuartTrio, services: Services) -> None:
    @app.get("/api/audit")
    async def audit() -> Response:
        unknown = sorted(set(request.args) - _QUERY)
        if unknown:
            raise core.ValidationError(
                [{"field": n, "reason": "unknown query parameter"} for n in unknown]
            )
        action = _text_arg("action", 64)
        if action is not None and action not in core.AUDIT_ACTIONS:
            raise _bad("action", "unknown action")
        items, next_before = await services.db.run(
            Store.list_audit,
            actor=_text_arg("actor", 200),
            action=action,
            since=_time_arg("since"),
            until=_time_arg("until"),
            before=int_arg("before", 0, low=1, high=2**62) or None,
            limit=int_arg("limit", 100, low=1, high=1000),
        )
        return json_response({"items": [audit_view(e) for e in items], "next": next_before})
