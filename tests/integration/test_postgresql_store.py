"""The PostgreSQL store dialect through the Store protocol, on the project's private
PostgreSQL: the second dialect is one package and one registry line."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.own_tables import OWN_TABLES
from cdc_scorer.core.records import Checkpoint, DeadLetter, Prediction, ScoredBatch
from cdc_scorer.core.spec import FeedSpec, PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.services.comprehend import ComprehendSpec
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition, decode_binlog_position
from cdc_scorer.stores import Store
from cdc_scorer.stores.registry import build_store

FEEDBACK = PipelineSpec("feedback", "feedback", ComprehendSpec("user_feedback"))
AT = datetime(2026, 11, 28, 6, 0, 0)


def _store(postgres: PostgresServer, database: str) -> Store:
    conn = postgres.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
    conn.close()
    conn = postgres.connect(database)
    with conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE feedback (id bigint PRIMARY KEY, user_feedback text, lang varchar(8))"
        )
        cursor.execute(
            "INSERT INTO feedback SELECT i, 'text ' || i, 'en' FROM generate_series(1, 25) i"
        )
    conn.close()
    source = SourceSpec(
        database=database,
        engine="postgresql",
        host=postgres.host,
        port=postgres.port,
        user=postgres.user,
        feed=FeedSpec(),
    )
    return build_store(source, RetrySpec(base_ms=10, cap_ms=50))


def _batch(sequence: int, seq: int, keys: range, checkpoint_state: str = "done") -> ScoredBatch:
    position = MariadbGtidPosition("pg:test", (Gtid(0, 1, seq),))
    return ScoredBatch(
        sequence=sequence,
        upserts=tuple(
            Prediction(
                (i,),
                {"sentiment": "POSITIVE", "sentiment_positive": 0.9, "sentiment_negative": 0.1},
                None,
                f"0-1-{seq}",
                AT,
            )
            for i in keys
        ),
        deletes=(),
        dead_letters=(DeadLetter((99,), "empty_text", "text is empty", "{}", f"0-1-{seq}"),),
        checkpoint=Checkpoint(position, checkpoint_state),
    )


async def test_the_store_protocol_on_postgresql(postgres: PostgresServer) -> None:
    store = _store(postgres, "store_a")
    statements = store.init([FEEDBACK])
    assert store.init([FEEDBACK]) == statements  # idempotent
    store.check_schema([FEEDBACK])
    # Each of the scorer's own tables and the predictions table.
    assert [problem for _, problem in store.check_writes([FEEDBACK])] == [None] * (
        len(OWN_TABLES) + 1
    )
    (connection, tls) = store.check_connection()
    assert connection[1] and tls[2].startswith("plaintext")
    assert store.inspect_tables([FEEDBACK])["feedback"].key_columns == ("id",)

    sink = store.sink(FEEDBACK, ("id",), "pg:test", decode_binlog_position)
    other = store.sink(FEEDBACK, ("id",), "pg:test", decode_binlog_position)
    assert sink.try_lead(0)
    assert not other.try_lead(0.2)  # one leader per pipeline
    assert store.leader(FEEDBACK) is not None
    sink.expect(Checkpoint(None))
    await sink.write([_batch(0, 5, range(1, 21))])
    stored = store.load_checkpoints(["feedback"], decode_binlog_position)["feedback"]
    assert str(stored.checkpoint.position) == "gtid:0-1-5"
    counts = store.counts(FEEDBACK)
    assert (counts.predictions, counts.dead_letters) == (20, 1)

    conn = postgres.connect("store_a")
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM feedback_scored WHERE sentiment = 'POSITIVE'")
        assert cursor.fetchone() == (20,)
        # A column added: the batch that carries it makes the view again, in its transaction.
        cursor.execute("ALTER TABLE feedback ADD COLUMN channel varchar(8) DEFAULT 'web'")
    changed = _batch(1, 6, range(21, 26))
    await sink.write(
        [
            ScoredBatch(
                changed.sequence,
                changed.upserts,
                (),
                (),
                changed.checkpoint,
                columns_changed=True,
            )
        ]
    )
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM feedback_scored WHERE channel = 'web'")
        assert cursor.fetchone() == (25,)

    # Chunks in key order after a cursor, counts, signal rows.
    chunks = store.chunks(FEEDBACK, store.inspect_tables([FEEDBACK])["feedback"])
    assert [r["id"] for r in chunks.select(None, (20,), 3)] == [21, 22, 23]
    assert chunks.count("id <= 10") == 10
    chunks.signal("s1", "feedback", "rescore", {"where": None})
    chunks.forget(["s1"])
    assert chunks.column_types()["channel"] == "character varying(8)"
    chunks.close()

    # Fencing: the writing connection is lost and someone else moves the checkpoint.
    sink.close()
    store.save_checkpoint(
        "feedback", Checkpoint(MariadbGtidPosition("pg:test", (Gtid(0, 1, 99),))), "pg:test"
    )
    with pytest.raises(FatalError, match="changed while this instance was disconnected"):
        await sink.write([_batch(2, 7, range(1, 3))])
    sink.close()
    other.close()

    # The heartbeat writes its row.
    task = asyncio.create_task(store.heartbeat("a,b", 2.0).run())
    for _ in range(100):
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM cdc_scorer_heartbeat WHERE instance = 'a,b'")
            if cursor.fetchone() == (1,):
                break
        await asyncio.sleep(0.02)
    task.cancel()
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM cdc_scorer_heartbeat")
        assert cursor.fetchone() == (1,)
    conn.close()
    store.close()
