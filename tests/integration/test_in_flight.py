"""`batching.max_in_flight` is the limit of concurrent model calls, counted at the endpoint.

(The sequencer once made a task before waiting for room: settings 1, 2 and 4 reached 3, 4 and 6
calls at once.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.servers import DatabaseServer
from tests.integration.scenario import (
    Running,
    create_database,
    init_scorer,
    insert_churn,
    stored_churn,
    wait_for,
    write_config,
)


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_max_in_flight_holds_at_the_endpoint(
    tmp_path: Path, mariadb: DatabaseServer, models: ModelServer, limit: int
) -> None:
    database = f"inflight_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    spec = write_config(
        tmp_path / "s.toml",
        mariadb,
        database,
        models.url,
        snapshot="never",
        pipelines={"churn": {"batching": {"max_rows": 10, "max_in_flight": limit}}},
    )
    init_scorer(spec)
    # Slow answers and a backlog of 40 batches: every slot the scorer allows gets used.
    models.set_faults({"sagemaker": {"latency_ms": 60}})
    db = mariadb.connect(database)
    async with Running(spec) as app:
        await wait_for(lambda: app.telemetry.source.streaming, what="streaming")
        insert_churn(db, list(ChurnRowGenerator(31).rows(400)))
        await wait_for(lambda: len(stored_churn(db)) == 400, 90, "the backlog scored")
    stats = models.stats()
    calls = stats["operations"]["InvokeEndpoint"]
    assert sum(c["calls"] for c in calls.values()) >= 40
    assert stats["peak_concurrent"]["sagemaker"] == limit, stats["peak_concurrent"]
    db.close()
