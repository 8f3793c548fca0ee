"""The local endpoints of the e2e tests, and no daemon left running after a test (one a failed
test left would go on using the machine's two cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdc_scorer.local.endpoints import BackgroundModelServer
from tests.e2e.daemon import kill_leftovers


@pytest.fixture
def endpoints() -> Iterator[BackgroundModelServer]:
    """The local SageMaker and Comprehend endpoints, in a thread (the daemons are processes)."""
    with BackgroundModelServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_leftover_daemons() -> Iterator[None]:
    yield
    kill_leftovers()
