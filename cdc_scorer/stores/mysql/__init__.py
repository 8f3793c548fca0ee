"""The MySQL / Aurora MySQL / MariaDB store (the ``Store`` of ``stores/``).

- ``schema.py``: the source tables' shapes, and the DDL of ``init`` (tables, views, upgrades);
- ``sink.py``: one transaction per batch or run of batches — predictions, dead letters, checkpoint;
- ``checkpoints.py``, ``signals.py``: the checkpoint and signal tables' statements;
- ``chunks.py``: what snapshots and re-scores read; ``leader.py``: the named-lock fence;
- ``heartbeat.py``: the heartbeat row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import pymysql

from cdc_scorer.core.errors import CdcScorerError
from cdc_scorer.core.own_tables import (
    BATCH_JOB_TABLE,
    DEAD_LETTER_TABLE,
    HEARTBEAT_TABLE,
    OWN_TABLES,
)
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec, TlsSpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.mysql.connection import (
    Connection,
    close_quietly,
    connect,
    mysql_errors,
    quote,
    tls_state,
)
from cdc_scorer.stores import OnRetry, PipelineCounts, PositionDecoder, StoredCheckpoint
from cdc_scorer.stores.fenced import WriterPool
from cdc_scorer.stores.mysql import checkpoints, schema
from cdc_scorer.stores.mysql.chunks import MysqlChunks
from cdc_scorer.stores.mysql.heartbeat import MysqlHeartbeat
from cdc_scorer.stores.mysql.leader import lock_holder, lock_name
from cdc_scorer.stores.mysql.offsets import OFFSETS
from cdc_scorer.stores.mysql.sink import Sink
from cdc_scorer.stores.offsets import OffsetsSql, OffsetTables

T = TypeVar("T")


class MysqlStore(OffsetTables):
    """The scorer's tables in ``[source] database``, through one connection of its own (the
    sinks, chunk readers and heartbeat open theirs)."""

    def __init__(self, source: SourceSpec, retry: RetrySpec) -> None:
        self._source = source
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

    # ---------------------------------------------------------------- the tables
    def inspect_tables(self, pipelines: Sequence[PipelineSpec]) -> dict[str, TableInfo]:
        return schema.inspect_tables(self._connection(), self._source.database, pipelines)

    def init(self, pipelines: Sequence[PipelineSpec]) -> list[str]:
        return schema.init_schema(self._connection(), self._source.database, pipelines)

    def check_schema(self, pipelines: Sequence[PipelineSpec]) -> None:
        schema.check_schema(self._connection(), self._source.database, pipelines)

    def check_connection(self) -> list[tuple[str, bool, str]]:
        source = self._source
        target = f"{source.user}@{source.host}:{source.port}/{source.database}"
        try:
            conn = self._connection()
        except CdcScorerError as exc:
            return [("database connection", False, str(exc))]
        return [("database connection", True, target), _tls_check(conn, source.tls)]

    def check_writes(self, pipelines: Sequence[PipelineSpec]) -> list[tuple[str, str | None]]:
        results: list[tuple[str, str | None]] = []
        for table in [*OWN_TABLES, *(p.predictions for p in pipelines)]:
            try:
                with mysql_errors(f"writing {table}"):
                    _write_nothing(self._connection(), table)
            except CdcScorerError as exc:
                results.append((table, str(exc)))
            else:
                results.append((table, None))
        return results

    def check_readable(self, pipeline: PipelineSpec) -> TableInfo:
        """The pipeline's table as ``inspect_tables`` sees it, and selected from (`check`)."""
        info = self.inspect_tables([pipeline])[pipeline.table]
        with mysql_errors("reading the table"), self._connection().cursor() as cursor:
            cursor.execute(f"SELECT * FROM {quote(pipeline.table)} LIMIT 0")
        return info

    def prediction_storage(self, pipeline: PipelineSpec) -> list[tuple[str, str]]:
        return schema.prediction_storage(self._connection(), self._source.database, pipeline)

    def nearest_query(self, pipeline: PipelineSpec, column: str, limit: int = 5) -> str:
        return schema.nearest_sql(
            self._connection(), self._source.database, pipeline, column, limit
        )

    def sample_row(self, pipeline: PipelineSpec) -> dict[str, Any]:
        """One real row of the pipeline's table, when there is one (`check` sends it)."""
        conn = self._connection()
        with (
            mysql_errors("reading a sample row"),
            conn.cursor(pymysql.cursors.DictCursor) as cursor,
        ):
            cursor.execute(f"SELECT * FROM {quote(pipeline.table)} LIMIT 1")
            row = cursor.fetchone()
        return dict(row) if row else {}

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoints(
        self, names: Sequence[str], decode: PositionDecoder
    ) -> dict[str, StoredCheckpoint]:
        return checkpoints.load_checkpoints(self._connection(), names, decode)

    def save_checkpoint(self, name: str, checkpoint: Checkpoint, identity: str) -> None:
        checkpoints.save_checkpoint(self._connection(), name, checkpoint, identity)

    def record_stop(self, name: str, reason: str | None) -> None:
        checkpoints.record_stop(self._connection(), name, reason)

    def older_predictions(self, pipeline: PipelineSpec) -> bool:
        doing = f"reading the model versions of {pipeline.predictions}"
        with mysql_errors(doing), self._connection().cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {quote(pipeline.predictions)} "
                "WHERE model_version IS NULL OR model_version <> %s LIMIT 1",
                (pipeline.model_version,),
            )
            return cursor.fetchone() is not None

    # ---------------------------------------------------------------- status
    def counts(self, pipeline: PipelineSpec) -> PipelineCounts:
        conn = self._connection()
        with mysql_errors(f"counting rows of {pipeline.name}"), conn.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {quote(pipeline.predictions)}")
            (predictions,) = cursor.fetchone() or (0,)
            cursor.execute(
                f"SELECT COUNT(*), COALESCE(SUM(created_at > NOW(6) - INTERVAL 1 DAY), 0) "
                f"FROM {DEAD_LETTER_TABLE} WHERE pipeline=%s",
                (pipeline.name,),
            )
            dead, dead_24h = cursor.fetchone() or (0, 0)
        jobs: tuple[str, ...] = ()
        try:  # a table init makes since backfills came: absent until init runs again
            with mysql_errors(f"reading {BATCH_JOB_TABLE}"), conn.cursor() as cursor:
                cursor.execute(
                    f"SELECT data FROM {BATCH_JOB_TABLE} WHERE pipeline=%s", (pipeline.name,)
                )
                jobs = tuple(str(row[0]) for row in cursor.fetchall())
        except CdcScorerError:
            pass
        return PipelineCounts(
            int(predictions), int(dead), int(dead_24h), self.leader(pipeline), jobs
        )

    def database_now(self) -> datetime | None:
        with mysql_errors("reading the time"), self._connection().cursor() as cursor:
            cursor.execute("SELECT NOW(6)")
            (now,) = cursor.fetchone() or (None,)
        return now if isinstance(now, datetime) else None

    # ---------------------------------------------------------------- the daemon's writers
    def lock(self, pipeline: PipelineSpec) -> str:
        return lock_name(self._source.database, pipeline.name)

    def leader(self, pipeline: PipelineSpec) -> int | None:
        return lock_holder(self._connection(), self.lock(pipeline))

    def sink(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        identity: str,
        decode: PositionDecoder,
        on_retry: OnRetry | None = None,
        step: PositionStep | None = None,
    ) -> Sink:
        return Sink(
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
        return quote(table)

    def chunks(self, pipeline: PipelineSpec, table: TableInfo) -> MysqlChunks:
        return MysqlChunks(self._source, pipeline, table)

    def heartbeat(self, instance: str, interval_s: float) -> MysqlHeartbeat:
        return MysqlHeartbeat(self._source, HEARTBEAT_TABLE, instance, interval_s)

    # ---------------------------------------------------------------- the Kafka offsets
    def offsets_sql(self) -> OffsetsSql:
        return OFFSETS

    def init_offsets(self) -> None:
        with mysql_errors("making the Kafka offsets table"), self._connection().cursor() as c:
            c.execute(OFFSETS.ddl)
            c.execute(OFFSETS.versions_ddl)

    def in_transaction(self, doing: str, work: Callable[[Any], T]) -> T:
        conn = connect(self._source)
        try:
            with mysql_errors(doing):
                conn.begin()
                with conn.cursor() as cursor:
                    result = work(cursor)
                conn.commit()
        finally:
            close_quietly(conn)
        return result


def _tls_check(conn: Connection, tls: TlsSpec) -> tuple[str, bool, str]:
    """The connection's TLS: protocol and cipher as the server sees them, and what verified."""
    try:
        state = tls_state(conn)
    except CdcScorerError as exc:
        return ("database TLS", False, str(exc))
    verified = {
        "verify-ca": f"server certificate verified against {tls.ca_file}",
        "verify-identity": f"server certificate and host name verified against {tls.ca_file}",
    }.get(tls.mode, "server not verified")
    if state == "plaintext":
        return (
            "database TLS",
            tls.mode in ("disabled", "preferred"),
            f"plaintext (mode {tls.mode})",
        )
    return ("database TLS", True, f"{state}, {verified} (mode {tls.mode})")


def _write_nothing(conn: Connection, table: str) -> None:
    """Statements that need INSERT, UPDATE and DELETE but change no row."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=DATABASE() "
            "AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION LIMIT 1",
            (table,),
        )
        (column,) = cursor.fetchone() or ("",)
        t, c = quote(table), quote(str(column))
        cursor.execute(f"INSERT INTO {t} SELECT * FROM {t} WHERE 1=0")
        cursor.execute(f"UPDATE {t} SET {c}={c} WHERE 1=0")
        cursor.execute(f"DELETE FROM {t} WHERE 1=0")
