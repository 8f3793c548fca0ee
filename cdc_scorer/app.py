"""Wiring: preflight, checkpoints, snapshot, the binlog reader, one runner per pipeline.

Shutdown is "stop intake → drain until a deadline → cancel": the reader stops, every batcher
flushes, in-flight model calls finish and commit in order, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from cdc_scorer.batcher import END, Batcher, start_position
from cdc_scorer.db import Connection, connect, quote
from cdc_scorer.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.records import Batch, Checkpoint, Commit, Position, ScoredBatch, SourceItem
from cdc_scorer.schema import (
    HEARTBEAT_TABLE,
    ServerInfo,
    TableInfo,
    check_resumable,
    check_schema,
    current_position,
    inspect_tables,
    preflight_binlog,
)
from cdc_scorer.scoring import Scorer
from cdc_scorer.scoring.aws import create_client_context
from cdc_scorer.scoring.comprehend import ComprehendScorer
from cdc_scorer.scoring.sagemaker import SageMakerScorer
from cdc_scorer.sink import Sink, load_checkpoints, save_checkpoint
from cdc_scorer.source.binlog import BinlogSource, CaptureSpec, SourceBatch
from cdc_scorer.source.snapshot import snapshot_rows
from cdc_scorer.spec import COMPREHEND, SAGEMAKER, PipelineSpec, ScorerSpec

log = structlog.get_logger("cdc_scorer.app")


@dataclass
class Progress:
    """Counts for the log, the demo and (later) metrics."""

    rows_scored: Counter[str] = field(default_factory=Counter)
    rows_deleted: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    rows_skipped: Counter[str] = field(default_factory=Counter)
    model_calls: Counter[str] = field(default_factory=Counter)
    batches: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    last_commit_at: dict[str, float] = field(default_factory=dict)

    def on_retry(self, stage: str, exc: RetriableError) -> None:
        self.retries[stage] += 1


class PipelineRunner:
    """Batcher → concurrent scoring (bounded in flight) → ordered commit, for one pipeline."""

    def __init__(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        scorer: Scorer,
        sink: Sink,
        progress: Progress,
    ) -> None:
        self.pipeline = pipeline
        self.checkpoint = checkpoint
        self.inbox: asyncio.Queue[tuple[SourceItem, ...] | None] = asyncio.Queue(maxsize=64)
        in_flight = pipeline.batching.max_in_flight
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=in_flight)
        self._in_flight: asyncio.Queue[asyncio.Task[ScoredBatch] | None] = asyncio.Queue(
            maxsize=in_flight
        )
        # The batcher skips transactions the pipeline applied already; during a snapshot that
        # is everything up to the snapshot's position.
        applied = checkpoint.position or checkpoint.snapshot_position
        self._batcher = Batcher(
            pipeline, table.key_columns, checkpoint, self.inbox, self._batches, applied=applied
        )
        self._scorer = scorer
        self._sink = sink
        self._progress = progress

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._batcher.run(), name=f"{self.pipeline.name}-batcher")
                group.create_task(self._dispatch(group), name=f"{self.pipeline.name}-dispatch")
                group.create_task(self._commit_in_order(), name=f"{self.pipeline.name}-commit")
        finally:
            self._sink.close()

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while True:
            batch = await self._batches.get()
            if batch is None:
                await self._in_flight.put(None)
                return
            # The bounded queue of tasks is the in-flight limit; order is kept by the queue.
            task = group.create_task(self._scorer.score(batch))
            await self._in_flight.put(task)

    async def _commit_in_order(self) -> None:
        name = self.pipeline.name
        while True:
            task = await self._in_flight.get()
            if task is None:
                return
            scored = await task
            await self._sink.write(scored)
            self.checkpoint = scored.checkpoint
            progress = self._progress
            progress.rows_scored[name] += len(scored.upserts)
            progress.rows_deleted[name] += len(scored.deletes)
            progress.model_calls[name] += scored.model_calls
            progress.batches[name] += 1
            progress.last_commit_at[name] = time.time()
            for reason, count in scored.rows_skipped.items():
                progress.rows_skipped[f"{name}:{reason}"] += count
            for dead in scored.dead_letters:
                progress.dead_letters[f"{name}:{dead.reason}"] += 1


class ScorerApp:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self.progress = Progress()
        self._stop = asyncio.Event()
        self._source: BinlogSource | None = None
        self.server: ServerInfo | None = None

    def request_stop(self) -> None:
        """Stop intake; what was read is flushed, scored and committed."""
        self._stop.set()
        if self._source is not None:
            self._source.stop()

    async def run(self) -> None:
        try:
            await self._run()
        except* CdcScorerError as group:
            raise _first(group) from None

    async def _run(self) -> None:
        spec = self.spec
        conn = await asyncio.to_thread(connect, spec.source)
        try:
            server, tables, checkpoints = await asyncio.to_thread(self._prepare, conn)
        finally:
            conn.close()
        self.server = server
        log.info(
            "starting",
            server=server.version,
            pipelines=[p.name for p in spec.pipelines],
            positions={n: str(c.position or c.snapshot_position) for n, c in checkpoints.items()},
        )
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, Any] = {}
            pool = sum(p.batching.max_in_flight for p in spec.pipelines)
            for service, name in ((SAGEMAKER, "sagemaker-runtime"), (COMPREHEND, "comprehend")):
                if any(p.service == service for p in spec.pipelines):
                    clients[service] = await stack.enter_async_context(
                        create_client_context(name, spec.aws, pool)
                    )
            runners = [
                self._runner(p, tables[p.table], checkpoints[p.name], clients, server)
                for p in spec.pipelines
            ]
            async with asyncio.TaskGroup() as group:
                for runner in runners:
                    group.create_task(runner.run(), name=f"pipeline-{runner.pipeline.name}")
                group.create_task(self._feed(runners, tables, server), name="feed")
                heartbeat = group.create_task(self._heartbeat(), name="heartbeat")
                await self._stop.wait()
                # The feed task ends the runners once intake stops; the heartbeat just stops.
                heartbeat.cancel()
        log.info(
            "stopped",
            rows_scored=dict(self.progress.rows_scored),
            dead_letters=dict(self.progress.dead_letters),
            model_calls=dict(self.progress.model_calls),
        )

    def _prepare(
        self, conn: Connection
    ) -> tuple[ServerInfo, dict[str, TableInfo], dict[str, Checkpoint]]:
        spec = self.spec
        server = preflight_binlog(conn)
        tables = inspect_tables(conn, spec)
        check_schema(conn, spec)
        saved = load_checkpoints(conn, [p.name for p in spec.pipelines])
        now = current_position(conn, server)
        checkpoints: dict[str, Checkpoint] = {}
        for pipeline in spec.pipelines:
            if pipeline.name in saved:
                checkpoint, _identity = saved[pipeline.name]
                resume_at = checkpoint.position or checkpoint.snapshot_position
                if resume_at is not None:
                    check_resumable(conn, server, resume_at)
            elif pipeline.snapshot == "initial":
                checkpoint = Checkpoint(
                    position=None, snapshot_state="running", snapshot_position=now
                )
                save_checkpoint(conn, pipeline.name, checkpoint, server.identity)
            else:
                checkpoint = Checkpoint(position=now, snapshot_state="skipped")
                save_checkpoint(conn, pipeline.name, checkpoint, server.identity)
            checkpoints[pipeline.name] = checkpoint
        return server, tables, checkpoints

    def _runner(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        clients: dict[str, Any],
        server: ServerInfo,
    ) -> PipelineRunner:
        scorer: Scorer
        if pipeline.sagemaker is not None:
            scorer = SageMakerScorer(
                clients[SAGEMAKER],
                pipeline.sagemaker,
                self.spec.retry,
                on_retry=self.progress.on_retry,
            )
        else:
            assert pipeline.comprehend is not None
            scorer = ComprehendScorer(
                clients[COMPREHEND],
                pipeline.comprehend,
                self.spec.retry,
                on_retry=self.progress.on_retry,
            )
        sink = Sink(
            self.spec.source,
            pipeline,
            table.key_columns,
            scorer.model_endpoint,
            server.identity,
            self.spec.retry,
            on_retry=self.progress.on_retry,
        )
        return PipelineRunner(pipeline, table, checkpoint, scorer, sink, self.progress)

    async def _feed(
        self, runners: list[PipelineRunner], tables: dict[str, TableInfo], server: ServerInfo
    ) -> None:
        """Snapshots first, then the binlog from the oldest position any pipeline needs."""
        try:
            await self._snapshots(runners, tables)
            if not self._stop.is_set():
                await self._stream(runners, tables, server)
        finally:
            for runner in runners:
                await runner.inbox.put(END)

    async def _snapshots(self, runners: list[PipelineRunner], tables: dict[str, TableInfo]) -> None:
        pending = [r for r in runners if r.checkpoint.snapshot_state == "running"]
        if not pending:
            return
        conn = await asyncio.to_thread(connect, self.spec.source)
        try:
            for runner in pending:
                log.info(
                    "snapshot starting",
                    pipeline=runner.pipeline.name,
                    resume_after=runner.checkpoint.snapshot_cursor,
                )
                async for items in snapshot_rows(
                    conn,
                    runner.pipeline,
                    tables[runner.pipeline.table],
                    runner.checkpoint.snapshot_cursor,
                ):
                    await runner.inbox.put(items)
                    if self._stop.is_set():
                        return
        finally:
            conn.close()

    async def _stream(
        self, runners: list[PipelineRunner], tables: dict[str, TableInfo], server: ServerInfo
    ) -> None:
        positions = [
            Checkpoint(position=r.checkpoint.position or r.checkpoint.snapshot_position)
            for r in runners
        ]
        start = start_position(positions, Position(server.identity))
        keys = {table: info.key_columns for table, info in tables.items()}
        keys[HEARTBEAT_TABLE] = ("instance",)
        queue: asyncio.Queue[SourceBatch] = asyncio.Queue(maxsize=self.spec.source.queue_max_items)
        self._source = BinlogSource(
            self.spec.source,
            CaptureSpec(keys),
            start,
            queue,
            on_disconnect=self._count_disconnect,
        )
        if self._stop.is_set():
            return
        by_table = {r.pipeline.table: r for r in runners}
        log.info("streaming", start=str(start))
        reader = asyncio.create_task(self._source.run(), name="binlog-reader")
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    await reader  # raises what stopped the reader, or returns when stopped
                    while not queue.empty():  # what was read before the stop is still applied
                        await self._route(queue.get_nowait(), runners, by_table)
                    return
                await self._route(get.result(), runners, by_table)
        finally:
            if not reader.done():
                self._source.stop()
                await asyncio.gather(reader, return_exceptions=True)

    async def _route(
        self, items: SourceBatch, runners: list[PipelineRunner], by_table: dict[str, PipelineRunner]
    ) -> None:
        if not items:
            return
        first = items[0]
        if isinstance(first, Commit):
            for runner in runners:
                await runner.inbox.put(items)
            return
        target = by_table.get(getattr(first, "table", ""))
        if target is not None:
            await target.inbox.put(items)

    def _count_disconnect(self) -> None:
        self.progress.disconnects += 1

    async def _heartbeat(self) -> None:
        """Keep positions moving on quiet tables: a tiny transaction every few seconds."""
        sql = (
            f"INSERT INTO {quote(HEARTBEAT_TABLE)} (instance, beat_at) VALUES (%s, NOW(6)) "
            "ON DUPLICATE KEY UPDATE beat_at = VALUES(beat_at)"
        )
        instance = str(self.spec.source.server_id)
        conn: Connection | None = None
        while True:
            try:
                if conn is None:
                    conn = await asyncio.to_thread(connect, self.spec.source)
                with conn.cursor() as cursor:
                    await asyncio.to_thread(cursor.execute, sql, (instance,))
            except RetriableError as exc:
                log.warning("heartbeat failed", error=str(exc))
                conn = None
            except Exception as exc:
                log.warning("heartbeat failed", error=repr(exc))
                conn = None
            try:
                await asyncio.sleep(self.spec.source.heartbeat_interval_s)
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()
                raise


def _first(group: BaseExceptionGroup[CdcScorerError]) -> CdcScorerError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, FatalError):
            return exc
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
