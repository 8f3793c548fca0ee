"""The PostgreSQL source end to end, in process, on the project's private PostgreSQL: the
blog's two tables scored through pgoutput (snapshot, inserts, updates, deletes, TRUNCATE),
checkpoints as commit LSNs, and the slot told only what is committed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL_POSTGRES,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL_POSTGRES,
    ChurnRowGenerator,
    FeedbackGenerator,
)
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.sources.pgoutput.protocol import parse_lsn
from tests.integration.scenario import (
    Running,
    churn_matches,
    expected_feedback,
    stored_feedback,
    wait_for,
)


class PgDatabase:
    """A database of its own on the shared private PostgreSQL, with the blog's tables."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.name = f"t_{uuid.uuid4().hex[:10]}"
        self.slot = f"cdc_scorer_{self.name}"  # slots are the cluster's: one per test
        admin = server.connect()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {self.name}")
        admin.close()
        self.conn = server.connect(self.name)
        self.execute(CHURN_TABLE_DDL_POSTGRES)
        self.execute(FEEDBACK_TABLE_DDL_POSTGRES)

    def execute(self, sql: str, params: Any = None) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def insert_churn(self, rows: list[dict[str, Any]]) -> None:
        columns = [*FEATURE_COLUMNS, "churn"]
        with self.conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO churn ({', '.join(columns)}) "
                f"VALUES ({', '.join(['%s'] * len(columns))})",
                [tuple(r[c if c != "churn" else "Churn"] for c in columns) for r in rows],
            )

    def drop(self) -> None:
        self.conn.close()
        admin = self.server.connect()
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.slot,),
            )
            cursor.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[PgDatabase]:
    database = PgDatabase(postgres)
    yield database
    database.drop()


def pg_config(
    path: Path, db: PgDatabase, endpoint_url: str, *, http_port: int = 0, **source: Any
) -> ScorerSpec:
    path.write_text(
        local_scorer_config(
            port=db.server.port,
            database=db.name,
            endpoint_url=endpoint_url,
            http_port=http_port,
            overrides={
                "shutdown_grace_s": 20,
                "source": {
                    "engine": "postgresql",
                    "user": db.server.user,
                    "slot_name": db.slot,
                    "heartbeat_interval_s": 0.5,
                    **source,
                },
                "retry": {"base_ms": 20, "cap_ms": 200},
                "pipelines": {
                    "churn": {"batching": {"max_rows": 100, "linger_ms": 50}},
                    "feedback": {"batching": {"max_rows": 25, "linger_ms": 50}},
                },
            },
        )
    )
    return load_config(path)


def slot_lag(db: PgDatabase) -> tuple[int, int]:
    """(the slot's confirmed flush LSN, the server's current LSN)."""
    ((flushed, now),) = db.rows(
        "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (db.slot,),
    )
    return parse_lsn(flushed), parse_lsn(now)


def streamed(app: Any, table: str, operation: str) -> float:
    labels = {"table": table, "operation": operation}
    return app.telemetry.registry.get_sample_value("cdc_scorer_binlog_rows_total", labels) or 0


def feedback_matches(db: PgDatabase) -> bool:
    return stored_feedback(db.conn) == expected_feedback(db.conn)


async def test_the_blog_scenario_streams_through_pgoutput(
    pg: PgDatabase, tmp_path: Path, models: ModelServer
) -> None:
    churn_rows = ChurnRowGenerator(seed=3)
    feedback = FeedbackGenerator(seed=5)
    existing = list(churn_rows.rows(40))
    pg.insert_churn(existing)
    for _ in range(10):
        pg.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (feedback.text(),))
    config = tmp_path / "scorer.toml"
    spec = pg_config(config, pg, models.url)
    assert cli(["init", "--config", str(config)]) == 0
    # init made the publication of the captured tables and the scorer's own, and the slot.
    published = {t for (t,) in pg.rows("SELECT tablename FROM pg_publication_tables")}
    assert published == {"churn", "feedback", "cdc_scorer_signal", "cdc_scorer_heartbeat"}
    assert pg.rows("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (pg.slot,)) == [
        ("pgoutput",)
    ]

    async with Running(spec) as app:
        await wait_for(lambda: churn_matches(pg.conn), what="the first snapshot of churn")
        await wait_for(lambda: feedback_matches(pg), what="the first snapshot of feedback")
        snapshot_rows = sum(app.telemetry.rows_scored.values())

        added = list(churn_rows.rows(30))
        pg.insert_churn(added)
        with pg.conn.cursor() as cursor:
            for row in existing[:10]:  # inputs changed: re-scored
                new = churn_rows.changed(row)
                cursor.execute(
                    "UPDATE churn SET day_mins = %s, eve_mins = %s WHERE phone = %s",
                    (new["day_mins"], new["eve_mins"], row["phone"]),
                )
            cursor.execute(
                "UPDATE churn SET churn = 'x' WHERE phone = %s", (existing[10]["phone"],)
            )  # no input changed: skipped, the old image says so
            cursor.execute(
                "DELETE FROM churn WHERE phone = ANY(%s)", ([r["phone"] for r in existing[20:25]],)
            )
            cursor.execute("UPDATE feedback SET user_feedback = %s WHERE id = 1", ("I hate it",))
            cursor.execute("DELETE FROM feedback WHERE id = 2")
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('Wonderful service')")
        await wait_for(lambda: churn_matches(pg.conn), what="churn to follow the writes")
        await wait_for(lambda: feedback_matches(pg), what="feedback to follow the writes")
        # Through the stream, counted as it was read (the snapshot's rows are not):
        for operation, rows in (("insert", 30), ("update", 11), ("delete", 5)):
            assert streamed(app, "churn", operation) == rows, operation
        assert app.telemetry.rows_skipped["churn:unchanged_inputs"] >= 1

        pg.execute("TRUNCATE feedback")
        await wait_for(
            lambda: pg.rows("SELECT count(*) FROM feedback_predictions") == [(0,)],
            what="TRUNCATE to empty feedback's predictions",
        )
        assert sum(app.telemetry.rows_scored.values()) > snapshot_rows

        # The slot is told what is committed, also while quiet: after a heartbeat or two it
        # has let go of everything the scorer covered.
        def caught_up() -> bool:
            flushed, now = slot_lag(pg)
            return now - flushed < 2_000

        await wait_for(caught_up, timeout_s=20, what="the slot's confirmed flush to catch up")

    # Checkpoints are commit LSNs, at or before what the slot confirmed.
    flushed, _ = slot_lag(pg)
    for (position,) in pg.rows("SELECT position FROM cdc_scorer_checkpoint"):
        assert position.startswith("lsn:")
        assert parse_lsn(position.removeprefix("lsn:")) <= flushed
