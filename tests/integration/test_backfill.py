"""Backfills at batch prices (``core/backfill.py``): a Bedrock embedding pipeline's re-scores as
batch inference jobs at the local Bedrock control plane (``local/batch_jobs.py``), whose
inputs and outputs go through a real S3 protocol server (moto's server mode), with a live
writer changing the table while the jobs run: the predictions converge to a from-scratch
scoring, the rows the stream changed keep the stream's predictions (counted), the endpoint
sees no real-time call for the re-score's rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.app import ScorerApp
from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.core.batch import MERGED, BatchJob
from cdc_scorer.core.records import RescoreJob
from cdc_scorer.core.spec import AwsSpec, BackfillSpec, ScorerSpec
from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.endpoints import TITAN_V2, ModelServer, ModelServerConfig
from cdc_scorer.local.s3 import LocalS3
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.bedrock import BedrockSpec
from cdc_scorer.services.sagemaker import SageMakerSpec
from tests.conftest import TEST_ENDPOINTS
from tests.integration.scenario import (
    Running,
    churn_matches,
    create_database,
    init_scorer,
    insert_churn,
    wait_for,
)
from tests.integration.test_bedrock import (
    TOPICS,
    converse_pipeline,
    embedding_pipeline,
    feedback_rows,
    insert_feedback,
    vectors_match,
)
from tests.pg import PgDatabase, pg_config

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
    server = ModelServer(ModelServerConfig(endpoints=dict(TEST_ENDPOINTS), s3_url=local_s3.url))
    await server.start()
    server.set_faults({"all": {"batch_step_s": 0.5}})
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


def snapshot_done(app: ScorerApp, pipeline: str = PIPELINE, wanted: str = "done") -> bool:
    state = app.telemetry.pipelines.get(pipeline)
    return state is not None and state.snapshot_state == wanted


def outcomes(app: ScorerApp, pipeline: str = PIPELINE) -> dict[str, int]:
    """The pipeline's backfill records by outcome, as the daemon counted them."""
    return {o: n for (p, o), n in app.telemetry.backfill_records.items() if p == pipeline}


def stored_jobs(db: Any, pipeline: str = PIPELINE) -> list[BatchJob]:
    with db.cursor() as cursor:
        cursor.execute("SELECT data FROM cdc_scorer_batch_job WHERE pipeline=%s", (pipeline,))
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
            lambda: snapshot_done(app),
            timeout_s=120,
            what="the first snapshot done by batch jobs",
        )
        await wait_for(lambda: vectors_match(db), what="predictions of the current rows")
        counts = outcomes(app)
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


async def test_a_set_rescore_cap_paces_the_merge_of_a_jobs_answers(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """``rescore.max_rows_per_s`` holds the merge of a job's answers to its pace (they need no
    model call, so no model's budget paces them): 500 rows in chunks of one batch (100) at 250
    rows/s, the fifth chunk read four intervals of 100/250 s after the first. Counted from the
    first chunk's merge (which comes a little after its read): more than three intervals.
    Without the cap the same merge takes ~0.1 s. (A lower bound: a slow machine only makes
    it longer.)"""
    insert_feedback(db, texts(500, 5))
    spec = spec_for(
        tmp_path / "s.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        backfill={"records_per_job": 500},
        batching={"linger_ms": 50, "max_in_flight": 8, "max_rows": 100},
        rescore={"max_rows_per_s": 250},
    )
    async with Running(spec) as app:
        merged = app.telemetry.rescore_rows
        await wait_for(lambda: merged[PIPELINE] > 0, timeout_s=120, what="the first chunk")
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: merged[PIPELINE] >= 500, timeout_s=60, what="the whole merge")
        took = asyncio.get_running_loop().time() - started
    assert batch_models.bedrock_batch.create_calls == 1  # the rows were a job's answers
    assert took >= 3 * 100 / 250, took


def dead_letters(db: Any) -> dict[str, int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT reason, COUNT(*) FROM cdc_scorer_dead_letter GROUP BY 1")
        return {str(r): int(n) for r, n in cursor.fetchall()}


def predicted_ids(db: Any) -> set[int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id FROM feedback_embeddings")
        return {int(row[0]) for row in cursor.fetchall()}


async def test_failed_records_go_real_time_refused_ones_are_dead_letters(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """A partially completed job: records answered with an internal error are scored through
    the endpoint, records the model refused are dead letters with the service's reason; then
    a job that fails halfway: what it did not answer goes real-time."""
    insert_feedback(db, texts(200, 5))
    batch_models.set_faults(
        {"bedrock": {"batch_record_error_rate": 0.1, "batch_record_refusal_rate": 0.05}}
    )
    spec = spec_for(tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, bucket)
    async with Running(spec) as app:
        await wait_for(
            lambda: snapshot_done(app),
            timeout_s=90,
            what="the snapshot by batch jobs",
        )
        counts = outcomes(app)
    jobs = stored_jobs(db)
    assert {j.service_state for j in jobs} == {"PartiallyCompleted"}
    refused = dead_letters(db).get("batch_record_error", 0)
    assert counts["dead_letter"] == refused > 0, counts
    assert counts["realtime"] > 0 and counts["failed"] == counts["realtime"] + refused, counts
    # Every row has a prediction or a dead letter; the endpoint scored only the failed records.
    assert invoke_rows(batch_models) == counts["realtime"]
    assert len(predicted_ids(db)) + refused == 200
    with db.cursor() as cursor:
        cursor.execute("SELECT error FROM cdc_scorer_dead_letter LIMIT 1")
        assert "400: injected fault: the model refused this input" in str(cursor.fetchone()[0])

    # A job failing halfway: its answered half is written, the rest goes through the endpoint.
    batch_models.set_faults(
        {
            "bedrock": {
                "batch_record_error_rate": 0,
                "batch_record_refusal_rate": 0,
                "batch_job_failure_rate": 1.0,
            }
        }
    )
    batch_models.reset_stats()
    spec2 = spec_for(
        tmp_path / "s2.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        model_version="2",
    )
    async with Running(spec2) as app:
        await wait_for(
            lambda: versions(db) == {"2": 200},
            timeout_s=90,
            what="every row re-scored with model version 2",
        )
        counts = outcomes(app)
    failed = [j for j in stored_jobs(db) if j.model_version == "2"]
    assert {j.service_state for j in failed} == {"Failed"}
    assert counts["answered"] == 100 and counts["realtime"] == 100, counts  # half of each
    assert invoke_rows(batch_models) == 100
    assert vectors_match(db)


# ---------------------------------------------------------------- SageMaker Batch Transform
def churn_rows(db: Any) -> list[dict[str, Any]]:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(FEATURE_COLUMNS)}, Churn FROM churn ORDER BY phone")
        names = [*FEATURE_COLUMNS, "Churn"]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


BACKFILL = {
    "mode": "auto",
    "min_rows": 1000,
    "role_arn": ROLE,
    "records_per_job": 5000,
    "max_jobs_in_flight": 2,
    "poll_s": 0.2,
}


def churn_spec(
    path: Path, server: DatabaseServer, database: str, url: str, s3: LocalS3, bucket: str
) -> ScorerSpec:
    path.write_text(
        local_scorer_config(
            port=server.port,
            database=database,
            endpoint_url=url,
            overrides={
                "source": {"binlog": {"heartbeat_interval_s": 0.5}},
                "aws": {"s3_endpoint_url": s3.url},
                "retry": {"base_ms": 20, "cap_ms": 200},
                "pipelines": {
                    "churn": {
                        "snapshot_chunk_rows": 2000,
                        "batching": {"linger_ms": 50},
                        "backfill": {**BACKFILL, "s3_uri": f"s3://{bucket}/transform"},
                    },
                    "feedback": {"snapshot": "never"},
                },
            },
        )
    )
    spec = load_config(path)
    init_scorer(spec)
    return spec


def invoke_endpoint_rows(models: ModelServer) -> int:
    calls = models.stats()["operations"].get("InvokeEndpoint", {})
    return sum(int(c.get("rows", 0)) for c in calls.values())


@pytest.mark.parametrize("server", ["mariadb", "mysql-gtid"], indirect=True)
async def test_sagemaker_batch_transform_converges_beside_a_live_writer(
    tmp_path: Path,
    server: DatabaseServer,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """20,000 rows re-scored by Batch Transform jobs of 5,000 over the endpoint's model while a
    writer updates inputs, deletes, inserts and changes keys: the predictions equal a
    from-scratch scoring; the stream's rows keep the stream's."""
    database = f"transform_{uuid.uuid4().hex[:8]}"
    create_database(server, database)
    db = server.connect(database)
    generator = ChurnRowGenerator(41)
    insert_churn(db, list(generator.rows(20_000)))
    spec = churn_spec(tmp_path / "s.toml", server, database, batch_models.url, local_s3, bucket)
    await transform_beside_a_writer(
        spec, db, generator, batch_models, lambda rows: insert_churn(db, rows)
    )
    db.close()


async def test_sagemaker_batch_transform_converges_on_postgresql(
    tmp_path: Path, pg: PgDatabase, batch_models: ModelServer, local_s3: LocalS3, bucket: str
) -> None:
    """The same through PostgreSQL's logical replication (pgoutput)."""
    generator = ChurnRowGenerator(43)
    pg.insert_churn(list(generator.rows(20_000)))
    spec = pg_config(
        tmp_path / "s.toml",
        pg,
        batch_models.url,
        churn={
            "snapshot_chunk_rows": 2000,
            "backfill": {**BACKFILL, "s3_uri": f"s3://{bucket}/transform"},
        },
        pipelines={"feedback": {"snapshot": "never"}},
        top={"aws": {"s3_endpoint_url": local_s3.url}},
    )
    init_scorer(spec)
    await transform_beside_a_writer(spec, pg.conn, generator, batch_models, pg.insert_churn)


async def transform_beside_a_writer(
    spec: ScorerSpec,
    db: Any,
    generator: ChurnRowGenerator,
    batch_models: ModelServer,
    insert: Callable[[list[dict[str, Any]]], None],
) -> None:
    async with Running(spec) as app:
        await wait_for(
            lambda: len(batch_models.sagemaker_batch.jobs) >= 2, what="transform jobs submitted"
        )
        rows = churn_rows(db)
        rng = random.Random(3)
        picked = rng.sample(rows, 120)
        with db.cursor() as cursor:
            for row in picked[:60]:  # new inputs, in every job's range
                new = generator.changed(row)
                sets = ", ".join(f"{c}=%s" for c in FEATURE_COLUMNS if c != "phone")
                values = [new[c] for c in FEATURE_COLUMNS if c != "phone"]
                cursor.execute(f"UPDATE churn SET {sets} WHERE phone=%s", (*values, row["phone"]))
            for row in picked[60:90]:
                cursor.execute("DELETE FROM churn WHERE phone=%s", (row["phone"],))
            for number, row in enumerate(picked[90:]):  # key changes
                cursor.execute(
                    "UPDATE churn SET phone=%s WHERE phone=%s", (f"999-{number:04d}", row["phone"])
                )
        insert(list(generator.rows(40)))
        streamed = 60 + 30 + 40
        await wait_for(
            lambda: app.telemetry.pipelines["churn"].snapshot_state == "done",
            timeout_s=180,
            what="the snapshot by transform jobs",
        )
        await wait_for(lambda: churn_matches(db), what="predictions of the current rows")
        counts = outcomes(app, "churn")
    stats = batch_models.stats()["sagemaker_batch"]
    # Four jobs of 5,000, and one of the rows the writer added past them (SageMaker takes a
    # job of any size); each submitted once.
    assert stats["jobs"] == stats["create_calls"] == 5, stats
    assert counts["submitted"] == stats["records"] > 20_000
    assert counts["superseded"] >= 1 and counts["answered"] >= 20_000 - 120, counts
    # The endpoint saw the stream's rows and whatever came after the last job (new rows).
    assert invoke_endpoint_rows(batch_models) <= streamed + counts.get("realtime", 0) + 40


async def test_the_estimate_matches_the_jobs_it_then_runs(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    insert_feedback(db, texts(250, 9))
    spec_for(tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, bucket)
    config = tmp_path / "s.toml"
    with config.open("a") as out:
        out.write(f'\n[pricing."{TITAN_V2}"]\non_demand = 0.02\nbatch = 0.01\n')
    assert cli(["rescore", "--config", str(config), "--pipeline", PIPELINE, "--estimate"]) == 0
    printed = capsys.readouterr().out
    assert "rows: 250" in printed and "records: 250 (rows the model takes)" in printed
    assert "batch jobs: 2 of up to 100 records" in printed
    assert "50 left over go through the endpoint" in printed
    characters = sum(
        len(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        for body in (
            {"inputText": t, "dimensions": 256, "normalize": True}
            for t in feedback_rows(db).values()
        )
    )
    tokens = math.ceil(characters / 4)
    assert f"as batch jobs: {tokens:,.2f} input tokens" in printed, printed
    # 200 records at the batch price, 50 at the on-demand one; all 250 on demand the other way.
    realtime = tokens / 1000 * 0.02
    assert f"cost through the endpoint: {realtime:,.4f} USD" in printed
    batch = tokens / 1000 * 0.01 * 200 / 250 + realtime * 50 / 250
    assert f"cost as batch jobs: {batch:,.4f} USD" in printed
    assert batch_models.bedrock_batch.create_calls == 0  # nothing submitted

    spec = load_config(config)
    async with Running(spec) as app:
        await wait_for(lambda: snapshot_done(app), timeout_s=90, what="the snapshot")
        counts = outcomes(app)
    assert batch_models.bedrock_batch.create_calls == 2
    assert counts["submitted"] == 200 and counts["realtime"] == 50, counts
    assert vectors_match(db)


async def test_a_new_model_version_stops_the_old_versions_jobs(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """The scorer stops while its jobs run; it comes back with model version 2: the version 1
    jobs are stopped at the service and never merged, the table is scored with version 2."""
    insert_feedback(db, texts(300, 13))
    batch_models.set_faults({"bedrock": {"batch_step_s": 2.0}})
    spec = spec_for(
        tmp_path / "s.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        backfill={"max_jobs_in_flight": 3},
    )
    async with Running(spec):
        await wait_for(
            lambda: len(batch_models.bedrock_batch.jobs) == 3, what="three jobs submitted"
        )
    old = {j.name for j in stored_jobs(db)}
    batch_models.set_faults({"bedrock": {"batch_step_s": 0.3}})
    spec2 = spec_for(
        tmp_path / "s2.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        model_version="2",
        backfill={"max_jobs_in_flight": 3},
    )
    async with Running(spec2):
        await wait_for(
            lambda: versions(db) == {"2": 300}, timeout_s=90, what="every row with version 2"
        )
    jobs = {j.name: j for j in stored_jobs(db)}
    assert {jobs[n].state for n in old} == {"abandoned"}
    assert all(
        j.state == MERGED and j.model_version == "2" for n, j in jobs.items() if n not in old
    )
    service = {j.name: j.status for j in batch_models.bedrock_batch.jobs.values()}
    assert {service[n] for n in old} <= {"Stopped", "Stopping"}, service
    assert vectors_match(db)


async def refused_then_streaming(spec: ScorerSpec, db: Any) -> RescoreJob:
    """Runs ``spec`` until its first snapshot fails (a job refused); the re-score as it ended,
    once a row inserted after the refusal has been scored (the stream goes on)."""
    async with Running(spec) as app:
        await wait_for(
            lambda: snapshot_done(app, wanted="failed"), timeout_s=60, what="the snapshot failed"
        )
        (job,) = app.telemetry.pipelines[PIPELINE].rescores.finished
        insert_feedback(db, ["A new row after the refusal."])
        await wait_for(
            lambda: max(feedback_rows(db)) in predicted_ids(db), what="the stream going on"
        )
    return job


async def test_a_job_refused_for_a_setting_ends_the_rescore_naming_it(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
) -> None:
    """A bucket that does not exist: the re-score ends with an error naming s3_uri (status
    shows it), and the stream goes on scoring in real time."""
    insert_feedback(db, texts(150, 17))
    spec = spec_for(
        tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, "no-such-bucket-x"
    )
    job = await refused_then_streaming(spec, db)
    assert job.error is not None and "s3_uri" in job.error, job.error
    assert "NoSuchBucket" in job.error, job.error
    assert batch_models.bedrock_batch.create_calls == 0


# ---------------------------------------------------------------- a submission repeated
def repeated_job(name: str) -> BatchJob:
    return BatchJob(
        pipeline="p",
        rescore_id="r" * 12,
        sequence=0,
        name=name,
        token=name.replace("-", "") + "token",
        after=None,
        last=(1,),
        records=2,
        final=True,
    )


async def test_a_repeated_submission_is_the_same_job(
    batch_models: ModelServer, local_s3: LocalS3, bucket: str
) -> None:
    """After a crash between a submission and its row's update, the job is submitted again:
    Bedrock answers the same token with the job it made; SageMaker refuses the name
    (ResourceInUse), and the service reads the job of that name. Each service counts one job,
    and its input, written once, is not written again."""
    backfill = BackfillSpec(mode="batch", s3_uri=f"s3://{bucket}/again", role_arn=ROLE)
    aws = AwsSpec(region="us-east-1", endpoint_url=batch_models.url, s3_endpoint_url=local_s3.url)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(create_client_context(name, aws, 4))
            for name in ("bedrock", "sagemaker", "s3")
        }
        bedrock_spec = BedrockSpec(
            model_id=TITAN_V2, task="embedding", text_column="t", dimensions=256
        )
        sagemaker_spec = SageMakerSpec(
            endpoint_name="churn-autopilot-endpoint", feature_columns=("a",)
        )
        for spec, stats in ((bedrock_spec, "bedrock_batch"), (sagemaker_spec, "sagemaker_batch")):
            service = spec.batch("p", backfill, clients)
            job = repeated_job(f"cdc-p-{stats[:3]}-0")
            first = await service.submit(job, [("[1]", "one"), ("[2]", "two")])
            again = await service.submit(job, [("[1]", "changed meanwhile")])
            assert first.arn == again.arn and first.arn is not None
            counted = batch_models.stats()[stats]
            assert counted["create_calls"] == 2 and counted["jobs"] == 1, counted
    listed = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="again/")["Contents"]
    bodies = [
        local_s3.client().get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
        if "/input/" in o["Key"]
    ]
    assert bodies and all(b"changed meanwhile" not in body for body in bodies)


async def test_a_converse_pipeline_backfills_by_batch_jobs_of_converse_records(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """An LLM-derived column (Converse with a forced tool): the job's records are Converse
    request bodies (``modelInvocationType = "Converse"``), its answers decoded as the
    real-time ones, none through the endpoint."""
    insert_feedback(db, texts(120, 21))
    backfill = {
        "mode": "batch",
        "s3_uri": f"s3://{bucket}/converse/",
        "role_arn": ROLE,
        "records_per_job": 100,
        "poll_s": 0.2,
    }
    config = {
        "source": {"host": "127.0.0.1", "port": mariadb.port, "user": "root", "database": database},
        "http": {"host": "127.0.0.1", "port": 0},
        "aws": {
            "region": "us-east-1",
            "endpoint_url": batch_models.url,
            "s3_endpoint_url": local_s3.url,
        },
        "pipelines": [{**converse_pipeline(), "backfill": backfill}],
    }
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(config))
    spec = load_config(path)
    init_scorer(spec)
    async with Running(spec) as app:
        await wait_for(
            lambda: (
                (state := app.telemetry.pipelines.get("feedback_topic")) is not None
                and state.snapshot_state == "done"
            ),
            timeout_s=90,
            what="the snapshot by batch jobs",
        )
        counts = outcomes(app, "feedback_topic")
    assert counts["answered"] == 100 and counts["realtime"] == 20, counts
    converse = batch_models.stats()["operations"].get("Converse", {})
    assert sum(c["rows"] for c in converse.values()) == 20  # only the range too small for a job
    with db.cursor() as cursor:
        cursor.execute("SELECT topic, COUNT(*) FROM feedback_topics GROUP BY topic")
        topics = dict(cursor.fetchall())
    assert sum(topics.values()) == 120 and set(topics) <= set(TOPICS), topics
    (job,) = [j for j in batch_models.bedrock_batch.jobs.values()]
    assert job.invocation_type == "Converse"


async def test_cancelling_a_batch_rescore_stops_its_jobs(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rescore --cancel` of a re-score running as batch jobs: its jobs are stopped at the
    service, their rows abandoned, the re-score ends as cancelled."""
    insert_feedback(db, texts(300, 23))
    batch_models.set_faults({"bedrock": {"batch_step_s": 3.0}})
    spec_for(
        tmp_path / "s.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        snapshot="never",
        backfill={"max_jobs_in_flight": 3},
    )
    config = str(tmp_path / "s.toml")
    async with Running(load_config(config)) as app:
        await wait_for(lambda: PIPELINE in app.telemetry.pipelines, what="the pipeline running")

        def checkpointed() -> bool:
            with db.cursor() as cursor:
                cursor.execute(
                    "SELECT COUNT(*) FROM cdc_scorer_checkpoint WHERE pipeline=%s", (PIPELINE,)
                )
                return bool(cursor.fetchone()[0])

        await wait_for(checkpointed, what="the pipeline's checkpoint row")
        request = ["rescore", "--config", config, "--pipeline", PIPELINE, "--no-wait"]
        assert await asyncio.to_thread(cli, request) == 0
        said = re.search(r"re-score (\w+) of pipeline", capsys.readouterr().out)
        assert said is not None
        job_id = said.group(1)
        await wait_for(lambda: len(batch_models.bedrock_batch.jobs) == 3, what="3 jobs")
        await wait_for(
            lambda: app.telemetry.pipelines[PIPELINE].rescores.running is not None,
            what="the running re-score committed in the checkpoint",
        )
        cancel = ["rescore", "--config", config, "--pipeline", PIPELINE, "--cancel", job_id]
        assert await asyncio.to_thread(cli, cancel) == 0
        await wait_for(
            lambda: all(j.state == "abandoned" for j in stored_jobs(db)),
            what="the jobs abandoned",
        )
    assert "cancelled" in capsys.readouterr().out
    states = {j.status for j in batch_models.bedrock_batch.jobs.values()}
    assert states <= {"Stopping", "Stopped"}, states
    assert invoke_rows(batch_models) == 0


async def test_a_role_the_service_may_not_be_given_ends_the_rescore_naming_role_arn(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """CreateModelInvocationJob refused for the role (iam:PassRole): the re-score ends with
    the service's words and the key to fix; nothing runs at the service."""
    insert_feedback(db, texts(150, 29))
    spec = spec_for(
        tmp_path / "s.toml",
        mariadb,
        database,
        batch_models.url,
        local_s3,
        bucket,
        backfill={"role_arn": "arn:aws:iam::999999999999:role/someone-elses"},
    )
    async with Running(spec) as app:
        await wait_for(
            lambda: snapshot_done(app, wanted="failed"), timeout_s=60, what="the snapshot failed"
        )
        (job,) = app.telemetry.pipelines[PIPELINE].rescores.finished
    assert job.error is not None
    assert "AccessDeniedException" in job.error and "iam:PassRole" in job.error, job.error
    assert f"[pipelines.{PIPELINE}.backfill] role_arn" in job.error, job.error
    assert batch_models.bedrock_batch.create_calls == 1 and not batch_models.bedrock_batch.jobs


async def test_an_expired_job_s_records_go_real_time(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """Jobs that outlive their timeoutDurationInHours end Expired (an hour lasts 20 ms at the
    local service): their records, unanswered, are scored through the endpoint."""
    insert_feedback(db, texts(200, 31))
    batch_models.set_faults({"bedrock": {"batch_hour_s": 0.02, "batch_step_s": 0.6}})
    spec = spec_for(tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, bucket)
    async with Running(spec) as app:
        await wait_for(lambda: snapshot_done(app), timeout_s=90, what="the snapshot")
        counts = outcomes(app)
    jobs = stored_jobs(db)
    assert len(jobs) == 2 and {j.service_state for j in jobs} == {"Expired"}
    assert counts["realtime"] == 200 and counts.get("answered", 0) == 0, counts
    assert invoke_rows(batch_models) == 200
    assert vectors_match(db)


async def test_a_job_refused_for_the_jobs_quota_ends_the_rescore_naming_the_settings(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    db: Any,
    batch_models: ModelServer,
    local_s3: LocalS3,
    bucket: str,
) -> None:
    """Another user's 20 jobs of the model are in flight (the default quota of jobs submitted
    or in progress per model): CreateModelInvocationJob is refused with
    ServiceQuotaExceededException, and the re-score ends naming what to lower."""
    batch_models.set_faults({"bedrock": {"batch_step_s": 60}})
    aws = AwsSpec(region="us-east-1", endpoint_url=batch_models.url)
    async with create_client_context("bedrock", aws, 4) as bedrock:
        for n in range(20):
            await bedrock.create_model_invocation_job(
                jobName=f"someone-else-{n}",
                roleArn=ROLE,
                modelId=TITAN_V2,
                inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/other/"}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/other-out/"}},
            )
    insert_feedback(db, texts(150, 37))
    spec = spec_for(tmp_path / "s.toml", mariadb, database, batch_models.url, local_s3, bucket)
    job = await refused_then_streaming(spec, db)
    assert job.error is not None
    assert "ServiceQuotaExceededException" in job.error, job.error
    assert "max_jobs_in_flight" in job.error and "records_per_job" in job.error, job.error
    assert len(batch_models.bedrock_batch.jobs) == 20  # none of the re-score's
