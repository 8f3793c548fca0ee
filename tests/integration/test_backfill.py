"""Backfills at batch prices (``core/backfill.py``): a Bedrock embedding pipeline's re-scores as
batch inference jobs at the local Bedrock control plane (``local/batch_jobs.py``), whose
inputs and outputs go through a real S3 protocol server (moto's server mode), with a live
writer changing the table while the jobs run: the predictions converge to a from-scratch
scoring, the rows the stream changed keep the stream's predictions (counted), the endpoint
sees no real-time call for the re-score's rows."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.config import load_config
from cdc_scorer.core.batch import MERGED, BatchJob
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.endpoints import TITAN_V2, ModelServer, ModelServerConfig
from cdc_scorer.local.s3 import LocalS3
from cdc_scorer.local.servers import DatabaseServer
from tests.integration.scenario import Running, create_database, init_scorer, wait_for
from tests.integration.test_bedrock import (
    embedding_pipeline,
    feedback_rows,
    insert_feedback,
    vectors_match,
)

ROLE = "arn:aws:iam::123456789012:role/cdc-scorer-batch"
PIPELINE = "feedback_embedding"
WORDS = [
    "bill",
    "invoice",
    "roaming",
    "signal",
    "coverage",
    "agent",
    "refund",
    "tariff",
    "router",
    "fibre",
]


@pytest.fixture
async def batch_models(local_s3: LocalS3) -> AsyncIterator[ModelServer]:
    server = ModelServer(ModelServerConfig(s3_url=local_s3.url))
    await server.start()
    server.set_faults({"bedrock": {"batch_step_s": 0.5}})
    yield server
    await server.stop()


@pytest.fixture
def bucket(local_s3: LocalS3) -> str:
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    local_s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def database(mariadb: DatabaseServer) -> str:
    name = f"backfill_{uuid.uuid4().hex[:8]}"
    create_database(mariadb, name)
    return name


@pytest.fixture
def db(mariadb: DatabaseServer, database: str) -> Any:
    conn = mariadb.connect(database)
    yield conn
    conn.close()


def spec_for(
    path: Path,
    server: DatabaseServer,
    database: str,
    models_url: str,
    s3: LocalS3,
    bucket: str,
    **pipeline: Any,
) -> ScorerSpec:
    backfill = {
        "mode": "batch",
        "s3_uri": f"s3://{bucket}/jobs/",
        "role_arn": ROLE,
        "records_per_job": 100,
        "max_jobs_in_flight": 2,
        "poll_s": 0.2,
        **pipeline.pop("backfill", {}),
    }
    config = {
        "source": {
            "host": "127.0.0.1",
            "port": server.port,
            "user": "root",
            "database": database,
            "binlog": {"heartbeat_interval_s": 0.5},
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "aws": {"region": "us-east-1", "endpoint_url": models_url, "s3_endpoint_url": s3.url},
        "retry": {"base_ms": 20, "cap_ms": 200},
        "pipelines": [{**embedding_pipeline(), "backfill": backfill, **pipeline}],
    }
    path.write_text(tomli_w.dumps(config))
    spec = load_config(path)
    init_scorer(spec)
    return spec


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{' '.join(rng.choice(WORDS) for _ in range(6))} complaint number {seed}-{i}"
        for i in range(count)
    ]


def stored_jobs(db: Any) -> list[BatchJob]:
    with db.cursor() as cursor:
        cursor.execute("SELECT data FROM cdc_scorer_batch_job WHERE pipeline=%s", (PIPELINE,))
        return [BatchJob.decode(str(row[0])) for row in cursor.fetchall()]


def versions(db: Any) -> dict[str, int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT model_version, COUNT(*) FROM feedback_embeddings GROUP BY 1")
        return {str(v): int(n) for v, n in cursor.fetchall()}


def invoke_rows(models: ModelServer) -> int:
    calls = models.stats()["operations"].get("InvokeModel", {}).get(TITAN_V2, {})
    return int(calls.get("rows", 0))


async def write_while_jobs_run(db: Any, models: ModelServer) -> int:
    """Inserts, updates of the input, deletes and key changes while the first jobs are in
    flight (submitted, not yet merged); the rows the stream scores."""
    await wait_for(lambda: len(models.bedrock_batch.jobs) >= 1, what="a batch job submitted")
    rng = random.Random(7)
    ids = sorted(feedback_rows(db))
    changed = 0
    with db.cursor() as cursor:
        # Rows of the first range (its job is running now) and of later ones.
        for row_id in rng.sample(ids[:100], 8) + rng.sample(ids[100:], 8):
            cursor.execute(
                "UPDATE feedback SET user_feedback=%s WHERE id=%s",
                (f"changed while the job ran {row_id}", row_id),
            )
            changed += 1
        for row_id in rng.sample(ids[20:100], 3) + rng.sample(ids[150:], 3):
            cursor.execute("DELETE FROM feedback WHERE id=%s", (row_id,))
        for row_id in rng.sample(ids[50:90], 2):
            cursor.execute("UPDATE feedback SET id=id+100000 WHERE id=%s", (row_id,))
            changed += 1
    new = texts(5, 99)
    insert_feedback(db, new)
    await asyncio.sleep(0.5)
    with db.cursor() as cursor:
        for row_id in rng.sample(ids[200:], 4):
            cursor.execute(
                "UPDATE feedback SET user_feedback=%s WHERE id=%s",
                (f"later change {row_id}", row_id),
            )
    return changed + len(new) + 4


async def test_a_rescore_by_batch_jobs_converges_beside_a_live_writer(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    insert_feedback(db, texts(400, 1))
    spec = spec_for(tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, bucket)
    async with Running(spec) as app:
        streamed = await write_while_jobs_run(db, batch_models)
        await wait_for(
            lambda: app.telemetry.pipelines[PIPELINE].snapshot_state == "done",
            timeout_s=120,
            what="the first snapshot done by batch jobs",
        )
        await wait_for(lambda: vectors_match(db), what="predictions of the current rows")
        counts = {
            outcome: n
            for (pipeline, outcome), n in app.telemetry.backfill_records.items()
            if pipeline == PIPELINE
        }
    jobs = stored_jobs(db)
    submitted = [j for j in jobs if j.arn is not None]
    # 400 rows in jobs of 100: four jobs; the writer's few new rows after them are too few for
    # a job (Bedrock's minimum is 100) and go through the endpoint.
    assert len(submitted) == 4 and all(j.state == MERGED for j in jobs)
    assert batch_models.bedrock_batch.create_calls == 4  # nothing submitted twice
    assert counts["submitted"] == sum(j.records for j in submitted) == 400
    # The rows the stream changed while their job ran keep the stream's prediction.
    assert counts["superseded"] >= 8, counts
    assert counts["answered"] + counts["superseded"] >= 400 - 6, counts
    # The endpoint saw the stream's rows and the small last range, never the jobs' rows.
    assert invoke_rows(batch_models) <= streamed + counts.get("realtime", 0), counts
    assert counts.get("realtime", 0) <= 10, counts
    assert versions(db) == {"1": len(feedback_rows(db))}

    # A new model version: every row re-scored by batch jobs, the stream going on.
    spec2 = spec_for(
        tmp_path / "s2.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        model_version="2",
    )
    before = invoke_rows(batch_models)
    async with Running(spec2):
        insert_feedback(db, ["Roaming charges on my bill again."])
        await wait_for(
            lambda: versions(db) == {"2": len(feedback_rows(db))},
            timeout_s=120,
            what="every row re-scored with model version 2",
        )
        assert vectors_match(db)
    assert invoke_rows(batch_models) - before <= 1 + 10  # the new row, a small last range
    jobs2 = [j for j in stored_jobs(db) if j.model_version == "2"]
    assert len([j for j in jobs2 if j.arn]) == 4

    # What the S3 holds: each job's input, keys and the service's output, as documented.
    listed = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="jobs/")["Contents"]
    names = {o["Key"].rsplit("/", 1)[1] for o in listed}
    assert {"records.jsonl", "keys.json", "records.jsonl.out", "manifest.json.out"} <= names
    first = json.loads(
        local_s3.client()
        .get_object(Bucket=bucket, Key=f"jobs/{PIPELINE}/{submitted[0].name}/input/records.jsonl")[
            "Body"
        ]
        .read()
        .splitlines()[0]
    )
    assert set(first) == {"recordId", "modelInput"} and first["modelInput"]["dimensions"] == 256
