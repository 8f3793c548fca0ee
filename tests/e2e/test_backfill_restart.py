"""Backfill jobs survive the scorer: kill -9 while batch jobs run at the local Bedrock (and at the
local SageMaker), restart, and the new process re-attaches to them — the service counts one
submission per job — and merges their answers; the predictions are those of a from-scratch
scoring."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.config import load_config
from cdc_scorer.core.batch import MERGED
from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer, ModelServerConfig
from cdc_scorer.local.s3 import LocalS3
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.servers import DatabaseServer
from tests.e2e.daemon import kill, run_cli, start, wait
from tests.integration.scenario import churn_matches, create_database, init_scorer, insert_churn
from tests.integration.test_backfill import ROLE, spec_for, stored_jobs, texts, versions
from tests.integration.test_bedrock import feedback_rows, insert_feedback, vectors_match


@pytest.fixture
def batch_endpoints(local_s3: LocalS3) -> Iterator[BackgroundModelServer]:
    with BackgroundModelServer(ModelServerConfig(s3_url=local_s3.url)) as server:
        server.set_faults({"bedrock": {"batch_step_s": 1.0}})
        yield server


def batch_stats(endpoints: BackgroundModelServer) -> dict[str, Any]:
    stats: dict[str, Any] = endpoints.stats()["bedrock_batch"]
    return stats


def test_kill_9_while_jobs_run_reattaches_and_submits_nothing_twice(
    tmp_path: Path,
    mariadb: DatabaseServer,
    batch_endpoints: BackgroundModelServer,
    local_s3: LocalS3,
) -> None:
    database = f"backfill_kill_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    local_s3.client().create_bucket(Bucket=bucket)
    db = mariadb.connect(database)
    insert_feedback(db, texts(300, 3))
    spec_for(
        tmp_path / "s.toml",
        mariadb,
        database,
        batch_endpoints.url,
        local_s3,
        bucket,
        backfill={"max_jobs_in_flight": 3},
    )
    config = tmp_path / "s.toml"
    first = start(config, "first")
    wait(
        lambda: batch_stats(batch_endpoints)["by_state"].get("InProgress", 0) >= 1,
        90,
        "a batch job in progress",
        first,
    )
    assert kill(first) == -9
    # status shows the running backfill from the job table, the daemon gone.
    shown = run_cli("status", "--config", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    (fields,) = json.loads(shown.stdout)
    backfill = fields["backfill"]
    assert len(backfill["jobs"]) == 3 and backfill["records_total"] == 300, backfill
    text = run_cli("status", "--config", str(config)).stdout
    assert "backfill: 3 batch jobs (" in text and "records " in text, text
    second = start(config, "second")
    wait(lambda: vectors_match(db), 180, "the predictions of every row", second)
    wait(lambda: all(j.state == MERGED for j in stored_jobs(db)), 30, "jobs merged", second)
    assert kill(second) == -9
    stats = batch_stats(batch_endpoints)
    # Three jobs of 100 rows, each submitted once: the second process re-attached to those the
    # first had submitted and submitted only what was left.
    assert stats["jobs"] == 3 and stats["records"] == 300, stats
    assert len(stored_jobs(db)) == 3
    assert "backfill resuming" in second.log()
    assert versions(db) == {"1": len(feedback_rows(db))}
    db.close()


def test_kill_9_while_transform_jobs_run_reattaches_by_name(
    tmp_path: Path,
    mariadb: DatabaseServer,
    batch_endpoints: BackgroundModelServer,
    local_s3: LocalS3,
) -> None:
    """The same with SageMaker Batch Transform, whose jobs are known by name: after kill -9
    the new process follows the jobs the first one submitted (the name refused as
    ``ResourceInUse`` is itself tested in test_backfill.py), each job is made once, the
    endpoint scores none of the re-score's rows."""
    database = f"transform_kill_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    local_s3.client().create_bucket(Bucket=bucket)
    batch_endpoints.set_faults({"sagemaker": {"batch_step_s": 1.0}})
    db = mariadb.connect(database)
    insert_churn(db, list(ChurnRowGenerator(61).rows(3000)))
    config = tmp_path / "s.toml"
    config.write_text(
        local_scorer_config(
            port=mariadb.port,
            database=database,
            endpoint_url=batch_endpoints.url,
            overrides={
                "aws": {"s3_endpoint_url": local_s3.url},
                "pipelines": {
                    "churn": {
                        "snapshot_chunk_rows": 500,
                        "backfill": {
                            "mode": "batch",
                            "s3_uri": f"s3://{bucket}/transform",
                            "role_arn": ROLE,
                            "records_per_job": 1000,
                            "max_jobs_in_flight": 3,
                            "poll_s": 0.2,
                        },
                    },
                    "feedback": {"snapshot": "never"},
                },
            },
        )
    )
    init_scorer(load_config(config))
    first = start(config, "first")

    def transform_jobs() -> dict[str, Any]:
        stats: dict[str, Any] = batch_endpoints.stats()["sagemaker_batch"]
        return stats

    wait(
        lambda: transform_jobs()["by_state"].get("InProgress", 0) >= 1,
        90,
        "a transform job in progress",
        first,
    )
    assert kill(first) == -9
    second = start(config, "second")
    wait(lambda: churn_matches(db), 180, "the predictions of every row", second)
    wait(
        lambda: all(j.state == MERGED for j in stored_jobs(db, "churn")), 30, "jobs merged", second
    )
    assert kill(second) == -9
    stats = transform_jobs()
    assert stats["jobs"] == 3 and stats["records"] == 3000, stats
    assert stats["create_calls"] >= 3, stats
    assert len(stored_jobs(db, "churn")) == 3
    assert "backfill resuming" in second.log()
    invoked = batch_endpoints.stats()["operations"].get("InvokeEndpoint", {})
    assert sum(int(c.get("rows", 0)) for c in invoked.values()) == 0  # none through the endpoint
    db.close()
