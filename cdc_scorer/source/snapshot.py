"""The initial snapshot: existing rows in key-ordered chunks, without a global read lock.

Aurora refuses FLUSH TABLES WITH READ LOCK, so each chunk is a plain consistent read. The
binlog position taken before the first chunk is where streaming starts afterwards: changes
made during the snapshot are replayed from there, and since batches apply in source order the
newest version wins (a row may briefly show an older version's prediction until the replay
reaches its newest change).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pymysql
import structlog

from cdc_scorer.db import Connection, mysql_errors, quote
from cdc_scorer.records import Op, RowChange, SnapshotProgress, SourceItem
from cdc_scorer.schema import TableInfo
from cdc_scorer.spec import PipelineSpec

log = structlog.get_logger("cdc_scorer.snapshot")


def _chunk_sql(pipeline: PipelineSpec, table: TableInfo, after: bool) -> str:
    key = ", ".join(quote(c) for c in table.key_columns)
    where = ""
    if after:
        placeholders = ", ".join(["%s"] * len(table.key_columns))
        where = f"WHERE ({key}) > ({placeholders}) "
    return (
        f"SELECT * FROM {quote(pipeline.table)} {where}ORDER BY {key} "
        f"LIMIT {int(pipeline.snapshot_chunk_rows)}"
    )


async def snapshot_rows(
    conn: Connection,
    pipeline: PipelineSpec,
    table: TableInfo,
    cursor: tuple[Any, ...] | None,
) -> AsyncIterator[tuple[SourceItem, ...]]:
    """Yield each chunk's rows followed by a SnapshotProgress carrying the chunk's last key."""
    read = 0
    while True:
        sql = _chunk_sql(pipeline, table, cursor is not None)
        with mysql_errors(f"snapshot of {pipeline.table}"):
            rows = await asyncio.to_thread(_fetch, conn, sql, cursor)
        changes: list[SourceItem] = []
        for values in rows:
            key = tuple(values[c] for c in table.key_columns)
            changes.append(RowChange(Op.SNAPSHOT, pipeline.table, key, values, None, None))
            cursor = key
        read += len(rows)
        done = len(rows) < pipeline.snapshot_chunk_rows
        log.info("snapshot progress", pipeline=pipeline.name, rows_read=read, done=done)
        yield (*changes, SnapshotProgress(pipeline.table, cursor, done))
        if done:
            return


def _fetch(conn: Connection, sql: str, cursor: tuple[Any, ...] | None) -> list[dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as dict_cursor:
        dict_cursor.execute(sql, cursor)
        return list(dict_cursor.fetchall())
