"""Shared fixtures: the project's own private MariaDB and local model endpoints."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cdc_scorer.local.endpoints import BackgroundModelServer, ModelServer, ModelServerConfig
from cdc_scorer.local.mariadb import MariaDBServer, PrivateMariaDB

SHARED_CHURN_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "churn.csv"

# Clients find the local endpoints through the standard settings, as in production.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)

TEST_ENDPOINTS = {
    "churn-autopilot-endpoint": "predicted_label,probability",
    "churn-label-only": "predicted_label",
    "churn-probabilities": "probabilities",
}


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One private MariaDB with row binlog for the session (tests use their own databases)."""
    with PrivateMariaDB(server_id=1) as server:
        yield server


@pytest.fixture
def models_threaded() -> Iterator[BackgroundModelServer]:
    """Local endpoints in a thread, for blocking clients (boto3, subprocess daemons)."""
    with BackgroundModelServer(ModelServerConfig(endpoints=dict(TEST_ENDPOINTS))) as server:
        yield server


@pytest.fixture
async def models() -> AsyncIterator[ModelServer]:
    """Local endpoints on the test's own event loop, for aiobotocore clients."""
    server = ModelServer(ModelServerConfig(endpoints=dict(TEST_ENDPOINTS)))
    await server.start()
    yield server
    await server.stop()
