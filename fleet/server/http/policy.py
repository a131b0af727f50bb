"""Who may do what: the one place the server's access rules live.

Two questions, both answered here and nowhere else:

1. **May this role call this route?** ``RULES`` maps every route of the app (method + Quart rule,
   ``WS`` for a WebSocket) to an ``Access`` level. The app checks it before any handler runs
   (``check_route``); a route missing from the table is refused (and a test that walks
   ``app.url_map`` fails). Roles are cumulative: ``viewer`` reads batches, logs, feeds, VPSes
   and scripts; ``operator`` also runs, terminates and re-runs batches and manages scripts;
   ``admin`` also manages VPSes (and sees their secrets), users, everyone's tokens and the audit
   log.
2. **May this user see or target these VPSes?** A user with ``allowed_tags`` sees and targets only
   the VPSes having one of them (empty: every VPS). Handlers ask ``vps_visible``,
   ``visible_vps_ids``, ``check_targets`` (a batch with any target outside → 403 naming them) and
   ``check_batch`` (a batch is visible only if all its targets are; otherwise it does not exist
   for the caller: 404), for REST, the WebSocket feeds and log downloads alike.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet import core
from fleet.core import Role
from fleet.server.records import UserRecord, VpsRecord
from fleet.server.store import Store

from .common import ApiError, Services

__all__ = [
    "RULES",
    "Access",
    "Principal",
    "Rule",
    "Scope",
    "check_batch",
    "check_route",
    "check_targets",
    "rule_for",
    "visible_vps_ids",
    "vps_visible",
]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, and how they proved it (``session`` cookie or bearer ``token``).

    ``credential`` is the digest of the session id or token presented (logout ends that one).
    """

    user_id: int
    username: str
    role: Role
    allowed_tags: tuple[str, ...]
    via: str
    credential: str

    @classmethod
    def of(cls, user: UserRecord, *, via: str, credential: str) -> Principal:
        return cls(user.id, user.username, user.role, user.allowed_tags, via, credential)

    @property
    def scoped(self) -> bool:
        return bool(self.allowed_tags) and self.role is not Role.ADMIN


class Access(enum.Enum):
    """What a route needs: nothing, any signed-in user, or at least a role."""

    PUBLIC = "public"
    SIGNED_IN = "signed_in"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Scope(enum.Enum):
    """Which resources of the route ``allowed_tags`` narrows (and how the route checks it)."""

    NONE = "none"  # nothing tag-scoped (scripts, users, tokens, audit)
    VPS_LIST = "vps_list"  # lists only VPSes in scope (REST and the /ws/vps feed)
    VPS = "vps"  # one VPS: out of scope → 404
    BATCH_LIST = "batch_list"  # lists only batches whose every target is in scope
    BATCH = "batch"  # one batch (REST, feed, log download): not all targets in scope → 404
    TARGETS = "targets"  # creates a batch: any target out of scope → 403 naming them


@dataclass(frozen=True)
class Rule:
    access: Access
    scope: Scope = Scope.NONE


_P, _S = Rule(Access.PUBLIC), Rule(Access.SIGNED_IN)
_V, _O, _A = Access.VIEWER, Access.OPERATOR, Access.ADMIN
_BATCH = "/api/batch_commands/<batch_id>"

#: Every route: (method or ``WS``, Quart rule) → what it needs. HEAD follows GET; OPTIONS needs
#: a signed-in user on the API (it is answered by the framework, not a handler).
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/"): _P,
    ("GET", "/ui/<path:name>"): _P,
    ("GET", "/favicon.ico"): _P,
    ("GET", "/api/openapi.json"): _P,
    ("POST", "/api/login"): _P,
    ("POST", "/api/logout"): _S,
    ("GET", "/api/me"): _S,
    ("GET", "/api/tokens"): _S,
    ("POST", "/api/tokens"): _S,
    ("DELETE", "/api/tokens/<token_id>"): _S,
    ("GET", "/api/users"): Rule(_A),
    ("POST", "/api/users"): Rule(_A),
    ("GET", "/api/users/<user_id>"): Rule(_A),
    ("PUT", "/api/users/<user_id>"): Rule(_A),
    ("DELETE", "/api/users/<user_id>"): Rule(_A),
    ("GET", "/api/audit"): Rule(_A),
    ("GET", "/api/vps"): Rule(_V, Scope.VPS_LIST),
    ("POST", "/api/vps"): Rule(_A),
    ("GET", "/api/vps/<vps_id>"): Rule(_V, Scope.VPS),
    ("PUT", "/api/vps/<vps_id>"): Rule(_A),
    ("PATCH", "/api/vps/<vps_id>"): Rule(_A),
    ("DELETE", "/api/vps/<vps_id>"): Rule(_A),
    ("POST", "/api/vps/<vps_id>/rotate_secret"): Rule(_A),
    ("WS", "/ws/vps"): Rule(_V, Scope.VPS_LIST),
    ("GET", "/api/scripts"): Rule(_V),
    ("POST", "/api/scripts"): Rule(_O),
    ("GET", "/api/scripts/<script_id>"): Rule(_V),
    ("PUT", "/api/scripts/<script_id>"): Rule(_O),
    ("DELETE", "/api/scripts/<script_id>"): Rule(_O),
    ("GET", "/api/batch_commands"): Rule(_V, Scope.BATCH_LIST),
    ("POST", "/api/batch_commands"): Rule(_O, Scope.TARGETS),
    ("GET", _BATCH): Rule(_V, Scope.BATCH),
    ("POST", f"{_BATCH}/terminate"): Rule(_O, Scope.BATCH),
    ("POST", f"{_BATCH}/rerun"): Rule(_O, Scope.BATCH),
    ("POST", f"{_BATCH}/tasks/<child_id>/terminate"): Rule(_O, Scope.BATCH),
    ("GET", f"{_BATCH}/tasks/<child_id>/output"): Rule(_V, Scope.BATCH),
    ("WS", "/ws/batch_commands/<batch_id>"): Rule(_V, Scope.BATCH),
}

_NEEDS = {Access.VIEWER: Role.VIEWER, Access.OPERATOR: Role.OPERATOR, Access.ADMIN: Role.ADMIN}


def rule_for(method: str, rule: str, *, websocket: bool = False) -> Rule | None:
    if websocket:
        return RULES.get(("WS", rule))
    if method == "HEAD":
        method = "GET"
    if method == "OPTIONS":
        return _P if RULES.get(("GET", rule)) == _P or not rule.startswith("/api/") else _S
    return RULES.get((method, rule))


def check_route(principal: Principal | None, method: str, rule: str, *, websocket: bool) -> None:
    """Raise 401 (no valid credential) or 403 (role too low, or a route with no rule)."""
    found = rule_for(method, rule, websocket=websocket)
    if found is None:
        raise ApiError(403, "forbidden", "no access rule covers this route")
    if found.access is Access.PUBLIC:
        return
    if principal is None:
        raise ApiError(401, "unauthorized", "a valid API token or session is required")
    needed = _NEEDS.get(found.access)
    if needed is not None and not principal.role.at_least(needed):
        raise ApiError(
            403,
            "forbidden",
            f"this needs the {needed.value} role; {principal.username} is {principal.role.value}",
        )


# -- scope (allowed_tags) ------------------------------------------------------------------


def vps_visible(principal: Principal, vps: VpsRecord) -> bool:
    return not principal.scoped or not set(vps.tags).isdisjoint(principal.allowed_tags)


def visible_vps_ids(principal: Principal, every_vps: Iterable[VpsRecord]) -> set[int] | None:
    """The ids of the VPSes ``principal`` may see, or ``None`` for every VPS."""
    if not principal.scoped:
        return None
    return {v.id for v in every_vps if vps_visible(principal, v)}


def check_targets(
    principal: Principal, targets: Iterable[int], known: Mapping[int, VpsRecord]
) -> None:
    """A batch may target only VPSes in scope: else 403 naming the others (by id)."""
    if not principal.scoped:
        return
    outside = sorted(v for v in set(targets) if v in known and not vps_visible(principal, known[v]))
    if outside:
        raise ApiError(
            403,
            "forbidden",
            {
                "reason": "these VPSes are outside your allowed tags",
                "allowed_tags": list(principal.allowed_tags),
                "vps_ids": outside,
            },
        )


async def check_batch(
    services: Services, principal: Principal, batch_id: str, vps_ids: Iterable[int] | None = None
) -> None:
    """A batch is visible only if every one of its targets is: else it is not found (404).

    ``vps_ids`` are the batch's targets when the caller has them; otherwise they are read.
    """
    if not principal.scoped:
        return
    if vps_ids is None:
        run = services.supervisor.get(batch_id)
        record = (
            run.snapshot() if run is not None else await services.db.run(Store.get_batch, batch_id)
        )
        vps_ids = [c.vps_id for c in record.children]
    wanted = set(vps_ids)
    known = await services.db.run(Store.get_vps_many, wanted)
    if len(known) != len(wanted) or not all(vps_visible(principal, v) for v in known.values()):
        raise core.NotFound("batch", batch_id)
