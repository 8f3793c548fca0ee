"""The PostgreSQL source end to end, in process, on the project's private PostgreSQL: the
blog's two tables scored through pgoutput (snapshot, inserts, updates, deletes, TRUNCATE),
checkpoints as commit LSNs, and the slot told only what is committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdc_scorer.commands.cli import main as cli
from cdc_scorer.local.churn_data import (
    ChurnRowGenerator,
    FeedbackGenerator,
)
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.sources.pgoutput.protocol import parse_lsn
from tests.integration.scenario import (
    Running,
    churn_matches,
    expected_churn,
    expected_feedback,
    stored_feedback,
    wait_for,
)
from tests.pg import PgDatabase, pg_config, slot_lag


def streamed(app: Any, table: str, operation: str) -> float:
    labels = {"table": table, "operation": operation}
    return app.telemetry.registry.get_sample_value("cdc_scorer_source_rows_total", labels) or 0


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
    # init made the publications — of the captured tables, and of the scorer's own (which
    # the scorer owns) — and the slot.
    published = set(pg.rows("SELECT pubname, tablename FROM pg_publication_tables"))
    assert published == {
        ("cdc_scorer", "churn"),
        ("cdc_scorer", "feedback"),
        ("cdc_scorer_own", "cdc_scorer_signal"),
        ("cdc_scorer_own", "cdc_scorer_heartbeat"),
    }
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

    # Checkpoints are commit LSNs; after the clean stop the slot stands exactly at the oldest
    # of them (moved there once the stream closed): nothing covered is kept, nothing more let go.
    flushed, _ = slot_lag(pg)
    positions = [p for (p,) in pg.rows("SELECT position FROM cdc_scorer_checkpoint")]
    assert positions and all(p.startswith("lsn:") for p in positions)
    assert min(parse_lsn(p.removeprefix("lsn:")) for p in positions) == flushed


async def test_champion_and_challenger_on_postgresql(
    pg: PgDatabase, tmp_path: Path, models: ModelServer
) -> None:
    from tests.integration.test_models import CHALLENGER

    generator = ChurnRowGenerator(71)
    live = list(generator.rows(60))
    pg.insert_churn(live)
    config = tmp_path / "s.toml"
    spec = pg_config(
        config,
        pg,
        models.url,
        churn={"model_version": "champion-1"},
        pipelines={"churn-challenger": CHALLENGER},
    )
    assert cli(["init", "--config", str(config)]) == 0

    def matches(table: str, version: str) -> bool:
        expected = expected_churn(pg.conn)
        stored = {
            str(p): (str(label), float(prob), str(v))
            for p, label, prob, v in pg.rows(
                f"SELECT phone, will_churn, churn_probability, model_version FROM {table}"
            )
        }
        return expected.keys() == stored.keys() and all(
            stored[k][0] == label and abs(stored[k][1] - p) < 1e-9 and stored[k][2] == version
            for k, (label, p) in expected.items()
        )

    async with Running(spec):
        pg.insert_churn(list(generator.rows(30)))
        for row in live[:10]:
            pg.execute(
                "UPDATE churn SET day_mins = day_mins + 2.5 WHERE phone = %s", (row["phone"],)
            )
        pg.execute("DELETE FROM churn WHERE phone = %s", (live[20]["phone"],))
        await wait_for(lambda: matches("churn_predictions", "champion-1"), what="champion")
        await wait_for(
            lambda: matches("churn_challenger_predictions", "challenger-2"), what="challenger"
        )
    assert pg.rows("SELECT count(*), count(model_version) FROM churn_scored") == [(89, 89)]
    assert pg.rows(
        "SELECT count(*) FROM churn_challenger_scored WHERE model_version = 'challenger-2'"
    ) == [(89,)]
    assert pg.rows(
        "SELECT model_endpoint, count(*) FROM churn_challenger_predictions GROUP BY 1"
    ) == [("churn-probabilities", 89)]


async def test_a_renamed_table_stops_its_pipelines_the_others_go_on(
    pg: PgDatabase, tmp_path: Path, models: ModelServer
) -> None:
    pg.insert_churn(list(ChurnRowGenerator(9).rows(10)))
    config = tmp_path / "s.toml"
    spec = pg_config(config, pg, models.url)
    assert cli(["init", "--config", str(config)]) == 0
    async with Running(spec) as app:
        await wait_for(lambda: churn_matches(pg.conn), what="churn scored")
        pg.execute("DROP VIEW churn_scored")
        pg.execute("ALTER TABLE churn RENAME TO churn_2026")
        pg.execute("UPDATE churn_2026 SET day_mins = day_mins + 1")  # its next row: Relation
        pg.execute("INSERT INTO feedback (user_feedback) VALUES ('still great')")
        churn = app.telemetry.pipelines["churn"]
        await wait_for(lambda: churn.stopped is not None, what="churn stopped")
        assert "table churn was dropped or renamed (renamed to churn_2026)" in str(churn.stopped)
        await wait_for(lambda: feedback_matches(pg), what="feedback goes on")
