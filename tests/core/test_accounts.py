"""Roles and the validation of teams input (users, logins, tokens, timestamps)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fleet import core
from fleet.core import Role

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
GOOD = {"username": "alice", "password": "x" * 12, "role": "operator"}


def fields(exc: pytest.ExceptionInfo[core.ValidationError]) -> list[str]:
    return [e["field"] for e in exc.value.errors]


def test_roles_are_cumulative() -> None:
    assert Role.ADMIN.at_least(Role.OPERATOR)
    assert Role.OPERATOR.at_least(Role.VIEWER)
    assert not Role.VIEWER.at_least(Role.OPERATOR)


def test_a_valid_user_is_normalised() -> None:
    out = core.validate_user_body(GOOD | {"allowed_tags": [" web ", "web", "db"]})
    assert out == {
        "username": "alice",
        "password": "x" * 12,
        "role": Role.OPERATOR,
        "allowed_tags": ["web", "db"],
    }
    assert core.validate_user_body(GOOD)["allowed_tags"] == []
    assert core.validate_user_body(GOOD | {"allowed_tags": None})["allowed_tags"] == []
    assert core.validate_user_body({"role": "viewer"}, partial=True) == {"role": Role.VIEWER}
    assert core.validate_user_body({"allowed_tags": ["web"]}, partial=True) == {
        "allowed_tags": ["web"]
    }


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        (GOOD | {"password": "x" * 11}, ["password"]),
        (GOOD | {"password": "x" * 1025}, ["password"]),
        (GOOD | {"password": "x" * 12 + "\x00"}, ["password"]),
        (GOOD | {"password": 5}, ["password"]),
        (GOOD | {"role": "root"}, ["role"]),
        (GOOD | {"username": "-x"}, ["username"]),
        (GOOD | {"username": "a" * 65}, ["username"]),
        (GOOD | {"allowed_tags": "web"}, ["allowed_tags"]),
        (GOOD | {"allowed_tags": ["a b"]}, ["allowed_tags"]),
        (GOOD | {"allowed_tags": ["t"] * 33}, ["allowed_tags"]),
        (GOOD | {"role": "admin", "allowed_tags": ["web"]}, ["allowed_tags"]),
        (GOOD | {"extra": 1}, ["extra"]),
        ({}, ["username", "password", "role"]),
    ],
)
def test_bad_users_list_every_problem(body: dict[str, object], bad: list[str]) -> None:
    with pytest.raises(core.ValidationError) as exc:
        core.validate_user_body(body)
    assert fields(exc) == bad


def test_not_an_object() -> None:
    for check in (core.validate_user_body, core.validate_login_body):
        with pytest.raises(core.ValidationError):
            check([])


def test_login_bodies() -> None:
    assert core.validate_login_body({"username": "a", "password": "b"}) == {
        "username": "a",
        "password": "b",
    }
    assert core.validate_login_body({"token": "t"}) == {"token": "t"}
    with pytest.raises(core.ValidationError) as exc:
        core.validate_login_body({"username": "", "password": None})
    assert fields(exc) == ["username", "password"]
    with pytest.raises(core.ValidationError):
        core.validate_login_body({"token": ""})


def test_token_bodies() -> None:
    assert core.validate_token_body({"name": " ci "}, now=NOW) == {"name": "ci", "expires_at": None}
    later = core.validate_token_body({"name": "ci", "expires_at": "2026-12-01T00:00:00Z"}, now=NOW)
    assert later["expires_at"] == datetime(2026, 12, 1, tzinfo=timezone.utc)
    for body in (
        {"name": "ci", "expires_at": "2026-11-29"},
        {"name": "ci", "expires_at": "soon"},
        {"name": "ci", "expires_at": "9999-01-01"},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "ci", "other": 1},
    ):
        with pytest.raises(core.ValidationError):
            core.validate_token_body(body, now=NOW)
    with pytest.raises(core.ValidationError):
        core.validate_token_body(None, now=NOW)


def test_timestamps() -> None:
    assert core.parse_timestamp("2026-11-30T10:00:00+01:00", "t") == NOW
    assert core.parse_timestamp("2026-11-30T09:00:00", "t") == NOW
    assert core.parse_timestamp("2026-11-30T09:00:00z", "t") == NOW
    for value in ("", "x" * 65, 5, "2026-13-01"):
        with pytest.raises(core.ValidationError):
            core.parse_timestamp(value, "t")
