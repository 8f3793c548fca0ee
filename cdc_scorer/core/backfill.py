"""Backfills at batch prices: a re-score of a whole table as batch jobs (Bedrock batch
inference, SageMaker Batch Transform) instead of real-time calls, with the stream's guarantees.

The table is cut into ranges of keys, one job each (``records_per_job`` rows, read in key
order without watermarks: what a job scores needs no consistency with the stream). Each range's
job is a row of the scorer's own job table, written before it is submitted, with a name and an
idempotency token derived from it: a submission repeated after a crash is the same job. Up to
``max_jobs_in_flight`` jobs run at once; they are merged in their order.

A job's answers are written only where they are still the newest truth. The merge reads its
range again in chunks between watermarks, exactly as a real-time re-score reads its chunks
(``snapshotter.py``, DBLog): a row the stream changes inside a chunk's window is dropped from it
(the stream writes its own prediction), and of the rows read, one whose record input now
differs from what the job scored was changed since the job read it — the stream has scored
that version already, with the model version the pipeline runs. Only a row whose input is the
job's goes in with the job's answer (no model call); a deleted row is not read at all. Records
the job did not answer (not processed, an internal error) go through the real-time path; a
record the model refused is a dead letter with the service's reason. The re-score's cursor
moves with the merged chunks in the pipeline's checkpoint; at the end of a range it is that
range's last key, so a restart knows which ranges are merged without comparing keys itself.

After kill -9, a restart or a new leader: the job rows are read back, jobs not yet submitted
are submitted again under their token (the same job), running ones are followed, finished ones
merged; a job of another re-score (a model version changed since) is stopped.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from cdc_scorer.core.batch import (
    ABANDONED,
    DONE,
    ENDED,
    FINISHED,
    MERGED,
    PREPARED,
    REALTIME,
    SUBMITTED,
    BatchJob,
    BatchService,
    RecordResult,
    key_json,
    key_text,
)
from cdc_scorer.core.errors import PoisonError
from cdc_scorer.core.records import BatchAnswer, Op, RescoreJob, RowChange, TableInfo
from cdc_scorer.core.spec import BackfillSpec, PipelineSpec

log = structlog.get_logger("cdc_scorer.core.backfill")
READ_ROWS = 500  # rows a range is read in at a time (each piece in a thread)
# The share of the time a range's reading may take: the jobs before it run for minutes, and
# a piece read back to back with the next holds the interpreter from the stream (the
# stream's p99 rose 1.5-2x while a job's 25,000 rows were read and written to S3).
READ_DUTY = 0.5
Key = tuple[Any, ...]
# One chunk as the snapshotter merges it: rows, orphans (None), cursor, last.
ChunkContent = tuple[tuple[RowChange, ...], None, Key | None, bool]
Merge = Callable[[Callable[[], ChunkContent]], Awaitable[tuple[Key | None, bool]]]
Retrying = Callable[[Callable[[], Any]], Awaitable[Any]]


class JobStore:
    """What the backfill keeps in the job table (blocking; the chunk reader's connection)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def jobs(self, pipeline: str) -> list[BatchJob]:
        return sorted(
            (BatchJob.decode(text) for text in self._store.batch_jobs(pipeline)),
            key=lambda j: (j.rescore_id, j.sequence),
        )

    def save(self, job: BatchJob) -> BatchJob:
        job = replace(job, updated_at=_now())
        self._store.save_batch_job(
            job.pipeline, job.name, job.rescore_id, job.sequence, job.state, job.encode()
        )
        return job


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def job_name(pipeline: str, rescore_id: str, sequence: int) -> str:
    """A job name both services take (letters, digits, hyphens; at most 63), unique per
    re-score and range."""
    safe = "".join(c if c.isalnum() else "-" for c in pipeline).strip("-")[:30] or "p"
    return f"cdc-{safe}-{rescore_id[:12]}-{sequence}"


def job_token(pipeline: str, rescore_id: str, sequence: int, after: Key | None) -> str:
    """The idempotency token of a job's submission, derived from its row."""
    seed = f"{pipeline}\0{rescore_id}\0{sequence}\0{key_json(after) if after else None}"
    return hashlib.sha256(seed.encode()).hexdigest()[:48]


class Backfill:
    """One pipeline's re-scores as batch jobs (for the snapshotter: :meth:`takes`,
    :meth:`run`)."""

    def __init__(
        self,
        service: BatchService,
        pipeline: PipelineSpec,
        table: TableInfo,
        store: Any,
        *,
        on_job: Callable[[BatchJob], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.service = service
        self._spec: BackfillSpec = pipeline.backfill
        self._pipeline = pipeline
        self._table = table
        self._store = store
        self._jobs = JobStore(store)
        self._on_job = on_job
        self._sleep = sleep

    @property
    def merge_rows(self) -> int:
        """Rows per merged chunk. Answered rows go to the sink without a model call, and the
        stream's rows behind them wait for their write: no more than one batch."""
        return min(self._pipeline.snapshot_chunk_rows, self._pipeline.max_batch_rows)

    def takes(self, rows: int) -> bool:
        return rows >= self.service.min_records and self._spec.takes(rows)

    # ---------------------------------------------------------------- the re-score
    async def run(
        self,
        job: RescoreJob,
        merge: Merge,
        retrying: Retrying,
        cancelled: Callable[[], bool],
    ) -> bool:
        """Re-score ``job``'s rows from its cursor as batch jobs; each range merged through
        ``merge`` (the snapshotter's chunk between watermarks), the last chunk ending the
        job. False: the job was cancelled meanwhile (its running batch jobs are stopped)."""
        name = self._pipeline.name
        stored: list[BatchJob] = await retrying(functools.partial(self._jobs.jobs, name))
        mine = [j for j in stored if j.rescore_id == job.id]
        for other in stored:
            if other.rescore_id != job.id and other.state not in FINISHED:
                await self._abandon(other, retrying, "its re-score ended or changed")
        # Ranges whose last key is the cursor, or marked merged, are done (the cursor moves to
        # a range's last key with its last chunk).
        cursor_text = None if job.cursor is None else key_text(job.cursor)
        open_jobs: list[BatchJob] = []
        merged_upto = -1
        for index, each in enumerate(mine):
            if each.state == MERGED or key_text(each.last) == cursor_text:
                merged_upto = index
        for each in mine[merged_upto + 1 :]:
            open_jobs.append(each)
        reading_done = bool(mine) and mine[-1].final
        next_after: Key | None = mine[-1].last if mine else job.cursor
        sequence = mine[-1].sequence + 1 if mine else 0
        if mine:
            log.info(
                "backfill resuming",
                pipeline=name,
                jobs=len(mine),
                open=[j.name for j in open_jobs],
            )
        else:
            log.info("backfill starting", pipeline=name, service=self.service.describe)
        # The first range to merge starts at the cursor (inside it after a restart); the
        # others where they begin.
        start: Key | None = job.cursor
        # Jobs written but perhaps not submitted: submitted again under their token.
        for index, each in enumerate(open_jobs):
            if each.state == PREPARED:
                open_jobs[index] = await self._submit_again(each, job, retrying)
        while True:
            while not reading_done and len(open_jobs) < self._spec.max_jobs_in_flight:
                if cancelled():
                    break
                made = await self._next_range(job, next_after, sequence, retrying)
                if made is None:
                    reading_done = True
                    break
                open_jobs.append(made)
                next_after, sequence, reading_done = made.last, sequence + 1, made.final
            if cancelled():
                for each in open_jobs:
                    await self._abandon(each, retrying, "the re-score was cancelled")
                return False
            if not open_jobs:
                break
            head = open_jobs[0]
            results: Mapping[str, RecordResult] = {}
            if head.state != REALTIME:
                head = await self._follow(head, retrying, cancelled)
                if cancelled():
                    continue  # abandoned at the top of the loop
                results = await retrying(functools.partial(self.service.results, head))
            head = await self._merge(job, head, results, merge, start)
            start = head.last
            head = await retrying(functools.partial(self._jobs.save, head.moved(state=MERGED)))
            self._report(head)
            open_jobs.pop(0)
        # The job's end: a chunk of no rows with the last flag.
        await merge(lambda: ((), None, next_after, True))
        log.info("backfill done", pipeline=name, jobs=sequence)
        return True

    async def _next_range(
        self, job: RescoreJob, after: Key | None, sequence: int, retrying: Retrying
    ) -> BatchJob | None:
        """Read the next range of rows, write its job row and submit it (None: no rows
        left)."""
        limit = self._spec.records_per_job
        count, last, records = await self._read_range(job.where, after, limit, None, retrying)
        if not count:
            return None
        assert last is not None
        final = count < limit
        batch_job = BatchJob(
            pipeline=self._pipeline.name,
            rescore_id=job.id,
            sequence=sequence,
            name=job_name(self._pipeline.name, job.id, sequence),
            token=job_token(self._pipeline.name, job.id, sequence, after),
            after=after,
            last=last,
            records=len(records),
            final=final,
            model_version=job.model_version,
        )
        if len(records) < self.service.min_records:
            # Too few for a job (the service refuses it): these rows go through the endpoint.
            made = batch_job.moved(state=REALTIME)
            saved_realtime: BatchJob = await retrying(functools.partial(self._jobs.save, made))
            return saved_realtime
        saved: BatchJob = await retrying(functools.partial(self._jobs.save, batch_job))
        return await self._submit(saved, records, retrying, "backfill job submitted")

    async def _submit(
        self, batch_job: BatchJob, records: list[tuple[str, str]], retrying: Retrying, said: str
    ) -> BatchJob:
        """Submit a job whose row is written; its row with the service's id, saved."""
        given: BatchJob = await retrying(functools.partial(self.service.submit, batch_job, records))
        given = given.moved(state=SUBMITTED, submitted_at=_now())
        submitted: BatchJob = await retrying(functools.partial(self._jobs.save, given))
        log.info(
            said,
            pipeline=self._pipeline.name,
            job=submitted.name,
            arn=submitted.arn,
            records=submitted.records,
        )
        self._report(submitted)
        return submitted

    async def _read_range(
        self,
        where: str | None,
        after: Key | None,
        limit: int,
        through: Key | None,
        retrying: Retrying,
    ) -> tuple[int, Key | None, list[tuple[str, str]]]:
        """A range of up to ``limit`` rows read, in pieces of READ_ROWS each in a thread with
        its records made there: a job's tens of thousands of rows parsed in one go would hold
        the interpreter long enough to stall the stream on the event loop. How many rows, the
        last key, and (key text, record input) of each row the service can take (the others
        are read again by the merge and go through the real-time path, which dead-letters
        them)."""
        count, last, records = 0, after, []
        while count < limit:
            want = min(READ_ROWS, limit - count)
            piece = functools.partial(self._read_piece, where, last, want, through)
            started = time.monotonic()
            read, last, made = await retrying(functools.partial(asyncio.to_thread, piece))
            count += read
            records += made
            if read < want:
                break
            took = time.monotonic() - started
            await self._sleep(took * (1 - READ_DUTY) / READ_DUTY)
        return count, (last if count else None), records

    def _read_piece(
        self, where: str | None, after: Key | None, rows: int, through: Key | None
    ) -> tuple[int, Key | None, list[tuple[str, str]]]:
        found = self._store.select(where, after, rows, through)
        key_columns = self._table.key_columns
        records = []
        for values in found:
            try:
                record = self.service.record(values)
            except PoisonError:
                continue
            records.append((key_text(tuple(values[c] for c in key_columns)), record))
        last = tuple(found[-1][c] for c in key_columns) if found else after
        return len(found), last, records

    async def _submit_again(
        self, batch_job: BatchJob, job: RescoreJob, retrying: Retrying
    ) -> BatchJob:
        """A job whose row was written before a stop, perhaps submitted: its range read again
        and submitted under the same token (the service answers with the job it made)."""
        limit = self._spec.records_per_job
        # The records are used only if the job's input was never written.
        _, _, records = await self._read_range(
            job.where, batch_job.after, limit, batch_job.last, retrying
        )
        return await self._submit(batch_job, records, retrying, "backfill job re-attached")

    async def _follow(
        self, batch_job: BatchJob, retrying: Retrying, cancelled: Callable[[], bool]
    ) -> BatchJob:
        """Until the service says the job ended (its row keeps the state for `status`)."""
        while True:
            progress = await retrying(functools.partial(self.service.progress, batch_job))
            moved = batch_job.moved(
                service_state=progress.service_state,
                processed=progress.processed,
                failed=progress.failed,
                message=progress.message,
                state=progress.state if progress.state in (DONE, ENDED) else batch_job.state,
            )
            if moved != batch_job:
                batch_job = await retrying(functools.partial(self._jobs.save, moved))
                self._report(batch_job)
            if progress.state in (DONE, ENDED):
                if progress.state == ENDED:
                    log.warning(
                        "backfill job ended short: its unanswered records go real-time",
                        pipeline=self._pipeline.name,
                        job=batch_job.name,
                        state=progress.service_state,
                        message=progress.message,
                    )
                return batch_job
            if cancelled():
                return batch_job
            await self._sleep(self._spec.poll_s)

    async def _merge(
        self,
        job: RescoreJob,
        batch_job: BatchJob,
        results: Mapping[str, RecordResult],
        merge: Merge,
        start: Key | None,
    ) -> BatchJob:
        """The job's range read again in chunks between watermarks from ``start``, its answers
        given to the rows whose input is still the one it scored."""
        counts = {"answered": 0, "superseded": 0, "realtime": 0, "dead": 0}
        limit = self.merge_rows
        key_columns = self._table.key_columns
        realtime = batch_job.state == REALTIME
        after = start
        while True:
            read_after = after

            def read(start: Key | None = read_after) -> ChunkContent:
                rows = self._store.select(job.where, start, limit, batch_job.last)
                changes = []
                for values in rows:
                    key = tuple(values[c] for c in key_columns)
                    change = RowChange(Op.SNAPSHOT, self._pipeline.table, key, values, None, None)
                    picked = change if realtime else self._pick(change, results, counts)
                    if picked is not None:
                        changes.append(picked)
                        if realtime:
                            counts["realtime"] += 1
                done = len(rows) < limit
                # The range's end: the cursor is its last key whatever the last row read.
                cursor = batch_job.last if done else (key if rows else start)
                return tuple(changes), None, cursor, False

            cursor, _ = await merge(read)
            if cursor is not None and key_text(cursor) == key_text(batch_job.last):
                break
            after = cursor
        merged = batch_job.moved(**counts)
        log.info(
            "backfill job merged",
            pipeline=self._pipeline.name,
            job=batch_job.name,
            **counts,
        )
        return merged

    def _pick(
        self, change: RowChange, results: Mapping[str, RecordResult], counts: dict[str, int]
    ) -> RowChange | None:
        """The row as the merge adds it: with the job's answer, through the real-time path,
        or not at all (the stream changed it since the job read it)."""
        result = results.get(key_text(change.key))
        try:
            now = self.service.record(change.values)
        except PoisonError:
            counts["realtime"] += 1
            return change  # the real-time path dead-letters it with its reason
        if result is None or result.input != now:
            # Inserted or changed since the job read its range: the stream scored this version.
            counts["superseded"] += 1
            return None
        if result.columns is not None:
            counts["answered"] += 1
            return replace(change, answered=BatchAnswer(result.columns))
        if result.retry:
            counts["realtime"] += 1
            return change
        counts["dead"] += 1
        return replace(change, answered=BatchAnswer(None, result.reason, result.error))

    async def _abandon(self, batch_job: BatchJob, retrying: Retrying, why: str) -> None:
        if batch_job.state in (SUBMITTED, PREPARED) and batch_job.arn is not None:
            await retrying(functools.partial(self.service.stop, batch_job))
        gone = batch_job.moved(state=ABANDONED, message=why)
        await retrying(functools.partial(self._jobs.save, gone))
        self._report(gone)
        log.info(
            "backfill job abandoned", pipeline=self._pipeline.name, job=batch_job.name, why=why
        )

    def _report(self, batch_job: BatchJob) -> None:
        if self._on_job is not None:
            self._on_job(batch_job)
