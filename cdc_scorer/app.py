"""Wiring: preflight, checkpoints, snapshot, the binlog reader, one runner per pipeline.

Shutdown is "stop intake → drain until a deadline → cancel": the reader stops, every batcher
flushes, in-flight model calls finish and commit in order, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from cdc_scorer.batcher import END, Batcher, start_position
from cdc_scorer.db import Connection, connect, quote
from cdc_scorer.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.leader import lock_name
from cdc_scorer.metrics import PipelineState, Telemetry
from cdc_scorer.ops_http import OpsServer
from cdc_scorer.records import (
    Batch,
    Checkpoint,
    Commit,
    Position,
    RowChange,
    ScoredBatch,
    SourceItem,
)
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
from cdc_scorer.source.binlog import BinlogSource, CaptureSpec, Handover, SourceBatch
from cdc_scorer.source.snapshot import snapshot_rows
from cdc_scorer.spec import COMPREHEND, SAGEMAKER, PipelineSpec, ScorerSpec

log = structlog.get_logger("cdc_scorer.app")
_LEADER_POLL_S = 1.0  # a standby re-asks for the lock this often (and notices a stop request)


class PipelineRunner:
    """Batcher → concurrent scoring (bounded in flight) → ordered commit, for one pipeline."""

    def __init__(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        scorer: Scorer,
        sink: Sink,
        telemetry: Telemetry,
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
        self._telemetry = telemetry
        telemetry.pipelines[pipeline.name] = PipelineState(
            snapshot_state=checkpoint.snapshot_state,
            inbox_depth=self.inbox.qsize,
            in_flight=self._in_flight.qsize,
        )

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
            started = time.monotonic()
            await self._sink.write(scored)
            self._telemetry.on_sink_write(name, time.monotonic() - started)
            self.checkpoint = scored.checkpoint
            self._telemetry.on_commit(name, scored)


class ScorerApp:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self.telemetry = Telemetry()
        self.telemetry.source.heartbeat_interval_s = spec.source.heartbeat_interval_s
        self._stop = asyncio.Event()
        self._source: BinlogSource | None = None
        self.server: ServerInfo | None = None
        self.ops: OpsServer | None = None

    def request_stop(self) -> None:
        """Stop intake; what was read is flushed, scored and committed."""
        self._stop.set()
        if self._source is not None:
            self._source.stop()

    def not_ready(self) -> list[str]:
        """Why this process should not count as ready (empty: ready)."""
        source = self.telemetry.source
        reasons = []
        if not source.leader:
            reasons.append("not the leader (standby)")
        running = [n for n, p in self.telemetry.pipelines.items() if p.snapshot_state == "running"]
        if running:
            reasons.append(f"snapshot running: {', '.join(running)}")
        elif not (source.streaming and source.connected):
            reasons.append("binlog stream not connected")
        lag = source.lag_s()
        if source.leader and (lag is None or lag > self.spec.http.ready_max_lag_s):
            shown = "unknown" if lag is None else f"{lag:.1f}s"
            reasons.append(f"source lag {shown} over {self.spec.http.ready_max_lag_s}s")
        return reasons

    async def run(self) -> None:
        try:
            await self._run()
        except* CdcScorerError as group:
            raise _first(group) from None

    async def _run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if self.spec.http.port:
                self.ops = OpsServer(self.spec.http, self.telemetry, self.not_ready)
                await self.ops.start()
                stack.push_async_callback(self.ops.stop)
            await self._run_pipelines()

    async def _run_pipelines(self) -> None:
        spec = self.spec
        conn = await asyncio.to_thread(connect, spec.source)
        try:
            server, tables = await asyncio.to_thread(self._inspect, conn)
            self.server = server
            sinks = {p.name: self._sink(p, tables[p.table], server) for p in spec.pipelines}
            try:
                if not await self._lead(sinks):
                    return
                checkpoints = await asyncio.to_thread(self._prepare, conn, server)
            except BaseException:
                for sink in sinks.values():
                    sink.close()
                raise
        finally:
            conn.close()
        for name, sink in sinks.items():
            sink.expect(checkpoints[name])
        log.info(
            "starting",
            server=server.version,
            server_id=spec.source.server_id,
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
                self._runner(p, tables[p.table], checkpoints[p.name], clients, sinks[p.name])
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
        self.telemetry.on_leader(False)
        log.info(
            "stopped",
            rows_scored=dict(self.telemetry.rows_scored),
            dead_letters=dict(self.telemetry.dead_letters),
            model_calls=dict(self.telemetry.model_calls),
        )

    def _inspect(self, conn: Connection) -> tuple[ServerInfo, dict[str, TableInfo]]:
        server = preflight_binlog(conn, self.spec.source.positions)
        tables = inspect_tables(conn, self.spec)
        check_schema(conn, self.spec)
        return server, tables

    async def _lead(self, sinks: dict[str, Sink]) -> bool:
        """Take every pipeline's lock (in name order: no deadlock between two instances).

        A standby waits here until the leader dies or stops; False if asked to stop first.
        """
        waiting_logged = False
        for name in sorted(sinks):
            sink = sinks[name]
            while not await asyncio.to_thread(sink.try_lead, _LEADER_POLL_S):
                if self._stop.is_set():
                    return False
                if not waiting_logged:
                    log.info("standby: another instance holds the leader lock", lock=sink.lock)
                    waiting_logged = True
            if self._stop.is_set():
                return False
        self.telemetry.on_leader(True)
        log.info("leader", locks=[sinks[n].lock for n in sorted(sinks)])
        return True

    def _prepare(self, conn: Connection, server: ServerInfo) -> dict[str, Checkpoint]:
        """Checkpoints, read only once the locks are held: nobody else writes them now."""
        spec = self.spec
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
        return checkpoints

    def _sink(self, pipeline: PipelineSpec, table: TableInfo, server: ServerInfo) -> Sink:
        scorer_endpoint = (
            pipeline.sagemaker.endpoint_name
            if pipeline.sagemaker is not None
            else ComprehendScorer.model_endpoint
        )
        return Sink(
            self.spec.source,
            pipeline,
            table.key_columns,
            scorer_endpoint,
            server.identity,
            self.spec.retry,
            on_retry=self.telemetry.on_retry,
            lock=lock_name(self.spec.source.database, pipeline.name),
        )

    def _runner(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        clients: dict[str, Any],
        sink: Sink,
    ) -> PipelineRunner:
        scorer: Scorer
        if pipeline.sagemaker is not None:
            scorer = SageMakerScorer(
                clients[SAGEMAKER],
                pipeline.sagemaker,
                self.spec.retry,
                on_retry=self.telemetry.on_retry,
                on_call=self.telemetry.model_call_observer(SAGEMAKER),
            )
        else:
            assert pipeline.comprehend is not None
            scorer = ComprehendScorer(
                clients[COMPREHEND],
                pipeline.comprehend,
                self.spec.retry,
                on_retry=self.telemetry.on_retry,
                on_call=self.telemetry.model_call_observer(COMPREHEND),
            )
        return PipelineRunner(pipeline, table, checkpoint, scorer, sink, self.telemetry)

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
                    resuming=runner.checkpoint.snapshot_cursor is not None,  # keys stay out
                )
                async for items in snapshot_rows(
                    conn,
                    runner.pipeline,
                    tables[runner.pipeline.table],
                    runner.checkpoint.snapshot_cursor,
                ):
                    self.telemetry.on_snapshot_rows(runner.pipeline.name, len(items) - 1)
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
        # The columns anything downstream reads: keys and model inputs (the decoder skips the
        # rest), and the heartbeat's time.
        read: dict[str, frozenset[str] | None] = {table: frozenset(keys[table]) for table in tables}
        for runner in runners:
            table = runner.pipeline.table
            read[table] = frozenset(read[table] or ()) | set(runner.pipeline.input_columns)
        read[HEARTBEAT_TABLE] = frozenset({"instance", "beat_at"})
        handover = Handover(self.spec.source.queue_max_rows)
        self._source = BinlogSource(
            self.spec.source,
            CaptureSpec(keys, read),
            start,
            handover,
            on_disconnect=self._on_disconnect,
            on_connect=self._on_connect,
            on_rows=self.telemetry.on_rows_read,
        )
        if self._stop.is_set():
            return
        by_table = {r.pipeline.table: r for r in runners}
        self.telemetry.source.queue_depth = handover.qsize
        self.telemetry.source.streaming = True
        log.info("streaming", start=str(start))
        reader = asyncio.create_task(self._source.run(), name="binlog-reader")
        try:
            while True:
                get = asyncio.ensure_future(handover.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    await reader  # raises what stopped the reader, or returns when stopped
                    while not handover.empty():  # what was read before the stop is applied
                        for items in handover.get_nowait():
                            await self._route(items, runners, by_table)
                    return
                for items in get.result():
                    await self._route(items, runners, by_table)
        finally:
            self.telemetry.source.streaming = False
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
        table = getattr(first, "table", "")
        target = by_table.get(table)
        if target is not None:
            await target.inbox.put(items)
        elif table == HEARTBEAT_TABLE:
            last = items[-1]
            if isinstance(last, RowChange) and last.values.get("beat_at") is not None:
                self.telemetry.on_heartbeat(last.values["beat_at"])

    def _on_disconnect(self) -> None:
        self.telemetry.on_disconnect()
        self.telemetry.source.connected = False

    def _on_connect(self) -> None:
        self.telemetry.source.connected = True

    async def _heartbeat(self) -> None:
        """Keep positions moving on quiet tables: a tiny transaction every few seconds."""
        sql = (
            f"INSERT INTO {quote(HEARTBEAT_TABLE)} (instance, beat_at) VALUES (%s, NOW(6)) "
            "ON DUPLICATE KEY UPDATE beat_at = VALUES(beat_at)"
        )
        # One row per pipeline set (not per process): restarts do not grow the table.
        instance = ",".join(sorted(p.name for p in self.spec.pipelines))[:64]
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
