"""Fleet's exception tree.

::

    FleetError
     ├── InvalidTransition      an event that the current status does not accept (409)
     ├── ValidationError        a request body that does not describe a valid request (422)
     │    └── Conflict          valid, but clashes with what exists: a taken name (409)
     └── NotFound               an id that names nothing (404)

Each class carries ``http_status``: a hint for the HTTP edge, like h11's ``error_status_hint``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "FleetError", "InvalidTransition", "NotFound", "ValidationError"]


class FleetError(Exception):
    """Root of every error Fleet raises on purpose."""

    http_status = 500
    code = "internal_error"


class InvalidTransition(FleetError):
    """An event arrived that the state machine does not accept in its current state.

    Nothing changed: the machine is exactly as it was before the event.
    """

    http_status = 409
    code = "invalid_transition"

    def __init__(self, state: Any, event: Any) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state}")
        self.state = state
        self.event = event


class ValidationError(FleetError):
    """A request body is invalid; ``errors`` lists every problem found, with its field."""

    http_status = 422
    code = "validation_error"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['reason']}" for e in errors))
        self.errors = errors


class Conflict(ValidationError):
    """A valid request that clashes with what exists (a name already taken)."""

    http_status = 409
    code = "conflict"


class NotFound(FleetError):
    """The id names nothing of that kind."""

    http_status = 404
    code = "not_found"

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"no {kind} with id {ident}")
        self.kind = kind
        self.ident = ident
