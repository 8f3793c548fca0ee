"""The daemon in-process against each private source (MariaDB and MySQL, GTIDs and file:pos)
and the local endpoints over HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pymysql
import pytest
from prometheus_client import generate_latest

from cdc_scorer.commands.cli import main as cli
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import CHURN_TABLE_DDL, FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.sources.log_status import PipelineStatus, pipeline_status
from cdc_scorer.sources.registry import source_of as source_for
from cdc_scorer.stores.registry import build_store
from tests.conftest import Source, source_of
from tests.integration.scenario import (
    Running,
    churn_matches,
    compressed_transactions,
    create_database,
    expected_feedback,
    init_scorer,
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
    init_scorer(spec)
    return spec


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


async def test_a_first_snapshot_over_old_predictions_sweeps_the_rows_gone(
    spec: ScorerSpec, db: Any
) -> None:
    """A pipeline started afresh (no checkpoint) over a predictions table an earlier deployment
    filled: its first snapshot removes the predictions whose rows are gone and counts them."""
    rows = list(ChurnRowGenerator(101).rows(60))
    insert_churn(db, rows)
    async with Running(spec):
        await wait_for(lambda: churn_matches(db), what="snapshot predictions")
    gone = [r["phone"] for r in rows[:10]]
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM churn WHERE phone IN %s", (gone,))
        cursor.execute("DELETE FROM cdc_scorer_checkpoint")  # the scorer starts afresh
    assert set(gone) <= set(stored_churn(db))
    async with Running(spec) as app:
        await wait_for(lambda: churn_matches(db), what="the old predictions swept")
        await wait_for(lambda: app.telemetry.rescore_orphans["churn"] == 10, what="counted")
        # The sweep's chunks come first, then the rows' (counted as they are merged).
        await wait_for(lambda: app.telemetry.rescore_rows["churn"] == 50, what="rows counted")
        assert app.telemetry.rescore_orphans["feedback"] == 0


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
    init_scorer(spec)
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


# ---------------------------------------------------------------- what MySQL adds
@pytest.fixture(params=["mysql-gtid", "mysql-file"])
def mysql(request: pytest.FixtureRequest) -> Source:
    return source_of(request, request.param)


async def test_compressed_transactions_of_one_session(
    tmp_path: Path, mysql: Source, models: ModelServer
) -> None:
    """binlog_transaction_compression set by the writer's session only: its transactions are
    compressed, everyone else's are not; both kinds interleave in the stream."""
    database = f"mltest_{uuid.uuid4().hex[:8]}"
    create_database(mysql.server, database)
    spec = write_config(tmp_path / "s.toml", mysql.server, database, models.url)
    init_scorer(spec)
    compressed = mysql.server.connect(database)
    plain = mysql.server.connect(database)
    with compressed.cursor() as cursor:
        cursor.execute("SET SESSION binlog_transaction_compression = ON")
    before = compressed_transactions(plain)
    generator = ChurnRowGenerator(41)
    async with Running(spec):
        for round_ in range(6):
            writer = compressed if round_ % 2 == 0 else plain
            rows = list(generator.rows(50))
            insert_churn(writer, rows)
            with writer.cursor() as cursor:
                cursor.execute(
                    "UPDATE churn SET day_mins = day_mins + 1 WHERE phone IN (%s, %s, %s)",
                    tuple(r["phone"] for r in rows[:3]),
                )
                cursor.execute("DELETE FROM churn WHERE phone = %s", (rows[5]["phone"],))
                cursor.execute(
                    "INSERT INTO feedback (user_feedback) VALUES (%s)", (f"great, round {round_}",)
                )
        await wait_for(lambda: churn_matches(plain), what="churn after a mixed stream")
        await wait_for(lambda: stored_feedback(plain) == expected_feedback(plain), what="feedback")
    assert len(stored_churn(plain)) == 6 * 49
    # The compressed session's 3 rounds wrote 4 transactions each (autocommit statements).
    assert compressed_transactions(plain) - before == 12
    compressed.close()
    plain.close()


@pytest.mark.timeout(300)
async def test_a_100000_row_compressed_transaction(
    tmp_path: Path, models: ModelServer, request: pytest.FixtureRequest
) -> None:
    """One UPDATE of 100,000 rows in one compressed transaction (one TRANSACTION_PAYLOAD
    event), read while it is decompressed, converges; on MySQL without GTIDs (file:pos, as
    Aurora MySQL ships), where positions are the payload's boundary."""
    source = source_of(request, "mysql-file")
    database = f"mltest_{uuid.uuid4().hex[:8]}"
    create_database(source.server, database)
    # No snapshot: the rows are scored from the big transaction alone.
    spec = write_config(
        tmp_path / "s.toml", source.server, database, models.url, max_rows=500, snapshot="never"
    )
    init_scorer(spec)
    db = source.server.connect(database)
    generator = ChurnRowGenerator(43)
    for _ in range(20):
        insert_churn(db, list(generator.rows(5000)))
    async with Running(spec):
        await wait_for(lambda: _checkpointed(db), what="streaming")
        before = compressed_transactions(db)
        with db.cursor() as cursor:
            cursor.execute("SET SESSION binlog_transaction_compression = ON")
            cursor.execute("UPDATE churn SET day_mins = day_mins * 1.5, night_calls = 0")
        assert compressed_transactions(db) - before == 1  # one compressed transaction
        # Every row is scored from the big transaction (a count: the oracle costs seconds).
        await wait_for(lambda: _predictions(db) == 100_000, 180, "the big transaction scored")
    assert churn_matches(db)
    db.close()


def _predictions(db: Any) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM churn_predictions")
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _checkpointed(db: Any) -> bool:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM cdc_scorer_checkpoint")
        (count,) = cursor.fetchone() or (0,)
    return int(count) == 2


async def test_partial_json_updates(
    tmp_path: Path, models: ModelServer, request: pytest.FixtureRequest
) -> None:
    """binlog_row_value_options=PARTIAL_JSON: an update logs only a diff of its JSON columns.
    A pipeline whose model reads none of them scores the row as usual; one whose model reads
    the JSON column gets a dead letter saying so — the row is never dropped."""
    source = source_of(request, "mysql-gtid")
    database = f"mltest_{uuid.uuid4().hex[:8]}"
    create_database(source.server, database)
    db = source.server.connect(database)
    with db.cursor() as cursor:
        cursor.execute("ALTER TABLE feedback ADD COLUMN meta JSON")
        cursor.execute("CREATE TABLE notes (id INT PRIMARY KEY, body JSON)")
    notes = {
        "table": "notes",
        "service": "comprehend",
        "comprehend": {"text_column": "body", "language": "en"},
        "batching": {"linger_ms": 50},
    }
    spec = write_config(
        tmp_path / "s.toml", source.server, database, models.url, pipelines={"notes": notes}
    )
    init_scorer(spec)
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO feedback (user_feedback, meta) VALUES "
            """('terrible, I am cancelling', '{"tags": ["a", "b"], "n": 1}')"""
        )
        cursor.execute("""INSERT INTO notes VALUES (1, '{"text": "great service, thanks"}')""")
    async with Running(spec):
        await wait_for(lambda: stored_feedback(db) == {1: "NEGATIVE"}, what="feedback scored")
        await wait_for(lambda: _notes(db) == {1: "POSITIVE"}, what="notes scored")
        with db.cursor() as cursor:
            cursor.execute("SET SESSION binlog_row_value_options = 'PARTIAL_JSON'")
            cursor.execute(
                "UPDATE feedback SET user_feedback = 'great service, thank you', "
                "meta = JSON_SET(meta, '$.n', 2) WHERE id = 1"
            )
            cursor.execute(
                """UPDATE notes SET body = JSON_SET(body, '$.text', 'awful') WHERE id = 1"""
            )
        await wait_for(lambda: stored_feedback(db) == {1: "POSITIVE"}, what="feedback update")
        await wait_for(lambda: _notes(db) == {}, what="the note's old prediction removed")
    with db.cursor() as cursor:
        cursor.execute("SELECT pipeline, reason, error FROM cdc_scorer_dead_letter")
        ((pipeline, reason, error),) = cursor.fetchall()
    assert (pipeline, reason) == ("notes", "partial_json_update")
    assert "model input body arrived as a partial JSON update" in error
    assert "set binlog_row_value_options=''" in error
    db.close()


def _notes(db: Any) -> dict[int, str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id, sentiment FROM notes_predictions")
        return {int(i): str(s) for i, s in cursor.fetchall()}


async def test_truncate_and_a_column_added_in_the_middle(spec: ScorerSpec, db: Any) -> None:
    """TRUNCATE writes no row events: the pipeline's predictions go with the checkpoint that
    passes it. A column added in the middle of the table changes nothing (inputs by name)."""
    generator = ChurnRowGenerator(81)
    async with Running(spec):
        insert_churn(db, list(generator.rows(30)))
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO feedback (user_feedback) VALUES (%s)",
                [(f"great service {i}",) for i in range(5)],
            )
        await wait_for(lambda: len(stored_churn(db)) == 30, what="churn scored")
        await wait_for(lambda: len(stored_feedback(db)) == 5, what="feedback scored")
        with db.cursor() as cursor:
            cursor.execute("ALTER TABLE churn ADD COLUMN note VARCHAR(20) NULL AFTER state")
            cursor.execute("UPDATE churn SET note = 'x', day_mins = day_mins + 1 LIMIT 10")
        insert_churn(db, list(generator.rows(10)))
        with db.cursor() as cursor:
            cursor.execute("TRUNCATE TABLE feedback")
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('terrible, I am leaving')")
        await wait_for(lambda: churn_matches(db) and len(stored_churn(db)) == 40, what="churn")
        await wait_for(lambda: stored_feedback(db) == expected_feedback(db), what="feedback")
    assert list(stored_feedback(db).values()) == ["NEGATIVE"]  # only the row after TRUNCATE


async def test_a_dropped_input_stops_its_pipeline_and_no_other(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    """An input column dropped while streaming: never read as a NULL — the churn pipeline stops
    with one clear reason (log, /readyz, metric) at the first change without it, the feedback
    pipeline goes on."""
    spec, db = _streaming_churn(tmp_path, server, models)
    generator = ChurnRowGenerator(93)
    async with Running(spec) as app:
        insert_churn(db, list(generator.rows(10)))
        await wait_for(lambda: len(stored_churn(db)) == 10, what="churn scored")
        with db.cursor() as cursor:
            cursor.execute("ALTER TABLE churn DROP COLUMN eve_mins")
            cursor.execute(
                "INSERT INTO churn (phone, state, day_mins) VALUES ('000-0000', 'KS', 1.0)"
            )
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('great, thank you')")
        await wait_for(lambda: stored_feedback(db) == {1: "POSITIVE"}, what="feedback goes on")
        await wait_for(lambda: app.telemetry.pipelines["churn"].stopped is not None, what="stop")
        reason = app.telemetry.pipelines["churn"].stopped or ""
        assert reason.startswith("pipeline churn: column eve_mins of table churn is gone"), reason
        assert any(r.startswith("pipeline churn stopped: ") for r in app.not_ready())
        metrics = generate_latest(app.telemetry.registry).decode()
        assert 'cdc_scorer_pipeline_stopped{pipeline="churn"} 1.0' in metrics
        assert 'cdc_scorer_pipeline_stopped{pipeline="feedback"} 0.0' in metrics
        assert "000-0000" not in stored_churn(db)  # not scored from a NULL in its place
        statuses = {s.pipeline: s for s in _status(spec)}
        assert statuses["churn"].stopped == reason  # `cdc-scorer status` shows it
        assert statuses["feedback"].stopped is None
    db.close()


async def test_a_renamed_table_stops_its_pipeline_and_no_other(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    """RENAME TABLE takes the captured table away without a row event: the pipeline stops with
    the statement in its reason, rather than keep predictions nobody updates."""
    spec, db = _streaming_churn(tmp_path, server, models)
    async with Running(spec) as app:
        insert_churn(db, list(ChurnRowGenerator(94).rows(10)))
        await wait_for(lambda: len(stored_churn(db)) == 10, what="churn scored")
        with db.cursor() as cursor:
            cursor.execute("RENAME TABLE churn TO churn_old")
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('great, thank you')")
        await wait_for(lambda: app.telemetry.pipelines["churn"].stopped is not None, what="stop")
        reason = app.telemetry.pipelines["churn"].stopped or ""
        assert reason.startswith(
            "pipeline churn: table churn was dropped or renamed (RENAME TABLE churn TO churn_old)"
        ), reason
        await wait_for(lambda: stored_feedback(db) == {1: "POSITIVE"}, what="feedback goes on")
    # The fix the line names for a table made anew: reposition --now --rescore, then restart.
    command = "reposition --config FILE --pipeline churn --now --rescore"
    assert f"`cdc-scorer {command}`" in reason, reason
    fresh = list(ChurnRowGenerator(96).rows(7))
    with db.cursor() as cursor:
        cursor.execute(CHURN_TABLE_DDL)
    insert_churn(db, fresh)
    config = str(tmp_path / "s.toml")
    assert cli(command.replace("FILE", config).split()) == 0
    async with Running(spec):
        await wait_for(
            lambda: set(stored_churn(db)) == {r["phone"] for r in fresh},
            what="the new table's rows scored, the old ones' predictions removed",
        )
    assert churn_matches(db)
    db.close()


async def test_the_analysts_views_follow_the_tables_columns(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> None:
    """`<table>_scored` expands `s.*` when it is made: the pipeline makes it again at each
    ALTER TABLE of its source it reads, so a column added shows up, and a column dropped or
    renamed that no model reads does not break the view for its readers."""
    spec, db = _streaming_churn(tmp_path, server, models)
    generator = ChurnRowGenerator(95)
    async with Running(spec):
        insert_churn(db, list(generator.rows(10)))
        with db.cursor() as cursor:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('great, thank you')")
        await wait_for(lambda: len(stored_churn(db)) == 10, what="churn scored")
        with db.cursor() as cursor:
            cursor.execute("ALTER TABLE feedback ADD COLUMN channel VARCHAR(10) DEFAULT 'web'")
            cursor.execute("ALTER TABLE feedback RENAME COLUMN language TO lang")
            cursor.execute("ALTER TABLE churn DROP COLUMN Churn")  # the label: no input
        await wait_for(
            lambda: (
                _view_columns(db, "feedback_scored")[:4]
                == ["id", "user_feedback", "lang", "channel"]
            ),
            what="feedback_scored with the added and the renamed column",
        )
        await wait_for(
            lambda: "Churn" not in _view_columns(db, "churn_scored"),
            what="churn_scored without the dropped column",
        )
        with db.cursor() as cursor:  # the stream goes on (churn has no Churn column now)
            cursor.executemany(
                f"INSERT INTO churn ({', '.join(FEATURE_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(FEATURE_COLUMNS))})",
                [tuple(r[c] for c in FEATURE_COLUMNS) for r in generator.rows(5)],
            )
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('terrible, I am off')")
        await wait_for(lambda: churn_matches(db) and len(stored_churn(db)) == 15, what="churn")
        await wait_for(lambda: stored_feedback(db) == expected_feedback(db), what="feedback")
    with db.cursor() as cursor:
        cursor.execute("SELECT channel, lang, sentiment FROM feedback_scored ORDER BY id")
        assert cursor.fetchall() == (("web", "en", "POSITIVE"), ("web", "en", "NEGATIVE"))
    db.close()


def _view_columns(db: Any, view: str) -> list[str]:
    """The view's columns as a reader sees them ([] while the view is broken)."""
    try:
        with db.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {view} LIMIT 0")
            return [d[0] for d in cursor.description]
    except pymysql.MySQLError:
        return []


def _streaming_churn(
    tmp_path: Path, server: DatabaseServer, models: ModelServer
) -> tuple[ScorerSpec, Any]:
    """A new database with the scorer's tables, its config, and a connection to it."""
    database = f"mltest_{uuid.uuid4().hex[:8]}"
    create_database(server, database)
    spec = write_config(tmp_path / "s.toml", server, database, models.url)
    init_scorer(spec)
    return spec, server.connect(database)


def _status(spec: ScorerSpec) -> list[PipelineStatus]:
    store = build_store(spec.source, spec.retry)
    try:
        return pipeline_status(source_for(spec, store), spec.pipelines, store)
    finally:
        store.close()
