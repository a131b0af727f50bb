"""The command tree of ``fleet``: each command group module adds its commands to it.

A command is an ``async def cmd_*(client, args) -> int`` (the exit code); ``leaf`` registers it
under a group (or at the top) with the common settings flags, so ``fleet vps list --url U``
works as well as ``fleet --url U vps list``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from fleet.core import parse_limit

__all__ = [
    "Command",
    "CommandTree",
    "add_param_flag",
    "concurrency",
    "count",
    "error_limit",
    "parameters",
    "seconds",
    "split_list",
]

Command = Callable[..., Awaitable[int]]
FORMATTER = argparse.RawDescriptionHelpFormatter


class CommandTree:
    """The subcommands of one parser, each leaf inheriting the ``common`` flags."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
        self._common = common
        self.top = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def group(self, name: str, help: str) -> Any:
        """A command group (``fleet NAME ACTION``); pass it to ``leaf``."""
        q = self.top.add_parser(name, help=help, description=help)
        return q.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(
        self, parent: Any, name: str, func: Command, help: str, **kw: Any
    ) -> argparse.ArgumentParser:
        """The command ``name`` under ``parent`` (a group, or ``self.top``), running ``func``."""
        q: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, parents=[self._common], formatter_class=FORMATTER,
            **kw,
        )  # fmt: skip
        q.set_defaults(func=func)
        return q


def split_list(values: list[str]) -> list[str]:
    """``["a,b", " c"]`` (a repeated ``--flag a,b``) as ``["a", "b", "c"]``."""
    return [v.strip() for vs in values for v in vs.split(",") if v.strip()]


def seconds(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a whole number of seconds (0 = no limit)")
    return int(text)


def _limit(text: str, minimum: int) -> int | str:
    value: object = int(text) if text.isdigit() else text
    try:
        return parse_limit(value, minimum=minimum)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def concurrency(text: str) -> int | str:
    """``--max-concurrency``: N (at least 1) or N% of the targets."""
    return _limit(text, 1)


def error_limit(text: str) -> int | str:
    """``--max-errors``: N (0 = stop at the first error) or N% of the targets."""
    return _limit(text, 0)


def add_param_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "-p", "--param", action="append", default=[], type=_pair, metavar="NAME=VALUE", help=help
    )


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"-p wants NAME=VALUE, not {item!r}")
    return name, value


def parameters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``-p NAME=VALUE`` flags as a dict (the server checks names and values)."""
    return dict(pairs)


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a whole number")
    return int(text)
