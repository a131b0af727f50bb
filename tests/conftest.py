from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's FLEET_* settings (httpx's clean_environ)."""
    for name in list(os.environ):
        if name.startswith("FLEET_") and name != "FLEET_TEST_POSTGRES_DSN":
            monkeypatch.delenv(name)
    return
