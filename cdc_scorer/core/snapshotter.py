"""The snapshotter: reads a pipeline's table in key-ordered chunks between watermarks, while
the change log keeps streaming (DBLog; ``rescoring.py`` has the stream's side).

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
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from cdc_scorer.core.backfill import Backfill
from cdc_scorer.core.errors import CdcScorerError, FatalError, RetriableError, inputs_gone
from cdc_scorer.core.own_tables import WINDOW_CLOSE, WINDOW_OPEN, watermark_id
from cdc_scorer.core.records import Checkpoint, Op, RescoreJob, RowChange, TableInfo
from cdc_scorer.core.rescoring import (
    Chunk,
    ChunkExchange,
    enqueue,
    now_iso,
    on_alter,
    snapshot_state,
)
from cdc_scorer.core.retry import retrying
from cdc_scorer.core.spec import PipelineSpec, RetrySpec
from cdc_scorer.core.store import ChunkStore, DaemonStore

log = structlog.get_logger("cdc_scorer.core.snapshotter")
InputTypes = tuple[tuple[str, str], ...]
Key = tuple[Any, ...]
# One chunk as read: its rows, or a sweep's orphan keys (None: a chunk of rows), its cursor,
# and whether it was the last.
ChunkContent = tuple[tuple[RowChange, ...], tuple[Key, ...] | None, Key | None, bool]
ChunkRead = Callable[[], ChunkContent]  # blocking


def input_types(pipeline: PipelineSpec, column_types: dict[str, str]) -> InputTypes:
    """The model inputs' column types (a missing input: "")."""
    return tuple((c, column_types.get(c, "")) for c in pipeline.input_columns)


def _type_changes(before: InputTypes, after: InputTypes) -> list[str]:
    old = dict(before)
    return [f"{c} {old[c]} → {t}" for c, t in after if c in old and old[c] != t]


# ---------------------------------------------------------------- start-up
def plan_rescores(
    store: DaemonStore,
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
        types = input_types(pipeline, tables[pipeline.table].column_types)
        if not rescores.input_types:
            rescores = replace(rescores, input_types=types)
        elif rescores.input_types != types and pipeline.rescore_on_alter:
            # An input changed type while no scorer ran (a change log that describes tables
            # only with their next row — PostgreSQL's — may never say so): the same check as
            # for an ALTER read from the stream.
            log.info(
                "model input types changed since the last run: checking",
                pipeline=pipeline.name,
                changes=_type_changes(rescores.input_types, types),
            )
            rescores = on_alter(rescores, f"at start {uuid.uuid4().hex[:8]}", version)
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
        if not everything and store.older_predictions(pipeline):
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


# ---------------------------------------------------------------- the chunks
class Snapshotter:
    """Runs one pipeline's re-score jobs, one chunk at a time, as the accumulator asks."""

    def __init__(
        self,
        store: ChunkStore,
        pipeline: PipelineSpec,
        table: TableInfo,
        exchange: ChunkExchange,
        retry: RetrySpec,
        *,
        on_chunk_read: Callable[[int], None] | None = None,
        on_retry: Callable[[str, RetriableError], None] | None = None,
        stream_quiet: Callable[[], bool] = lambda: False,
        backfill: Backfill | None = None,
    ) -> None:
        self._stream_quiet = stream_quiet  # the model's budget says so (rescore_pace)
        self._backfill = backfill  # re-scores as batch jobs when it takes them
        self._store = store
        self._pipeline = pipeline
        self._table = table
        self._exchange = exchange
        self._retry = retry
        self._on_chunk_read = on_chunk_read
        self._on_retry = on_retry
        self._next_at = 0.0  # the pace: when the next chunk may be read

    async def run(self) -> None:
        last: str | None = None
        try:
            while True:
                job = await self._exchange.next_job(last)
                last = job.id
                await self._job(job)
                self._store.close()  # until the next job: no connection per idle pipeline
        finally:
            self._store.close()

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
                await self._chunk(job, None, rows_total=0, types=types)
                return
            log.info("a model input changed type: re-scoring", pipeline=name, changes=changes)
        total = job.rows_total
        if total is None:
            try:
                total = await self._retrying(lambda: self._count(job.where))
            except FatalError as exc:  # a condition the server refuses: this job ends, not all
                log.error("re-score refused", pipeline=name, where=job.where, error=str(exc))
                await self._chunk(job, None, rows_total=0, types=None, error=str(exc))
                return
        if types is None:
            types = await self._retrying(self._input_types)
        rows = total or 0  # the job's rows, as counted at its start
        if job.sweep and not job.swept:
            if not await self._sweep(job, total):
                return
            total = None  # carried by the sweep's first chunk
        if self._backfill is not None and self._backfill.takes(rows):
            await self._batch_jobs(job, total, types)
            return
        cursor = job.cursor
        while True:
            await self._pace()
            cursor, last = await self._chunk(
                job, self._rows_reader(job.where, cursor), rows_total=total, types=types
            )
            total = None  # carried by the first chunk
            if last:
                log.info("re-score done", pipeline=name, reason=job.reason)
                return
            if self._cancelled(job):
                return

    async def _batch_jobs(
        self, job: RescoreJob, total: int | None, types: InputTypes | None
    ) -> None:
        """The job's rows as batch jobs (``backfill.py``), merged through this snapshotter's
        chunks between watermarks."""
        assert self._backfill is not None
        first = [total]

        backfill = self._backfill

        async def merge(read: ChunkRead) -> tuple[tuple[Any, ...] | None, bool]:
            rows_total, first[0] = first[0], None  # carried by the first chunk
            # A job's answers need no model call: only a cap the user set paces their merge
            # (the stream's p99 against the re-score's speed), not a model's budget.
            await self._paced(self._pipeline.rescore.max_rows_per_s, backfill.merge_rows)
            return await self._chunk(job, read, rows_total=rows_total, types=types)

        def cancelled() -> bool:
            current = self._exchange.current_job()
            return current is None or current.id != job.id

        try:
            done = await self._backfill.run(job, merge, self._retrying, cancelled)
        except FatalError as exc:
            # The service refused a job for a setting (the role, the bucket, a quota): this
            # re-score ends with the fix in its error (`status` shows it); the stream goes on.
            log.error(
                "re-score by batch jobs refused", pipeline=self._pipeline.name, error=str(exc)
            )
            await self._chunk(job, None, rows_total=0, types=None, error=str(exc))
            return
        if done:
            log.info("re-score done", pipeline=self._pipeline.name, reason=job.reason)
        else:
            log.info("re-score cancelled", pipeline=self._pipeline.name, reason=job.reason)

    async def _sweep(self, job: RescoreJob, total: int | None) -> bool:
        """Remove the predictions whose source row is gone, a chunk of the predictions table
        at a time between watermarks; False if the job was cancelled meanwhile."""
        log.info("re-score sweeping predictions of deleted rows", pipeline=self._pipeline.name)
        cursor = job.sweep_cursor
        while True:
            await self._pace()
            cursor, last = await self._chunk(
                job, self._orphans_reader(cursor), rows_total=total, types=None
            )
            total = None
            if last:
                return True
            if self._cancelled(job):
                return False

    def _cancelled(self, job: RescoreJob) -> bool:
        current = self._exchange.current_job()
        if current is None or current.id != job.id:
            log.info("re-score cancelled", pipeline=self._pipeline.name, reason=job.reason)
            return True
        return False

    def _rows_reader(self, where: str | None, cursor: tuple[Any, ...] | None) -> ChunkRead:
        """A chunk of rows after ``cursor``."""

        def read() -> ChunkContent:
            limit = self._pipeline.snapshot_chunk_rows
            rows = self._store.select(where, cursor, limit)
            if self._on_chunk_read is not None:
                self._on_chunk_read(len(rows))
            changes = tuple(self._change(values) for values in rows)
            return changes, None, changes[-1].key if changes else cursor, len(rows) < limit

        return read

    def _orphans_reader(self, cursor: tuple[Any, ...] | None) -> ChunkRead:
        """A chunk of the predictions table after ``cursor``: its keys without a source row."""

        def read() -> ChunkContent:
            limit = self._pipeline.snapshot_chunk_rows
            orphans, last_read, read_count = self._store.orphans(cursor, limit)
            return (), tuple(orphans), last_read or cursor, read_count < limit

        return read

    async def _chunk(
        self,
        job: RescoreJob,
        read: ChunkRead | None,
        *,
        rows_total: int | None,
        types: InputTypes | None,
        error: str | None = None,
    ) -> tuple[tuple[Any, ...] | None, bool]:
        """One chunk between its watermarks, merged by the stream; its cursor and whether it
        was the last (of the job, or of its sweep). ``read`` None: a chunk of no rows that ends
        the job."""

        # Little of the re-score ahead of the stream: the chunks before committed first.
        await self._exchange.durable()

        async def attempt() -> Chunk:
            chunk_id = uuid.uuid4().hex
            self._exchange.expect(chunk_id)
            await asyncio.to_thread(self._watermark, chunk_id, WINDOW_OPEN)
            rows: tuple[RowChange, ...] = ()
            orphans, cursor, done = None, job.cursor, True
            if read is not None:
                rows, orphans, cursor, done = await asyncio.to_thread(read)
            chunk = Chunk(
                id=chunk_id,
                job_id=job.id,
                rows=rows,
                cursor=cursor,
                last=done,
                rows_total=rows_total,
                input_types=types if done else None,
                error=error,
                orphans=orphans,
            )
            self._exchange.deposit(chunk)
            await asyncio.to_thread(self._watermark, chunk_id, WINDOW_CLOSE)
            return chunk

        chunk = await self._retrying(attempt)
        await self._exchange.taken()
        # The watermarks, and with the job's last chunk its request, have been read: the
        # signal table keeps only what is still to come.
        watermarks = [watermark_id(chunk.id, kind) for kind in (WINDOW_OPEN, WINDOW_CLOSE)]
        ended = chunk.last and chunk.orphans is None
        done = [*watermarks, *([job.id] if ended else [])]
        try:
            await asyncio.to_thread(self._forget, done)
        except CdcScorerError as exc:  # rows left over: harmless (the router reads inserts)
            log.warning(
                "could not delete used signals", pipeline=self._pipeline.name, error=str(exc)
            )
        return chunk.cursor, chunk.last

    async def _pace(self) -> None:
        rate = self._pipeline.rescore_pace(self._stream_quiet())
        await self._paced(rate, self._pipeline.snapshot_chunk_rows)

    async def _paced(self, rate: float | None, rows: int) -> None:
        """Until a chunk of ``rows`` may be read at ``rate`` rows/s (None: now)."""
        if rate is None:
            return
        now = time.monotonic()
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + rows / rate

    async def _retrying(self, operation: Callable[[], Any]) -> Any:
        async def once() -> Any:
            try:
                result = operation()
                return await result if asyncio.iscoroutine(result) else result
            except RetriableError:
                self._store.reset()
                raise

        return await retrying(once, spec=self._retry, stage="snapshot", on_retry=self._on_retry)

    # ---- blocking parts, in a thread
    def _change(self, values: dict[str, Any]) -> RowChange:
        key = tuple(values[c] for c in self._table.key_columns)
        return RowChange(Op.SNAPSHOT, self._pipeline.table, key, values, None, None)

    def _watermark(self, chunk_id: str, kind: str) -> None:
        self._store.signal(watermark_id(chunk_id, kind), self._pipeline.name, kind, chunk_id)

    def _forget(self, signals: list[str]) -> None:
        self._store.forget(signals)

    def _count(self, where: str | None) -> int:
        return self._store.count(where)

    def _input_types(self) -> InputTypes:
        return input_types(self._pipeline, self._store.column_types())
