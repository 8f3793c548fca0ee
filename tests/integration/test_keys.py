"""Keys of the types real tables have: every one is scored, snapshotted, updated and deleted,
on MariaDB and MySQL (``init`` once refused keys shorter than the index prefix it took)."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.sentiment import SentimentModel
from cdc_scorer.local.servers import DatabaseServer
from tests.integration.scenario import (
    Running,
    create_database,
    init_scorer,
    wait_for,
    write_config,
)

# table → (key columns DDL, primary key, a function of i giving the key values)
KEYED_TABLES: dict[str, tuple[str, str, Any]] = {
    "k_uuid": ("id CHAR(36) NOT NULL", "id", lambda i: (str(uuid.UUID(int=i * 7919)),)),
    "k_code": ("code VARCHAR(20) NOT NULL", "code", lambda i: (f"C-{i:05d}",)),
    "k_bin": ("id BINARY(16) NOT NULL", "id", lambda i: (uuid.UUID(int=i * 104729).bytes,)),
    "k_big": ("id BIGINT UNSIGNED NOT NULL", "id", lambda i: (2**63 + i * 1_000_003,)),
    "k_comp": (
        "region VARCHAR(10) NOT NULL, n INT NOT NULL",
        "region, n",
        lambda i: (("eu", "us", "ap")[i % 3], i),
    ),
    "k_date": ("d DATE NOT NULL", "d", lambda i: (date(2020, 1, 1) + timedelta(days=i),)),
    "k_long": ("name VARCHAR(300) NOT NULL", "name", lambda i: ("n" * 250 + str(i),)),
}
TEXTS = ("great service, thank you", "terrible, I want a refund", "it is a phone")


def _text(i: int, version: int = 0) -> str:
    return f"{TEXTS[(i + version) % 3]} #{i}"


@pytest.mark.timeout(180)
async def test_keys_of_every_common_type(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    database = f"keys_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    with db.cursor() as cursor:
        for table, (columns, key, _) in KEYED_TABLES.items():
            cursor.execute(
                f"CREATE TABLE {table} ({columns}, user_feedback TEXT, PRIMARY KEY ({key}))"
            )
    pipelines = {
        table: {
            "table": table,
            "service": "comprehend",
            "comprehend": {"text_column": "user_feedback"},
            "batching": {"max_rows": 25, "linger_ms": 50},
            "snapshot_chunk_rows": 7,  # several chunks: the cursor moves through key values
        }
        for table in KEYED_TABLES
    }
    spec = write_config(tmp_path / "keys.toml", server, database, models.url, pipelines=pipelines)
    init_scorer(spec)  # refused CHAR(36), VARCHAR(20), BINARY(16) and the composite before
    _insert(db, range(0, 30))  # snapshotted
    async with Running(spec):
        _insert(db, range(30, 60))  # streamed
        with db.cursor() as cursor:
            for table, (_, key, values_of) in KEYED_TABLES.items():
                where = " AND ".join(f"{c.strip()} = %s" for c in key.split(","))
                for i in range(0, 60, 4):
                    cursor.execute(
                        f"UPDATE {table} SET user_feedback = %s WHERE {where}",
                        (_text(i, 1), *values_of(i)),
                    )
                for i in range(1, 60, 5):
                    cursor.execute(f"DELETE FROM {table} WHERE {where}", values_of(i))
        for table in KEYED_TABLES:
            await wait_for(lambda t=table: _scored(db, t), 60, f"{table} scored")  # type: ignore[misc]
    db.close()


def _insert(db: Any, numbers: range) -> None:
    with db.cursor() as cursor:
        for table, (columns, _, values_of) in KEYED_TABLES.items():
            names = [c.split()[0] for c in columns.split(",")]
            for i in numbers:
                cursor.execute(
                    f"INSERT INTO {table} ({', '.join(names)}, user_feedback) "
                    f"VALUES ({', '.join(['%s'] * (len(names) + 1))})",
                    (*values_of(i), _text(i)),
                )


def _scored(db: Any, table: str) -> bool:
    """Through the analysts' view: every row has its text's sentiment, and the predictions
    table holds no row more (the deleted ones are gone)."""
    model = SentimentModel()
    with db.cursor() as cursor:
        cursor.execute(f"SELECT user_feedback, sentiment FROM {table}_scored")
        rows = cursor.fetchall()
        cursor.execute(f"SELECT COUNT(*) FROM {table}_predictions")
        (predictions,) = cursor.fetchone()
    return (
        len(rows) == 48
        and predictions == 48
        and all(sentiment == model.detect(text).sentiment for text, sentiment in rows)
    )
