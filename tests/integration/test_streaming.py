"""The daemon in-process against each private source (MariaDB and MySQL, GTIDs and file:pos)
and the local endpoints over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.app import ScorerApp
from cdc_scorer.db import connect
from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.schema import init_schema
from cdc_scorer.spec import ScorerSpec
from tests.conftest import Source
from tests.integration.scenario import (
    RUNNING,
    churn_matches,
    create_database,
    expected_feedback,
    insert_churn,
    stored_churn,
    stored_feedback,
    wait_for,
    write_config,
)


@pytest.fixture
def database(source: Source) -> str:
    name = f"mltest_{uuid.uuid4().hex[:8]}"
    create_database(source.server, name)
    return name


@pytest.fixture
def spec(tmp_path: Path, source: Source, database: str, models: ModelServer) -> ScorerSpec:
    spec = write_config(
        tmp_path / "scorer.toml", source.server, database, models.url, positions=source.positions
    )
    conn = connect(spec.source)
    init_schema(conn, spec)
    conn.close()
    return spec


class Running:
    def __init__(self, spec: ScorerSpec) -> None:
        self.app = ScorerApp(spec)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScorerApp:
        self.task = asyncio.create_task(self.app.run())
        RUNNING.append(self.task)
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        RUNNING.remove(self.task)
        self.app.request_stop()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
def db(source: Source, database: str) -> Any:
    conn = source.server.connect(database)
    yield conn
    conn.close()


async def test_snapshot_then_stream_inserts_updates_deletes(spec: ScorerSpec, db: Any) -> None:
    generator = ChurnRowGenerator(100)
    existing = list(generator.rows(500))
    insert_churn(db, existing)
    async with Running(spec) as app:
        await wait_for(lambda: churn_matches(db), what="snapshot predictions")
        new = list(generator.rows(50))
        insert_churn(db, new)
        with db.cursor() as cursor:
            for row in existing[:20]:
                changed = generator.changed(row)
                cursor.execute(
                    "UPDATE churn SET day_mins=%s, night_calls=%s, eve_charge=%s WHERE phone=%s",
                    (
                        changed["day_mins"],
                        changed["night_calls"],
                        changed["eve_charge"],
                        row["phone"],
                    ),
                )
            cursor.execute(
                "DELETE FROM churn WHERE phone IN (%s, %s)",
                (existing[30]["phone"], new[0]["phone"]),
            )
        await wait_for(lambda: churn_matches(db), what="streamed predictions")
        assert existing[30]["phone"] not in stored_churn(db)
        calls_before = app.telemetry.model_calls["churn"]
        with db.cursor() as cursor:  # a non-feature column: no model call
            cursor.execute("UPDATE churn SET Churn='x' WHERE phone=%s", (existing[1]["phone"],))
        await wait_for(lambda: app.telemetry.rows_skipped["churn:unchanged_inputs"] >= 1)
        assert app.telemetry.model_calls["churn"] == calls_before
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*), COUNT(will_churn) FROM churn_scored")
        assert cursor.fetchone() == (548, 548)


async def test_last_version_wins_and_cross_table_transaction(spec: ScorerSpec, db: Any) -> None:
    row = next(ChurnRowGenerator(7).rows(1))
    insert_churn(db, [row])
    async with Running(spec):
        generator = ChurnRowGenerator(8)
        with db.cursor() as cursor:
            for _ in range(100):
                changed = generator.changed(row)
                cursor.execute(
                    "UPDATE churn SET day_mins=%s, night_calls=%s WHERE phone=%s",
                    (changed["day_mins"], changed["night_calls"], row["phone"]),
                )
            db.begin()
            cursor.execute("UPDATE churn SET day_mins=%s WHERE phone=%s", (12.5, row["phone"]))
            cursor.execute(
                "INSERT INTO feedback (user_feedback) VALUES ('great service, thank you')"
            )
            db.commit()
        await wait_for(lambda: churn_matches(db), what="last version")
        await wait_for(lambda: stored_feedback(db) == expected_feedback(db), what="feedback")


async def test_poison_rows_are_dead_lettered(
    tmp_path: Path, source: Source, database: str, models: ModelServer, db: Any
) -> None:
    spec = write_config(
        tmp_path / "s.toml",
        source.server,
        database,
        models.url,
        overlong="dead_letter",
        positions=source.positions,
    )
    conn = connect(spec.source)
    init_schema(conn, spec)
    conn.close()
    async with Running(spec):
        rows = list(ChurnRowGenerator(9).rows(30))
        rows[10]["int_plan"] = "perhaps"  # the model rejects this record
        insert_churn(db, rows)
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO feedback (user_feedback) VALUES (%s)",
                [
                    ("terrible, I am cancelling",),
                    ("x " * 3000,),
                    ("",),
                    ("great service, thank you",),
                ],
            )
        await wait_for(lambda: churn_matches(db) and len(stored_churn(db)) == 29, what="churn")
        await wait_for(lambda: stored_feedback(db) == expected_feedback(db), what="feedback")
        assert stored_feedback(db) == {1: "NEGATIVE", 4: "POSITIVE"}
        with db.cursor() as cursor:  # feedback updates and deletes
            cursor.execute(
                "UPDATE feedback SET user_feedback='terrible, I am cancelling' WHERE id=4"
            )
            cursor.execute("DELETE FROM feedback WHERE id=1")
        await wait_for(lambda: stored_feedback(db) == {4: "NEGATIVE"}, what="feedback u/d")
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT pipeline, reason FROM cdc_scorer_dead_letter ORDER BY pipeline, reason"
        )
        assert cursor.fetchall() == (
            ("churn", "model_error"),
            ("feedback", "empty_text"),
            ("feedback", "text_too_long"),
        )


async def test_throttling_and_5xx_lose_nothing(
    spec: ScorerSpec, db: Any, models: ModelServer
) -> None:
    models.set_faults({"all": {"throttle_rate": 0.3, "error_5xx_rate": 0.1}})
    async with Running(spec) as app:
        generator = ChurnRowGenerator(11)
        for _ in range(10):
            insert_churn(db, list(generator.rows(30)))
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO feedback (user_feedback) VALUES (%s)",
                [(f"great service number {i}",) for i in range(60)],
            )
        await wait_for(lambda: churn_matches(db) and len(stored_churn(db)) == 300, what="all rows")
        await wait_for(lambda: stored_feedback(db) == expected_feedback(db), what="feedback")
        assert sum(app.telemetry.retries.values()) > 0


async def test_keys_with_quotes_and_backslashes_under_no_backslash_escapes(
    spec: ScorerSpec, db: Any, source: Source
) -> None:
    """The sink writes its SQL with backslash escapes; a server whose default sql_mode has
    NO_BACKSLASH_ESCAPES (where ``\\'`` is a backslash and the end of the string) must still
    get every key exactly."""
    admin = source.server.connect()
    with admin.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.sql_mode")
        (mode,) = cursor.fetchone() or ("",)
        cursor.execute("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    try:
        rows = list(ChurnRowGenerator(31).rows(4))
        for row, odd in zip(rows, ["a'b", "c\\d", "e\\'f", 'g"h\\'], strict=True):
            row["phone"] = odd
        insert_churn(db, rows)
        async with Running(spec):
            await wait_for(lambda: churn_matches(db), what="odd keys scored")
        assert set(stored_churn(db)) >= {"a'b", "c\\d", "e\\'f", 'g"h\\'}
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL sql_mode = %s", (mode,))
        admin.close()
