"""Models on the prediction tables: each row stamped with its model's version, and two models
(champion and challenger) scoring one source table into their own tables and views."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.mysql.connection import connect
from cdc_scorer.stores.mysql.schema import check_schema, init_schema
from tests.integration.scenario import (
    Running,
    create_database,
    expected_churn,
    init_scorer,
    insert_churn,
    wait_for,
    write_config,
)

CHALLENGER = {
    "table": "churn",
    "key_columns": ["phone"],
    "service": "sagemaker",
    "model_version": "challenger-2",
    "predictions_table": "churn_challenger_predictions",
    "sagemaker": {
        "endpoint_name": "churn-probabilities",
        "output_form": "probabilities",
        "feature_columns": list(FEATURE_COLUMNS),
    },
    "batching": {"linger_ms": 50},
}


def _stored(db: Any, table: str) -> dict[str, tuple[str, float, str]]:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT phone, will_churn, churn_probability, model_version FROM {table}")
        return {str(p): (str(lab), float(prob), str(v)) for p, lab, prob, v in cursor.fetchall()}


def _matches(db: Any, table: str, version: str) -> bool:
    expected, stored = expected_churn(db), _stored(db, table)
    return expected.keys() == stored.keys() and all(
        stored[k][0] == label and abs(stored[k][1] - p) < 1e-9 and stored[k][2] == version
        for k, (label, p) in expected.items()
    )


async def test_champion_and_challenger_converge_each_to_its_model(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    database = f"models_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    generator = ChurnRowGenerator(71)
    live = list(generator.rows(60))
    insert_churn(db, live)  # scored by both from their snapshots
    champion = {"model_version": "champion-1"}
    spec = write_config(
        tmp_path / "s.toml",
        server,
        database,
        models.url,
        pipelines={"churn": champion, "churn-challenger": CHALLENGER},
    )
    init_scorer(spec)
    async with Running(spec):
        insert_churn(db, list(generator.rows(30)))
        with db.cursor() as cursor:
            for row in live[:10]:
                cursor.execute(
                    "UPDATE churn SET day_mins = day_mins + 2.5 WHERE phone = %s", (row["phone"],)
                )
            cursor.execute("DELETE FROM churn WHERE phone = %s", (live[20]["phone"],))
        await wait_for(lambda: _matches(db, "churn_predictions", "champion-1"), what="champion")
        await wait_for(
            lambda: _matches(db, "churn_challenger_predictions", "challenger-2"),
            what="challenger",
        )
    with db.cursor() as cursor:  # each model has its own view over the source table
        cursor.execute("SELECT COUNT(*), COUNT(model_version) FROM churn_scored")
        assert cursor.fetchone() == (89, 89)
        cursor.execute(
            "SELECT COUNT(*) FROM churn_challenger_scored WHERE model_version = 'challenger-2'"
        )
        assert cursor.fetchone() == (89,)
        cursor.execute(
            "SELECT model_endpoint, COUNT(*) FROM churn_challenger_predictions "
            "GROUP BY model_endpoint"
        )
        assert cursor.fetchall() == (("churn-probabilities", 89),)
    db.close()


def test_tables_of_an_older_release_get_their_new_columns_from_init(
    tmp_path: Path, mariadb: DatabaseServer, models_threaded: Any
) -> None:
    database = f"models_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    spec = write_config(tmp_path / "s.toml", mariadb, database, "http://127.0.0.1:9")
    conn = connect(spec.source)
    init_schema(conn, database, spec.pipelines)
    with conn.cursor() as cursor:  # as the previous release made it
        cursor.execute("DROP VIEW churn_scored")
        cursor.execute("ALTER TABLE churn_predictions DROP COLUMN model_version")
        cursor.execute("ALTER TABLE cdc_scorer_checkpoint DROP COLUMN stopped_reason")
    with pytest.raises(
        FatalError,
        match=r"columns churn_predictions.model_version, cdc_scorer_checkpoint.stopped_reason "
        r"are missing",
    ):
        check_schema(conn, database, spec.pipelines)
    statements = init_schema(conn, database, spec.pipelines)
    assert any("ADD COLUMN `model_version`" in s for s in statements)
    assert any("ADD COLUMN `stopped_reason`" in s for s in statements)
    check_schema(conn, database, spec.pipelines)  # now complete
    assert init_schema(conn, database, spec.pipelines)  # and init stays idempotent
    conn.close()


async def test_a_snapshot_begun_by_an_older_release_goes_on_as_an_incremental_one(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    """An older release snapshotted before streaming: its checkpoint row had no position, the
    snapshot's start in snapshot_position and the last chunk's key in snapshot_cursor. The
    stream resumes at that start and the snapshot goes on after that key."""
    database = f"models_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(72).rows(400)))
    spec = write_config(tmp_path / "s.toml", server, database, models.url, snapshot="never")
    init_scorer(spec)
    async with Running(spec):  # streaming from now; the 400 rows are not scored
        await wait_for(lambda: _checkpointed(db), what="a checkpoint")
    with db.cursor() as cursor:
        cursor.execute("SELECT phone FROM churn ORDER BY phone")
        phones = [str(r[0]) for r in cursor.fetchall()]
        # The older release had scored the first 150 rows before it stopped.
        cursor.execute(
            "INSERT INTO churn_predictions (key_hash, phone, will_churn, churn_probability, "
            "model_endpoint, scored_at) SELECT UNHEX(SHA2(CONCAT('[\"', phone, '\"]'), 256)), "
            "phone, 'old', 0, 'old', NOW(6) FROM churn WHERE phone <= %s",
            (phones[149],),
        )
        cursor.execute(
            "UPDATE cdc_scorer_checkpoint SET snapshot_position=position, position=NULL, "
            "snapshot_state='running', snapshot_cursor=%s, rescore=NULL WHERE pipeline='churn'",
            (f'["{phones[149]}"]',),
        )
    async with Running(spec):
        insert_churn(db, list(ChurnRowGenerator(73).rows(20)))  # streamed meanwhile
        await wait_for(lambda: _snapshot_done(db), what="the snapshot finished")
        await wait_for(lambda: len(_stored(db, "churn_predictions")) == 420, what="all rows")
    stored = _stored(db, "churn_predictions")
    expected = expected_churn(db)
    old = {p for p, (label, _, _) in stored.items() if label == "old"}
    assert old == set(phones[:150])  # the chunks before the cursor are not read again
    assert all(stored[p][0] == expected[p][0] for p in expected if p not in old)
    db.close()


def _checkpointed(db: Any) -> bool:
    with db.cursor() as cursor:
        cursor.execute("SELECT position FROM cdc_scorer_checkpoint WHERE pipeline='churn'")
        row = cursor.fetchone()
    return row is not None and row[0] is not None


def _snapshot_done(db: Any) -> bool:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT snapshot_state, position IS NOT NULL FROM cdc_scorer_checkpoint "
            "WHERE pipeline='churn'"
        )
        return bool(cursor.fetchone() == ("done", 1))
