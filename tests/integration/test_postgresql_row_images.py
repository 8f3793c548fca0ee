"""Row images on PostgreSQL: an UPDATE under REPLICA IDENTITY DEFAULT leaves out a TOASTed value
it did not change — a model that reads only that value keeps its prediction (the update is
skipped), a model that reads it beside a column that arrived is never scored from a guess (a
dead letter with the fix); under REPLICA IDENTITY FULL the old image fills it in."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.local.endpoints import ModelServer
from tests.integration.scenario import Running, wait_for
from tests.pg import PgDatabase

LONG = "I love this product, it works well. " * 100  # 3,600 bytes: stored out of line


def _config(path: Path, db: PgDatabase, endpoint_url: str) -> None:
    batching = {"max_rows": 25, "linger_ms": 50}
    text = {"table": "docs", "service": "comprehend", "batching": batching}
    path.write_text(
        tomli_w.dumps(
            {
                "source": {
                    "engine": "postgresql",
                    "host": db.server.host,
                    "port": db.server.port,
                    "user": db.server.user,
                    "database": db.name,
                    "pgoutput": {"slot_name": db.slot, "heartbeat_interval_s": 0.5},
                },
                "http": {"port": 0},
                "aws": {"region": "us-east-1", "endpoint_url": endpoint_url},
                "retry": {"base_ms": 20, "cap_ms": 200},
                "pipelines": [
                    {"name": "text", **text, "comprehend": {"text_column": "body"}},
                    {
                        "name": "text_and_language",
                        **text,
                        "predictions_table": "docs_language_predictions",
                        "comprehend": {"text_column": "body", "language_column": "lang"},
                    },
                ],
            }
        )
    )


async def test_unchanged_toasted_inputs_are_skipped_or_dead_lettered_never_guessed(
    pg: PgDatabase, tmp_path: Path, models: ModelServer
) -> None:
    pg.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text, lang varchar(8), note text)")
    pg.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")  # out of line, always
    pg.execute("INSERT INTO docs VALUES (1, %s, 'en', 'first')", (LONG,))
    config = tmp_path / "s.toml"
    _config(config, pg, models.url)
    assert cli(["init", "--config", str(config)]) == 0
    spec = load_config(config)

    def scored(table: str) -> int:
        return int(pg.rows(f"SELECT count(*) FROM {table}")[0][0])

    def dead(reason: str) -> int:
        return int(
            pg.rows("SELECT count(*) FROM cdc_scorer_dead_letter WHERE reason = %s", (reason,))[0][
                0
            ]
        )

    async with Running(spec) as app:
        await wait_for(lambda: scored("docs_predictions") == 1, what="text scored")
        await wait_for(lambda: scored("docs_language_predictions") == 1, what="both scored")
        skipped = app.telemetry.rows_skipped
        # DEFAULT identity: an UPDATE of another column leaves the long body out.
        pg.execute("UPDATE docs SET note = 'second' WHERE id = 1")
        await wait_for(lambda: dead("unchanged_toast") == 1, what="the dead letter")
        ((error,),) = pg.rows("SELECT error FROM cdc_scorer_dead_letter")
        assert "model input body was left out of the change" in error, error
        assert "ALTER TABLE docs REPLICA IDENTITY FULL" in error, error
        await wait_for(
            lambda: skipped["text:unchanged_inputs"] == 1, what="the body-only model skips it"
        )
        # FULL identity: the old image carries the body; nothing is left out any more.
        pg.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
        pg.execute("UPDATE docs SET note = 'third' WHERE id = 1")
        await wait_for(
            lambda: (
                skipped["text_and_language:unchanged_inputs"] == 1
                and skipped["text:unchanged_inputs"] == 2
            ),
            what="an update of no input skipped by both, by the old image",
        )
        pg.execute("UPDATE docs SET lang = 'en', body = body || ' Really.' WHERE id = 1")
        await wait_for(
            lambda: (
                pg.rows("SELECT sentiment FROM docs_language_predictions") == [("POSITIVE",)]
                and app.telemetry.rows_scored["text_and_language"] == 2
            ),
            what="a real change scored",
        )
        assert dead("unchanged_toast") == 1


async def test_a_key_left_out_of_an_update_stops_with_one_line_never_a_wrong_key(
    pg: PgDatabase, tmp_path: Path, models: ModelServer
) -> None:
    import asyncio

    from cdc_scorer.app import ScorerApp
    from cdc_scorer.core.errors import FatalError

    # A long text key stored out of line: an UPDATE of another column leaves it out.
    pg.execute("CREATE TABLE docs (id text PRIMARY KEY, body text, lang varchar(8), note text)")
    pg.execute("ALTER TABLE docs ALTER COLUMN id SET STORAGE EXTERNAL")
    key = "k" * 2300
    pg.execute("INSERT INTO docs VALUES (%s, 'fine service', 'en', 'first')", (key,))
    config = tmp_path / "s.toml"
    _config(config, pg, models.url)
    assert cli(["init", "--config", str(config)]) == 0
    app = ScorerApp(load_config(config))
    task = asyncio.create_task(app.run())
    await wait_for(
        lambda: pg.rows("SELECT count(*) FROM docs_predictions") == [(1,)], what="scored"
    )
    pg.execute("UPDATE docs SET note = 'second'")
    try:
        await asyncio.wait_for(task, 30)
    except FatalError as exc:
        assert "left its key column out of the change" in str(exc), exc
        assert "REPLICA IDENTITY FULL" in str(exc)
    else:
        raise AssertionError("the scorer went on with a row it cannot name")
