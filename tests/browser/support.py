"""Types shared by the browser tests and their fixtures."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class FleetServer:
    """A running demo server: ``login_url`` is the printed ``/?token=`` URL."""

    login_url: str
    origin: str
    token: str
    data_dir: pathlib.Path
    output: list[str]


@dataclasses.dataclass
class Session:
    """One test's page plus everything it observed."""

    page: Any
    server: FleetServer
    requests: list[str] = dataclasses.field(default_factory=list)
    websockets: list[str] = dataclasses.field(default_factory=list)
    dialogs: list[str] = dataclasses.field(default_factory=list)
    page_errors: list[str] = dataclasses.field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        """Every request that went anywhere but the server (data:/blob: URLs are local)."""
        ws_origin = self.server.origin.replace("http", "ws", 1)
        bad = [
            u
            for u in self.requests
            if not (u.startswith(f"{self.server.origin}/") or u.startswith(("data:", "blob:")))
        ]
        bad += [u for u in self.websockets if not u.startswith(f"{ws_origin}/")]
        return bad
