"""The PostgreSQL sink: ONE transaction per batch (or run of batches: ``stores/fenced.py``) —
prediction upserts/deletes, dead letters, checkpoint — in PostgreSQL's SQL (``INSERT … ON
CONFLICT``); the fence is ``stores/fenced.py``.
Unlike MySQL, the view made again after an ALTER TABLE commits with the batch."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

import psycopg2
import psycopg2.extras

from cdc_scorer.core.own_tables import DEAD_LETTER_TABLE
from cdc_scorer.core.records import ScoredBatch
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.postgresql.connection import (
    Connection,
    close_quietly,
    connect,
    pg_errors,
    quote,
)
from cdc_scorer.stores import (
    OnRetry,
    PositionDecoder,
    StoredCheckpoint,
    dead_letter_rows,
    prediction_columns,
)
from cdc_scorer.stores.fenced import FencedSink, WriterConnection
from cdc_scorer.stores.keys import key_hash
from cdc_scorer.stores.postgresql.schema import prediction_value_columns, view_statements
from cdc_scorer.stores.postgresql.tables import (
    checkpoint_upsert,
    load_checkpoints,
    record_stop,
    release_lock,
    try_lock,
)


class PostgresSink(FencedSink[Connection]):
    def __init__(
        self,
        source: SourceSpec,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        server_identity: str,
        retry: RetrySpec,
        on_retry: OnRetry | None = None,
        *,
        lock: str,
        decode: PositionDecoder,
        step: PositionStep | None = None,
        writer: WriterConnection[Connection] | None = None,
    ) -> None:
        super().__init__(
            pipeline,
            server_identity,
            retry,
            on_retry,
            lock=lock,
            decode=decode,
            step=step,
            writer=writer,
        )
        self._source = source
        schema = quote(source.schema)
        table = f"{schema}.{quote(pipeline.predictions)}"
        self._value_columns = prediction_value_columns(pipeline)
        # A vector goes as the text of its JSON array: what jsonb and pgvector's vector read.
        self._vectors = {c.name for c in pipeline.model.prediction_columns() if c.kind == "vector"}
        columns, updates = prediction_columns(pipeline, key_columns)
        self._upsert = (
            f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}, scored_at) VALUES %s "
            "ON CONFLICT (key_hash) DO UPDATE SET "
            + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in [*updates, "scored_at"])
        )
        self._template = "(" + ", ".join(["%s"] * len(columns)) + ", localtimestamp)"
        self._delete = f"DELETE FROM {table} WHERE key_hash = ANY(%s)"
        self._truncate = f"DELETE FROM {table}"
        self._dead_letter = (
            f"INSERT INTO {schema}.{DEAD_LETTER_TABLE} (pipeline, source_key, source_position, "
            "reason, error, payload, created_at) VALUES %s"
        )
        self._checkpoint = checkpoint_upsert(source.schema)
        self._views = view_statements(source.schema, pipeline, key_columns)

    def _open(self) -> Connection:
        return connect(self._source)

    def _close(self, conn: Connection | None) -> None:
        close_quietly(conn)

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        return pg_errors(doing)

    def _try_lock(self, conn: Connection, wait_s: float) -> bool:
        return try_lock(conn, self.lock, wait_s)

    def _release_lock(self, conn: Connection) -> None:
        release_lock(conn, self.lock)

    def _stored(self, conn: Connection) -> StoredCheckpoint | None:
        name = self._pipeline.name
        return load_checkpoints(conn, self._source.schema, [name], self._decode).get(name)

    def _record_stop(self, conn: Connection, reason: str) -> None:
        record_stop(conn, self._source.schema, self._pipeline.name, reason)

    def _begin(self, conn: Connection) -> None:
        conn.autocommit = False  # psycopg2 begins the transaction at the first statement

    def _commit(self, conn: Connection) -> None:
        conn.commit()
        conn.autocommit = True

    def _statements(
        self, conn: Connection, batch: ScoredBatch, row: tuple[Any, ...] | None
    ) -> None:
        model = self._pipeline
        with conn.cursor() as cursor:
            if batch.columns_changed:
                for statement in self._views:
                    cursor.execute(statement)
            if batch.truncate:
                cursor.execute(self._truncate)
            if batch.upserts:
                vectors = self._vectors
                values = [
                    (
                        psycopg2.Binary(key_hash(p.key)),
                        *p.key,
                        *[
                            _vector_text(p.columns.get(c)) if c in vectors else p.columns.get(c)
                            for c in self._value_columns
                        ],
                        model.model.model_endpoint,
                        p.variant,
                        model.model_version,
                        p.source_position,
                        p.source_committed_at,
                    )
                    for p in batch.upserts
                ]
                psycopg2.extras.execute_values(
                    cursor, self._upsert, values, template=self._template, page_size=500
                )
            removed = [*batch.deletes, *(d.key for d in batch.dead_letters)]
            if removed:
                cursor.execute(self._delete, ([psycopg2.Binary(key_hash(k)) for k in removed],))
            if batch.dead_letters:
                psycopg2.extras.execute_values(
                    cursor,
                    self._dead_letter,
                    dead_letter_rows(model.name, batch),
                    template="(%s, %s, %s, %s, %s, %s, localtimestamp)",
                    page_size=50,
                )
            self._checkpoint_step(cursor, self._checkpoint, batch, row)


def _vector_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
