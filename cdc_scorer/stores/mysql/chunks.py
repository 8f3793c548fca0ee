"""What one pipeline's snapshots and re-scores read and write in MySQL: key-ordered chunks of
its table (one autocommitted SELECT each, no lock, no long transaction), row counts, column
types, and the watermark rows of the signal table."""

from __future__ import annotations

from typing import Any

import pymysql

from cdc_scorer.core.own_tables import BATCH_JOB_TABLE
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec, SourceSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect, mysql_errors, quote
from cdc_scorer.stores import chunk_query, orphan_queries
from cdc_scorer.stores.mysql.signals import forget_signals, insert_signal


class MysqlChunks:
    """The ``ChunkStore`` of one pipeline, on a connection of its own."""

    def __init__(self, source: SourceSpec, pipeline: PipelineSpec, table: TableInfo) -> None:
        self._source = source
        self._table = pipeline.table
        self._predictions = quote(pipeline.predictions)
        self._conn: Connection | None = None
        self._key = [quote(c) for c in table.key_columns]

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self._source)
        return self._conn

    def select(
        self,
        where: str | None,
        after: tuple[Any, ...] | None,
        rows: int,
        through: tuple[Any, ...] | None = None,
    ) -> list[dict[str, Any]]:
        sql = chunk_query(
            quote(self._table), self._key, where, after is not None, rows, through is not None
        )
        conn = self._connection()
        with (
            mysql_errors(f"reading a chunk of {self._table}"),
            conn.cursor(pymysql.cursors.DictCursor) as dict_cursor,
        ):
            dict_cursor.execute(sql, (*(after or ()), *(through or ())) or None)
            found = list(dict_cursor.fetchall())
        conn.commit()  # ends the read: no snapshot is held between chunks
        return found

    def orphans(
        self, after: tuple[Any, ...] | None, rows: int
    ) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None, int]:
        page_sql, gone_sql = orphan_queries(self._predictions, quote(self._table), self._key, rows)
        start = b"" if after is None else after[0]
        conn = self._connection()
        with mysql_errors(f"reading a chunk of {self._predictions}"), conn.cursor() as cursor:
            cursor.execute(page_sql, (start,))
            page = [bytes(row[0]) for row in cursor.fetchall()]
            gone: list[tuple[Any, ...]] = []
            if page:
                cursor.execute(gone_sql, (start, page[-1]))
                gone = [tuple(row) for row in cursor.fetchall()]
        conn.commit()  # ends the read: no snapshot is held between chunks
        return gone, (page[-1],) if page else None, len(page)

    def count(self, where: str | None) -> int:
        return count_rows(self._connection(), self._table, where)

    def column_types(self) -> dict[str, str]:
        conn = self._connection()
        with mysql_errors(f"reading the columns of {self._table}"), conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (self._source.database, self._table),
            )
            return {str(name): str(ctype) for name, ctype in cursor.fetchall()}

    def signal(self, signal_id: str, pipeline: str, kind: str, data: Any) -> None:
        insert_signal(self._connection(), signal_id, pipeline, kind, data)

    def forget(self, signal_ids: list[str]) -> None:
        forget_signals(self._connection(), signal_ids)

    def batch_jobs(self, pipeline: str) -> list[str]:
        conn = self._connection()
        with mysql_errors(f"reading {BATCH_JOB_TABLE}"), conn.cursor() as cursor:
            cursor.execute(f"SELECT data FROM {BATCH_JOB_TABLE} WHERE pipeline = %s", (pipeline,))
            found = [str(row[0]) for row in cursor.fetchall()]
        conn.commit()
        return found

    def save_batch_job(
        self, pipeline: str, name: str, rescore_id: str, sequence: int, state: str, data: str
    ) -> None:
        conn = self._connection()
        with mysql_errors(f"writing {BATCH_JOB_TABLE}"), conn.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {BATCH_JOB_TABLE} (pipeline, name, rescore_id, sequence, state, "
                "data, updated_at) VALUES (%s, %s, %s, %s, %s, %s, NOW(6)) ON DUPLICATE KEY "
                "UPDATE state = VALUES(state), data = VALUES(data), updated_at = NOW(6)",
                (pipeline, name, rescore_id, sequence, state, data),
            )
        conn.commit()

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)


def count_rows(conn: Connection, table: str, where: str | None) -> int:
    """Rows of ``table`` matching ``where`` (also how a request's condition is checked)."""
    condition = f" WHERE ({where})" if where else ""
    with mysql_errors(f"counting the rows of {table}"), conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {quote(table)}{condition}")
        (count,) = cursor.fetchone() or (0,)
    return int(count)
