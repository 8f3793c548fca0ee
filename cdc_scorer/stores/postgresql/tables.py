"""PostgreSQL: the statements of the checkpoint, signal and heartbeat tables, the leader lock
(a session advisory lock), and the chunks snapshots and re-scores read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import psycopg2.extras
import structlog

from cdc_scorer.core.own_tables import (
    BATCH_JOB_TABLE,
    CHECKPOINT_TABLE,
    HEARTBEAT_TABLE,
    SIGNAL_TABLE,
)
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.rescoring import decode_rescores
from cdc_scorer.core.spec import PipelineSpec, SourceSpec
from cdc_scorer.postgresql.connection import (
    Connection,
    close_quietly,
    connect,
    pg_errors,
    quote,
)
from cdc_scorer.postgresql.values import read_as_the_stream
from cdc_scorer.stores import PositionDecoder, StoredCheckpoint, chunk_query, orphan_queries
from cdc_scorer.stores.fenced import checkpoint_row
from cdc_scorer.stores.heartbeat import HeartbeatWriter

log = structlog.get_logger("cdc_scorer.stores.postgresql")


def checkpoint_upsert(schema: str) -> str:
    return (
        f"INSERT INTO {quote(schema)}.{CHECKPOINT_TABLE} (pipeline, position, server_identity, "
        "snapshot_state, rescore, updated_at) VALUES (%s, %s, %s, %s, %s, localtimestamp) "
        "ON CONFLICT (pipeline) DO UPDATE SET position = EXCLUDED.position, "
        "server_identity = EXCLUDED.server_identity, snapshot_state = EXCLUDED.snapshot_state, "
        "rescore = EXCLUDED.rescore, updated_at = EXCLUDED.updated_at"
    )


def load_checkpoints(
    conn: Connection, schema: str, names: Sequence[str], decode: PositionDecoder
) -> dict[str, StoredCheckpoint]:
    if not names:
        return {}
    with pg_errors("reading checkpoints"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT pipeline, position, server_identity, snapshot_state, updated_at, "
            f"stopped_reason, rescore FROM {quote(schema)}.{CHECKPOINT_TABLE} "
            "WHERE pipeline = ANY(%s)",
            (list(names),),
        )
        rows = cursor.fetchall()
    return {
        str(name): StoredCheckpoint(
            Checkpoint(
                position=decode(str(identity), str(position)) if position else None,
                snapshot_state=str(state),
                rescores=decode_rescores(rescore),
            ),
            str(identity),
            updated_at,
            None if stop is None else str(stop),
        )
        for name, position, identity, state, updated_at, stop, rescore in rows
    }


def save_checkpoint(
    conn: Connection, schema: str, name: str, checkpoint: Checkpoint, identity: str
) -> None:
    with pg_errors(f"saving the checkpoint of {name}"), conn.cursor() as cursor:
        cursor.execute(checkpoint_upsert(schema), checkpoint_row(name, checkpoint, identity))


def record_stop(conn: Connection, schema: str, name: str, reason: str | None) -> None:
    with pg_errors(f"recording that {name} stopped"), conn.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(schema)}.{CHECKPOINT_TABLE} SET stopped_reason = %s "
            "WHERE pipeline = %s",
            (reason, name),
        )


# ---------------------------------------------------------------- the leader lock
def lock_key(name: str) -> int:
    """The advisory lock's bigint key of a lock name (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def try_lock(conn: Connection, name: str, wait_s: float) -> bool:
    """Take the session lock, asking again until ``wait_s`` passed; False if another holds it."""
    key = lock_key(name)
    with pg_errors(f"taking the leader lock {name}"), conn.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = cursor.fetchone()
        if row is not None and row[0]:
            return True
        if wait_s <= 0:
            return False
        cursor.execute("SET lock_timeout = %s", (f"{int(wait_s * 1000)}ms",))
        try:
            cursor.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg2.errors.LockNotAvailable:
            return False
        finally:
            cursor.execute("RESET lock_timeout")
    return True


def release_lock(conn: Connection, name: str) -> None:
    """Let the session lock go (a connection other pipelines' locks stay on)."""
    with pg_errors(f"letting the leader lock {name} go"), conn.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
        cursor.fetchone()


def lock_holder(conn: Connection, name: str) -> int | None:
    """The backend pid holding the lock, or None when free."""
    key = lock_key(name)
    with pg_errors(f"asking who holds the leader lock {name}"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s AND objsubid = 1",
            (key,),  # the shift wraps as the key's signed 64 bits do
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


# ---------------------------------------------------------------- chunks and signals
class PostgresChunks:
    """The ``ChunkStore`` of one pipeline (one autocommitted SELECT a chunk: no snapshot is
    held between chunks)."""

    def __init__(self, source: SourceSpec, pipeline: PipelineSpec, table: TableInfo) -> None:
        self._source = source
        self._schema = source.schema
        self._table = f"{quote(source.schema)}.{quote(pipeline.table)}"
        self._name = pipeline.table
        self._predictions = f"{quote(source.schema)}.{quote(pipeline.predictions)}"
        self._conn: Connection | None = None
        self._key = [quote(c) for c in table.key_columns]

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self._source)
            read_as_the_stream(self._conn)  # chunk rows typed as the stream's rows are
        return self._conn

    def select(
        self,
        where: str | None,
        after: tuple[Any, ...] | None,
        rows: int,
        through: tuple[Any, ...] | None = None,
    ) -> list[dict[str, Any]]:
        sql = chunk_query(
            self._table, self._key, where, after is not None, rows, through is not None
        )
        conn = self._connection()
        with (
            pg_errors(f"reading a chunk of {self._name}"),
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor,
        ):
            cursor.execute(sql, (*(after or ()), *(through or ())) or None)
            return [dict(row) for row in cursor.fetchall()]

    def orphans(
        self, after: tuple[Any, ...] | None, rows: int
    ) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None, int]:
        page_sql, gone_sql = orphan_queries(self._predictions, self._table, self._key, rows)
        start = psycopg2.Binary(b"" if after is None else after[0])
        with (
            pg_errors(f"reading a chunk of {self._name}'s predictions"),
            self._connection().cursor() as cursor,
        ):
            cursor.execute(page_sql, (start,))
            page = [bytes(row[0]) for row in cursor.fetchall()]
            gone: list[tuple[Any, ...]] = []
            if page:
                cursor.execute(gone_sql, (start, psycopg2.Binary(page[-1])))
                gone = [tuple(row) for row in cursor.fetchall()]
        return gone, (page[-1],) if page else None, len(page)

    def count(self, where: str | None) -> int:
        condition = f" WHERE ({where})" if where else ""
        with pg_errors(f"counting the rows of {self._name}"), self._connection().cursor() as c:
            c.execute(f"SELECT count(*) FROM {self._table}{condition}")
            (count,) = c.fetchone() or (0,)
        return int(count)

    def column_types(self) -> dict[str, str]:
        from cdc_scorer.stores.postgresql.schema import column_types

        with pg_errors(f"reading the columns of {self._name}"):
            return column_types(self._connection(), self._schema, self._name)

    def signal(self, signal_id: str, pipeline: str, kind: str, data: Any) -> None:
        with pg_errors(f"writing to {SIGNAL_TABLE}"), self._connection().cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quote(self._schema)}.{SIGNAL_TABLE} (id, pipeline, kind, data, "
                "created_at) VALUES (%s, %s, %s, %s, localtimestamp)",
                (signal_id, pipeline, kind, json.dumps(data)),
            )

    def forget(self, signal_ids: list[str]) -> None:
        with pg_errors(f"deleting used rows of {SIGNAL_TABLE}"), self._connection().cursor() as c:
            c.execute(
                f"DELETE FROM {quote(self._schema)}.{SIGNAL_TABLE} WHERE id = ANY(%s)",
                (signal_ids,),
            )

    def batch_jobs(self, pipeline: str) -> list[str]:
        table = f"{quote(self._schema)}.{BATCH_JOB_TABLE}"
        with pg_errors(f"reading {BATCH_JOB_TABLE}"), self._connection().cursor() as cursor:
            cursor.execute(f"SELECT data FROM {table} WHERE pipeline = %s", (pipeline,))
            return [str(row[0]) for row in cursor.fetchall()]

    def save_batch_job(
        self, pipeline: str, name: str, rescore_id: str, sequence: int, state: str, data: str
    ) -> None:
        table = f"{quote(self._schema)}.{BATCH_JOB_TABLE}"
        with pg_errors(f"writing {BATCH_JOB_TABLE}"), self._connection().cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (pipeline, name, rescore_id, sequence, state, data, "
                "updated_at) VALUES (%s, %s, %s, %s, %s, %s, localtimestamp) ON CONFLICT "
                "(pipeline, name) DO UPDATE SET state = EXCLUDED.state, data = EXCLUDED.data, "
                "updated_at = EXCLUDED.updated_at",
                (pipeline, name, rescore_id, sequence, state, data),
            )

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)


class PostgresHeartbeat(HeartbeatWriter):
    """Writes ``beat_at`` for ``instance`` until cancelled."""

    def __init__(self, source: SourceSpec, instance: str, interval_s: float) -> None:
        super().__init__(instance, interval_s)
        self._source = source
        self._sql = (
            f"INSERT INTO {quote(source.schema)}.{HEARTBEAT_TABLE} (instance, beat_at) "
            "VALUES (%s, clock_timestamp()::timestamp) ON CONFLICT (instance) "
            "DO UPDATE SET beat_at = EXCLUDED.beat_at"
        )
        self._conn: Connection | None = None

    def _beat(self) -> None:
        if self._conn is None:
            self._conn = connect(self._source)
        with pg_errors("writing the heartbeat"), self._conn.cursor() as cursor:
            cursor.execute(self._sql, (self._instance,))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)
