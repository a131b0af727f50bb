"""Statuses read as their values everywhere, on Python 3.10 (no ``enum.StrEnum``) as on 3.11+."""

from __future__ import annotations

import json

import pytest

from fleet.core import BatchStatus, ChildStatus


@pytest.mark.parametrize("status", [*ChildStatus, *BatchStatus])
def test_a_status_is_its_value_as_text(status: ChildStatus | BatchStatus) -> None:
    assert str(status) == status.value
    assert f"{status}" == status.value
    assert f"{status:>30}" == f"{status.value:>30}"
    assert "%s" % status == status.value  # noqa: UP031 - the logging style
    assert json.dumps({"s": status}) == json.dumps({"s": status.value})
    assert status == status.value
    assert type(status)(status.value) is status
