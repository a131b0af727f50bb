"""``fleet.core.__all__`` is complete and exact (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fleet.core


def _submodules() -> list[str]:
    return [info.name for info in pkgutil.iter_modules(fleet.core.__path__)]


def test_all_names_are_unique_and_importable() -> None:
    assert len(fleet.core.__all__) == len(set(fleet.core.__all__))
    namespace: dict[str, object] = {}
    exec("from fleet.core import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(fleet.core.__all__)
    for name in fleet.core.__all__:
        assert getattr(fleet.core, name) is namespace[name]


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(fleet.core).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and name != "annotations"  # from __future__
    }
    assert public == set(fleet.core.__all__)


def test_every_submodule_export_is_reexported() -> None:
    for name in _submodules():
        module = importlib.import_module(f"fleet.core.{name}")
        assert name.startswith("_"), f"fleet.core.{name} should be private (_{name})"
        for member in getattr(module, "__all__", []):
            assert member in fleet.core.__all__, f"{name}.{member} is not in fleet.core.__all__"
            assert getattr(fleet.core, member) is getattr(module, member)


def test_exported_classes_and_functions_live_in_fleet_core() -> None:
    for name in fleet.core.__all__:
        value = getattr(fleet.core, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("fleet.core."), name
