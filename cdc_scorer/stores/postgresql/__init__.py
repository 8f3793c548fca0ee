"""The PostgreSQL store (the ``Store`` of ``stores/``): the scorer's tables in
``[source] schema`` of the source database.

- ``connection.py``: connections (TLS by libpq's sslmode), psycopg2 errors mapped at the boundary;
- ``schema.py``: the source tables' shapes, ``init``'s DDL in one transaction, the views;
- ``sink.py``: one transaction per batch or run of batches (``INSERT … ON CONFLICT``), fenced
  (``stores/fenced.py``);
- ``tables.py``: checkpoints, signals, the heartbeat, the advisory leader lock, chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg2.extras

from cdc_scorer.core.errors import CdcScorerError
from cdc_scorer.core.own_tables import BATCH_JOB_TABLE, DEAD_LETTER_TABLE, OWN_TABLES
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.postgresql.connection import (
    Connection,
    close_quietly,
    connect,
    pg_errors,
    quote,
)
from cdc_scorer.stores import OnRetry, PipelineCounts, PositionDecoder, StoredCheckpoint
from cdc_scorer.stores.fenced import WriterPool
from cdc_scorer.stores.offsets import OffsetsSql, OffsetTables
from cdc_scorer.stores.postgresql import schema, tables
from cdc_scorer.stores.postgresql.offsets import offsets_sql
from cdc_scorer.stores.postgresql.sink import PostgresSink

T = TypeVar("T")


class PostgresStore(OffsetTables):
    def __init__(self, source: SourceSpec, retry: RetrySpec) -> None:
        self._source = source
        self._schema = source.schema
        self._retry = retry
        self._conn: Connection | None = None
        # The sinks' connections: a few per process, shared by its pipelines.
        self._writers: WriterPool[Connection] = WriterPool(
            lambda: connect(self._source), close_quietly
        )

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self._source)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def _table(self, name: str) -> str:
        return f"{quote(self._schema)}.{quote(name)}"

    # ---------------------------------------------------------------- the tables
    def inspect_tables(self, pipelines: Sequence[PipelineSpec]) -> dict[str, TableInfo]:
        return schema.inspect_tables(self._connection(), self._schema, pipelines)

    def init(self, pipelines: Sequence[PipelineSpec]) -> list[str]:
        return schema.init_schema(self._connection(), self._schema, pipelines)

    def check_schema(self, pipelines: Sequence[PipelineSpec]) -> None:
        schema.check_schema(self._connection(), self._schema, pipelines)

    def check_connection(self) -> list[tuple[str, bool, str]]:
        source = self._source
        target = f"{source.user}@{source.host}:{source.port}/{source.database}"
        try:
            conn = self._connection()
            with pg_errors("reading the session's TLS state"), conn.cursor() as cursor:
                cursor.execute(
                    "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                ssl, version, cipher = cursor.fetchone() or (False, None, None)
        except CdcScorerError as exc:
            return [("database connection", False, str(exc))]
        mode = source.tls.mode
        tls = f"{version} {cipher} (mode {mode})" if ssl else f"plaintext (mode {mode})"
        secure = bool(ssl) or mode in ("disabled", "preferred")
        return [("database connection", True, target), ("database TLS", secure, tls)]

    def check_writes(self, pipelines: Sequence[PipelineSpec]) -> list[tuple[str, str | None]]:
        results: list[tuple[str, str | None]] = []
        for name in [*OWN_TABLES, *(p.predictions for p in pipelines)]:
            table = self._table(name)
            try:
                with pg_errors(f"writing {name}"), self._connection().cursor() as cursor:
                    cursor.execute(f"INSERT INTO {table} SELECT * FROM {table} WHERE false")
                    cursor.execute(f"DELETE FROM {table} WHERE false")
                    cursor.execute(f"SELECT 1 FROM {table} WHERE false FOR UPDATE")
            except CdcScorerError as exc:
                results.append((name, str(exc)))
            else:
                results.append((name, None))
        return results

    def check_readable(self, pipeline: PipelineSpec) -> TableInfo:
        info = self.inspect_tables([pipeline])[pipeline.table]
        with pg_errors("reading the table"), self._connection().cursor() as cursor:
            cursor.execute(f"SELECT * FROM {self._table(pipeline.table)} LIMIT 0")
        return info

    def prediction_storage(self, pipeline: PipelineSpec) -> list[tuple[str, str]]:
        return schema.prediction_storage(self._connection(), self._source.schema, pipeline)

    def nearest_query(self, pipeline: PipelineSpec, column: str, limit: int = 5) -> str:
        return schema.nearest_sql(self._connection(), self._source.schema, pipeline, column, limit)

    def sample_row(self, pipeline: PipelineSpec) -> dict[str, Any]:
        conn = self._connection()
        with (
            pg_errors("reading a sample row"),
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor,
        ):
            cursor.execute(f"SELECT * FROM {self._table(pipeline.table)} LIMIT 1")
            row = cursor.fetchone()
        return dict(row) if row else {}

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoints(
        self, names: Sequence[str], decode: PositionDecoder
    ) -> dict[str, StoredCheckpoint]:
        return tables.load_checkpoints(self._connection(), self._schema, names, decode)

    def save_checkpoint(self, name: str, checkpoint: Checkpoint, identity: str) -> None:
        tables.save_checkpoint(self._connection(), self._schema, name, checkpoint, identity)

    def record_stop(self, name: str, reason: str | None) -> None:
        tables.record_stop(self._connection(), self._schema, name, reason)

    def older_predictions(self, pipeline: PipelineSpec) -> bool:
        doing = f"reading the model versions of {pipeline.predictions}"
        with pg_errors(doing), self._connection().cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {self._table(pipeline.predictions)} "
                "WHERE model_version IS DISTINCT FROM %s LIMIT 1",
                (pipeline.model_version,),
            )
            return cursor.fetchone() is not None

    # ---------------------------------------------------------------- status
    def counts(self, pipeline: PipelineSpec) -> PipelineCounts:
        conn = self._connection()
        with pg_errors(f"counting rows of {pipeline.name}"), conn.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {self._table(pipeline.predictions)}")
            (predictions,) = cursor.fetchone() or (0,)
            cursor.execute(
                "SELECT count(*), count(*) FILTER (WHERE created_at > localtimestamp - "
                f"interval '1 day') FROM {self._table(DEAD_LETTER_TABLE)} WHERE pipeline = %s",
                (pipeline.name,),
            )
            dead, dead_24h = cursor.fetchone() or (0, 0)
            # A table init makes since backfills came: absent until init runs again.
            jobs_table = self._table(BATCH_JOB_TABLE)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (jobs_table,))
            jobs: tuple[str, ...] = ()
            if (cursor.fetchone() or (False,))[0]:
                cursor.execute(
                    f"SELECT data FROM {jobs_table} WHERE pipeline = %s", (pipeline.name,)
                )
                jobs = tuple(str(row[0]) for row in cursor.fetchall())
        return PipelineCounts(
            int(predictions), int(dead), int(dead_24h), self.leader(pipeline), jobs
        )

    def database_now(self) -> datetime | None:
        with pg_errors("reading the time"), self._connection().cursor() as cursor:
            cursor.execute("SELECT localtimestamp")
            (now,) = cursor.fetchone() or (None,)
        return now if isinstance(now, datetime) else None

    # ---------------------------------------------------------------- the daemon's writers
    def lock(self, pipeline: PipelineSpec) -> str:
        return f"cdc_scorer.{self._source.database}.{self._schema}.{pipeline.name}"

    def leader(self, pipeline: PipelineSpec) -> int | None:
        return tables.lock_holder(self._connection(), self.lock(pipeline))

    def sink(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        identity: str,
        decode: PositionDecoder,
        on_retry: OnRetry | None = None,
        step: PositionStep | None = None,
    ) -> PostgresSink:
        return PostgresSink(
            self._source,
            pipeline,
            key_columns,
            identity,
            self._retry,
            on_retry=on_retry,
            lock=self.lock(pipeline),
            decode=decode,
            step=step,
            writer=self._writers.next(),
        )

    def quoted(self, identifier: str) -> str:
        return quote(identifier)

    def qualified(self, table: str) -> str:
        return self._table(table)

    def chunks(self, pipeline: PipelineSpec, table: TableInfo) -> tables.PostgresChunks:
        return tables.PostgresChunks(self._source, pipeline, table)

    def heartbeat(self, instance: str, interval_s: float) -> tables.PostgresHeartbeat:
        return tables.PostgresHeartbeat(self._source, instance, interval_s)

    # ---------------------------------------------------------------- the Kafka offsets
    def offsets_sql(self) -> OffsetsSql:
        return offsets_sql(self._source.schema)

    def init_offsets(self) -> None:
        with pg_errors("making the Kafka offsets table"), self._connection().cursor() as c:
            c.execute(self.offsets_sql().ddl)
            c.execute(self.offsets_sql().versions_ddl)

    def in_transaction(self, doing: str, work: Callable[[Any], T]) -> T:
        conn = connect(self._source, autocommit=False)
        try:
            with pg_errors(doing):
                with conn.cursor() as cursor:
                    result = work(cursor)
                conn.commit()
        finally:
            close_quietly(conn)
        return result
