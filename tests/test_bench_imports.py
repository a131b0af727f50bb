"""Every benchmark ``python -m bench`` can run imports (a broken one used to surface only at the
end of a 12-minute full run)."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_benchmark_imports(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.run)
    assert callable(module.render)
