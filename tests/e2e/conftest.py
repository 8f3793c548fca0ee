"""A daemon a failed test left running would go on using the machine's two cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.daemon import kill_leftovers


@pytest.fixture(autouse=True)
def no_leftover_daemons() -> Iterator[None]:
    yield
    kill_leftovers()
