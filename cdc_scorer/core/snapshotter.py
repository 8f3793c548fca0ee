"""The snapshotter: reads a pipeline's table in key-ordered chunks between watermarks, while
the binlog keeps streaming (DBLog; ``rescoring.py`` has the stream's side).

For each chunk: write the low watermark (a row of the signal table), select the chunk, hand it
to the accumulator, write the high watermark, wait until the stream has reached it and merged
the chunk, delete the two watermark rows. No lock, no long transaction: each statement
autocommits. A failed chunk is read again under new watermarks; a crash resumes at the cursor
the last applied chunk committed with its predictions.

Also here: the start-up decisions (a model version that differs from the stored predictions',
an old checkpoint's snapshot) and the request that `cdc-scorer rescore` writes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pymysql
import structlog

from cdc_scorer.core.errors import CdcScorerError, FatalError, RetriableError, inputs_gone
from cdc_scorer.core.records import Checkpoint, Op, RescoreJob, RowChange
from cdc_scorer.core.rescoring import (
    CANCEL,
    RESCORE,
    SIGNAL_TABLE,
    WINDOW_CLOSE,
    WINDOW_OPEN,
    Chunk,
    ChunkExchange,
    enqueue,
    now_iso,
    snapshot_state,
)
from cdc_scorer.core.retry import retrying
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect, mysql_errors, quote
from cdc_scorer.stores.mysql.schema import TableInfo

log = structlog.get_logger("cdc_scorer.core.snapshotter")
InputTypes = tuple[tuple[str, str], ...]


def input_types(pipeline: PipelineSpec, column_types: dict[str, str]) -> InputTypes:
    """The model inputs' column types (a missing input: "")."""
    return tuple((c, column_types.get(c, "")) for c in pipeline.input_columns)


def _type_changes(before: InputTypes, after: InputTypes) -> list[str]:
    old = dict(before)
    return [f"{c} {old[c]} → {t}" for c, t in after if c in old and old[c] != t]


# ---------------------------------------------------------------- start-up
def plan_rescores(
    conn: Connection,
    pipelines: Sequence[PipelineSpec],
    checkpoints: dict[str, Checkpoint],
    tables: dict[str, TableInfo],
    save: Callable[[str, Checkpoint], None],
) -> dict[str, Checkpoint]:
    """Re-scores a pipeline needs at start: its stored predictions carry another model version
    than the configured one (a running re-score of another version starts over). Holding the
    pipelines' locks; changed checkpoints are saved through ``save``."""
    planned = dict(checkpoints)
    for pipeline in pipelines:
        checkpoint = checkpoints[pipeline.name]
        rescores = checkpoint.rescores
        version = pipeline.model_version
        if not rescores.input_types:
            types = input_types(pipeline, tables[pipeline.table].column_types)
            rescores = replace(rescores, input_types=types)
        running = rescores.running
        if running is not None and running.model_version is None:  # from an older version
            rescores = replace(rescores, running=replace(running, model_version=version))
        elif running is not None and running.model_version != version:
            log.info(
                "model version changed: the running re-score starts over",
                pipeline=pipeline.name,
                was=running.model_version,
                now=version,
            )
            restart = replace(
                running, model_version=version, cursor=None, rows_done=0, rows_total=None
            )
            rescores = replace(rescores, running=replace(restart, id=uuid.uuid4().hex))
        rescores = replace(
            rescores, queued=tuple(replace(j, model_version=version) for j in rescores.queued)
        )
        everything = [
            j for j in (rescores.running, *rescores.queued) if j is not None and j.where is None
        ]
        if not everything and _older_predictions(conn, pipeline):
            log.info("model version changed: re-scoring", pipeline=pipeline.name, now=version)
            job = RescoreJob(
                id=uuid.uuid4().hex,
                reason=f"model version {version}",
                model_version=version,
                requested_at=now_iso(),
            )
            rescores = enqueue(rescores, job)
        if rescores != checkpoint.rescores:
            state = snapshot_state(checkpoint.snapshot_state, rescores)
            planned[pipeline.name] = replace(checkpoint, rescores=rescores, snapshot_state=state)
            save(pipeline.name, planned[pipeline.name])
    return planned


def _older_predictions(conn: Connection, pipeline: PipelineSpec) -> bool:
    """Whether any stored prediction was made by another model version (or by a scorer that
    did not stamp versions)."""
    doing = f"reading the model versions of {pipeline.predictions}"
    with mysql_errors(doing), conn.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {quote(pipeline.predictions)} "
            "WHERE model_version IS NULL OR model_version <> %s LIMIT 1",
            (pipeline.model_version,),
        )
        return cursor.fetchone() is not None


# ---------------------------------------------------------------- `cdc-scorer rescore`
def count_rows(conn: Connection, table: str, where: str | None) -> int:
    """Rows of ``table`` matching ``where`` (also how a request's condition is checked)."""
    condition = f" WHERE ({where})" if where else ""
    with mysql_errors(f"counting the rows of {table}"), conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {quote(table)}{condition}")
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def request_rescore(conn: Connection, pipeline: str, where: str | None, reason: str) -> str:
    """Put a re-score request in the signal table; the daemon reads it from the binlog. Its id."""
    request = uuid.uuid4().hex
    _signal(conn, request, pipeline, RESCORE, {"where": where, "reason": reason})
    return request


def request_cancel(conn: Connection, pipeline: str, job_id: str) -> str:
    """Ask the daemon to end the re-score ``job_id`` (running or waiting). The request's id."""
    request = uuid.uuid4().hex
    _signal(conn, request, pipeline, CANCEL, {"id": job_id})
    return request


def forget_signals(conn: Connection, signals: list[str]) -> None:
    """Delete signal rows that were read (the router reads inserts only)."""
    with mysql_errors(f"deleting used rows of {SIGNAL_TABLE}"), conn.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {SIGNAL_TABLE} WHERE id IN ({', '.join(['%s'] * len(signals))})",
            signals,
        )
    conn.commit()


def _signal(conn: Connection, signal: str, pipeline: str, kind: str, data: Any) -> None:
    with mysql_errors(f"writing to {SIGNAL_TABLE}"), conn.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {SIGNAL_TABLE} (id, pipeline, kind, data, created_at) "
            "VALUES (%s, %s, %s, %s, NOW(6))",
            (signal, pipeline, kind, json.dumps(data)),
        )
    conn.commit()


# ---------------------------------------------------------------- the chunks
class Snapshotter:
    """Runs one pipeline's re-score jobs, one chunk at a time, as the accumulator asks."""

    def __init__(
        self,
        source: SourceSpec,
        pipeline: PipelineSpec,
        table: TableInfo,
        exchange: ChunkExchange,
        retry: RetrySpec,
        *,
        on_chunk_read: Callable[[int], None] | None = None,
        on_retry: Callable[[str, RetriableError], None] | None = None,
    ) -> None:
        self._source = source
        self._pipeline = pipeline
        self._table = table
        self._exchange = exchange
        self._retry = retry
        self._on_chunk_read = on_chunk_read
        self._on_retry = on_retry
        self._conn: Connection | None = None
        self._next_at = 0.0  # the pace: when the next chunk may be read
        key = ", ".join(quote(c) for c in table.key_columns)
        self._key = key
        self._after = f"({key}) > ({', '.join(['%s'] * len(table.key_columns))})"

    async def run(self) -> None:
        last: str | None = None
        try:
            while True:
                job = await self._exchange.next_job(last)
                last = job.id
                await self._job(job)
        finally:
            close_quietly(self._conn)

    async def _job(self, job: RescoreJob) -> None:
        name = self._pipeline.name
        log.info(
            "re-score starting" if job.cursor is None else "re-score resuming",
            pipeline=name,
            reason=job.reason,
            where=job.where,
            rows_done=job.rows_done,
        )
        types: InputTypes | None = None
        if job.check_types is not None:  # after an ALTER: only if an input's type changed
            types = await self._retrying(self._input_types)
            gone = [c for c, t in types if not t]
            if gone:
                raise inputs_gone(name, self._pipeline.table, gone)
            changes = _type_changes(job.check_types, types)
            if not changes:
                await self._chunk(job, None, last=True, rows_total=0, types=types)
                return
            log.info("a model input changed type: re-scoring", pipeline=name, changes=changes)
        total = job.rows_total
        if total is None:
            try:
                total = await self._retrying(lambda: self._count(job.where))
            except FatalError as exc:  # a condition the server refuses: this job ends, not all
                log.error("re-score refused", pipeline=name, where=job.where, error=str(exc))
                await self._chunk(job, None, last=True, rows_total=0, types=None, error=str(exc))
                return
        if types is None:
            types = await self._retrying(self._input_types)
        cursor = job.cursor
        while True:
            await self._pace()
            cursor, last = await self._chunk(job, cursor, last=False, rows_total=total, types=types)
            total = None  # carried by the first chunk
            if last:
                log.info("re-score done", pipeline=name, reason=job.reason)
                return
            current = self._exchange.current_job()
            if current is None or current.id != job.id:
                log.info("re-score cancelled", pipeline=name, reason=job.reason)
                return

    async def _chunk(
        self,
        job: RescoreJob,
        cursor: tuple[Any, ...] | None,
        *,
        last: bool,
        rows_total: int | None,
        types: InputTypes | None,
        error: str | None = None,
    ) -> tuple[tuple[Any, ...] | None, bool]:
        """One chunk between its watermarks, merged by the stream; its last key and whether it
        was the job's last. ``last``: a chunk of no rows that ends the job."""

        async def attempt() -> Chunk:
            chunk_id = uuid.uuid4().hex
            self._exchange.expect(chunk_id)
            await asyncio.to_thread(self._watermark, chunk_id, WINDOW_OPEN)
            rows: list[dict[str, Any]] = []
            if not last:
                rows = await asyncio.to_thread(self._select, job.where, cursor)
                if self._on_chunk_read is not None:
                    self._on_chunk_read(len(rows))
            changes = tuple(self._change(values) for values in rows)
            done = last or len(rows) < self._pipeline.snapshot_chunk_rows
            chunk = Chunk(
                id=chunk_id,
                job_id=job.id,
                rows=changes,
                cursor=changes[-1].key if changes else cursor,
                last=done,
                rows_total=rows_total,
                input_types=types if done else None,
                error=error,
            )
            self._exchange.deposit(chunk)
            await asyncio.to_thread(self._watermark, chunk_id, WINDOW_CLOSE)
            return chunk

        chunk = await self._retrying(attempt)
        await self._exchange.taken()
        # The watermarks, and with the job's last chunk its request, have been read: the
        # signal table keeps only what is still to come.
        done = [f"{chunk.id}-open", f"{chunk.id}-close", *([job.id] if chunk.last else [])]
        try:
            await asyncio.to_thread(self._forget, done)
        except CdcScorerError as exc:  # rows left over: harmless (the router reads inserts)
            log.warning(
                "could not delete used signals", pipeline=self._pipeline.name, error=str(exc)
            )
        return chunk.cursor, chunk.last

    async def _pace(self) -> None:
        rate = self._pipeline.rescore.max_rows_per_s
        if rate is None:
            return
        now = time.monotonic()
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + self._pipeline.snapshot_chunk_rows / rate

    async def _retrying(self, operation: Callable[[], Any]) -> Any:
        async def once() -> Any:
            try:
                result = operation()
                return await result if asyncio.iscoroutine(result) else result
            except RetriableError:
                close_quietly(self._conn)
                self._conn = None
                raise

        return await retrying(once, spec=self._retry, stage="snapshot", on_retry=self._on_retry)

    # ---- blocking parts, in a thread
    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self._source)
        return self._conn

    def _change(self, values: dict[str, Any]) -> RowChange:
        key = tuple(values[c] for c in self._table.key_columns)
        return RowChange(Op.SNAPSHOT, self._pipeline.table, key, values, None, None)

    def _watermark(self, chunk_id: str, kind: str) -> None:
        _signal(self._connection(), f"{chunk_id}-{kind[7:]}", self._pipeline.name, kind, chunk_id)

    def _forget(self, signals: list[str]) -> None:
        forget_signals(self._connection(), signals)

    def _count(self, where: str | None) -> int:
        return count_rows(self._connection(), self._pipeline.table, where)

    def _input_types(self) -> InputTypes:
        conn = self._connection()
        doing = f"reading the columns of {self._pipeline.table}"
        with mysql_errors(doing), conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (self._source.database, self._pipeline.table),
            )
            found = {str(name): str(ctype) for name, ctype in cursor.fetchall()}
        return input_types(self._pipeline, found)

    def _select(self, where: str | None, cursor: tuple[Any, ...] | None) -> list[dict[str, Any]]:
        if where and cursor is not None:
            where = where.replace("%", "%%")  # the statement has parameters: % is theirs
        conditions = [c for c in (self._after if cursor is not None else None, where) if c]
        condition = " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""
        sql = (
            f"SELECT * FROM {quote(self._pipeline.table)}{condition} ORDER BY {self._key} "
            f"LIMIT {int(self._pipeline.snapshot_chunk_rows)}"
        )
        conn = self._connection()
        doing = f"reading a chunk of {self._pipeline.table}"
        with mysql_errors(doing), conn.cursor(pymysql.cursors.DictCursor) as dict_cursor:
            dict_cursor.execute(sql, cursor)
            rows = list(dict_cursor.fetchall())
        conn.commit()  # ends the read: no snapshot is held between chunks
        return rows
