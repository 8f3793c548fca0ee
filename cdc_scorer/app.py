"""Wiring: the ops server; the source, the store and the model services from their
registries; leadership, checkpoints, then the pipelines, the coordinator that feeds them, and
the heartbeat.

Shutdown is "stop intake → drain until a deadline → cancel": the reader stops, every batcher
flushes, in-flight model calls finish and commit in order, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from cdc_scorer.core.checkpoints import prepare_checkpoints, stream_start
from cdc_scorer.core.coordinator import Coordinator
from cdc_scorer.core.errors import CdcScorerError, FatalError
from cdc_scorer.core.leadership import lead
from cdc_scorer.core.own_tables import (
    HEARTBEAT_COLUMNS,
    HEARTBEAT_KEY,
    HEARTBEAT_TABLE,
    SIGNAL_COLUMNS,
    SIGNAL_KEY,
    SIGNAL_TABLE,
)
from cdc_scorer.core.pipeline import Inbox, PipelineRunner
from cdc_scorer.core.positions import Position, oldest_position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.router import Router
from cdc_scorer.core.snapshotter import Snapshotter, plan_rescores
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.ops.http import OpsServer
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.ops.readiness import not_ready
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.sources import Capture, ChangeStream, SourceInfo, StreamHooks
from cdc_scorer.sources.registry import build_source
from cdc_scorer.stores import PipelineSink
from cdc_scorer.stores.registry import build_store

log = structlog.get_logger("cdc_scorer.app")


class ScorerApp:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self.telemetry = Telemetry()
        self.telemetry.source.heartbeat_interval_s = spec.source.heartbeat_interval_s
        self.source = build_source(spec.source, spec.retry)
        self.store = build_store(spec.source, spec.retry)
        self._stop = asyncio.Event()
        self._coordinator: Coordinator | None = None
        self._runners: list[PipelineRunner] = []
        self.ops: OpsServer | None = None

    def request_stop(self) -> None:
        """Stop intake; what was read is flushed, scored and committed."""
        self._stop.set()
        if self._coordinator is not None:
            self._coordinator.stop()

    def not_ready(self) -> list[str]:
        """Why this process should not count as ready (empty: ready)."""
        return not_ready(self.telemetry, self.spec.http.ready_max_lag_s)

    async def run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.spec.http.port:
                    self.ops = OpsServer(self.spec.http, self.telemetry, self.not_ready)
                    await self.ops.start()
                    stack.push_async_callback(self.ops.stop)
                stack.callback(self.store.close)
                await self._run_pipelines()
        except* CdcScorerError as group:
            raise _first(group) from None

    async def _run_pipelines(self) -> None:
        spec = self.spec
        if spec.kafka is not None:
            await self._run_group()
            return
        info, tables = await asyncio.to_thread(self._inspect)
        sinks = {p.name: self._sink(p, tables[p.table], info) for p in spec.pipelines}
        try:
            if not await lead(list(sinks.values()), self._stop):
                return
            self.telemetry.on_leader(True)
            checkpoints = await asyncio.to_thread(self._checkpoints, info, tables)
        except BaseException:
            for sink in sinks.values():
                sink.close()
            raise
        for name, sink in sinks.items():
            sink.expect(checkpoints[name])
        log.info(
            "starting",
            server=info.description,
            server_id=spec.source.server_id,
            pipelines=[p.name for p in spec.pipelines],
            positions={n: str(c.position) for n, c in checkpoints.items()},
        )
        async with contextlib.AsyncExitStack() as stack:
            # One client per AWS service, its connection pool sized for every call in flight.
            clients: dict[str, Any] = {}
            pool = sum(p.batching.max_in_flight for p in spec.pipelines)
            for client_name in sorted({p.model.client_name for p in spec.pipelines}):
                clients[client_name] = await stack.enter_async_context(
                    create_client_context(client_name, spec.aws, pool)
                )
            runners = [
                self._runner(p, tables[p.table], checkpoints[p.name], clients, sinks[p.name])
                for p in spec.pipelines
            ]
            self._runners = runners
            inboxes: dict[str, list[Inbox]] = {}
            for runner in runners:
                inboxes.setdefault(runner.pipeline.table, []).append(runner.inbox)
            router = Router(
                inboxes,
                heartbeat_table=HEARTBEAT_TABLE,
                on_heartbeat=self.telemetry.on_heartbeat,
                pipelines={r.pipeline.name: r.inbox for r in runners},
            )
            self._coordinator = Coordinator(
                router, lambda: self._stream(tables, list(checkpoints.values())), self.telemetry
            )
            if self._stop.is_set():
                self._coordinator.stop()
            # One row per pipeline set (not per process): restarts do not grow the table.
            instance = ",".join(sorted(p.name for p in spec.pipelines))
            async with asyncio.TaskGroup() as group:
                for runner in runners:
                    group.create_task(runner.run(), name=f"pipeline-{runner.pipeline.name}")
                group.create_task(self._coordinator.run(), name="coordinator")
                heartbeat = group.create_task(
                    self.store.heartbeat(instance).run(), name="heartbeat"
                )
                await self._stop.wait()
                # The coordinator ends the runners once intake stops; the heartbeat just stops.
                heartbeat.cancel()
            # Drained: the source may let go of everything every pipeline committed.
            final = self._committed()
            if final is not None:
                try:
                    await asyncio.to_thread(self.source.release, final)
                except CdcScorerError as exc:  # the next start confirms it instead
                    log.warning("could not release the change log", error=str(exc))
        self.telemetry.on_leader(False)
        log.info(
            "stopped",
            rows_scored=dict(self.telemetry.rows_scored),
            dead_letters=dict(self.telemetry.dead_letters),
            model_calls=dict(self.telemetry.model_calls),
        )

    async def _run_group(self) -> None:
        """Kafka mode: Debezium's topics through consumer groups (``group_app.py``)."""
        from cdc_scorer.group_app import run_group

        def inspect() -> dict[str, TableInfo]:
            tables = self.store.inspect_tables(self.spec.pipelines)
            self.store.check_schema(self.spec.pipelines)
            return tables

        tables = await asyncio.to_thread(inspect)
        log.info("starting on Kafka", pipelines=[p.name for p in self.spec.pipelines])
        await run_group(self.spec, self.store, self.telemetry, self._stop, tables)
        log.info("stopped", rows_scored=dict(self.telemetry.rows_scored))

    def _inspect(self) -> tuple[SourceInfo, dict[str, TableInfo]]:
        pipelines = self.spec.pipelines
        info = self.source.preflight()
        tables = self.store.inspect_tables(pipelines)
        refused = self.source.refusals(pipelines, tables)  # what init would refuse too
        if refused:
            raise FatalError("; ".join(refused))
        self.store.check_schema(pipelines)
        # What init would have made (after the source's refusals: nothing when it refuses).
        for statement in self.source.prepare(pipelines, tables):
            log.info("made on the server", statement=statement)
        found = [c for c in self.source.table_checks(pipelines, tables) if c.problem]
        fatal = [f"{c.name}: {c.problem}" for c in found if c.fatal]
        if fatal:
            raise FatalError("; ".join(fatal))
        for check in found:
            log.warning("rows may become dead letters", check=check.name, problem=check.problem)
        return info, tables

    def _checkpoints(self, info: SourceInfo, tables: dict[str, TableInfo]) -> dict[str, Checkpoint]:
        store, pipelines = self.store, self.spec.pipelines
        checkpoints = prepare_checkpoints(
            store, self.source, info.identity, pipelines, self.spec.source.on_lost_position
        )

        def save(name: str, checkpoint: Checkpoint) -> None:
            store.save_checkpoint(name, checkpoint, info.identity)

        return plan_rescores(store, pipelines, checkpoints, tables, save)

    def _sink(self, pipeline: PipelineSpec, table: TableInfo, info: SourceInfo) -> PipelineSink:
        return self.store.sink(
            pipeline,
            table.key_columns,
            info.identity,
            self.source.decode_position,
            on_retry=self.telemetry.on_retry,
        )

    def _runner(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        clients: dict[str, Any],
        sink: PipelineSink,
    ) -> PipelineRunner:
        exchange = ChunkExchange()
        snapshotter = Snapshotter(
            self.store.chunks(pipeline, table),
            pipeline,
            table,
            exchange,
            self.spec.retry,
            on_chunk_read=lambda rows: self.telemetry.on_snapshot_rows(pipeline.name, rows),
            on_retry=self.telemetry.on_retry,
        )
        budget = pipeline.model.budget()
        scorer = build_scorer(
            pipeline,
            clients[pipeline.model.client_name],
            self.spec.retry,
            on_retry=self.telemetry.on_retry,
            on_call=self.telemetry.model_call_observer(pipeline.service),
            budget=budget,
        )
        runner = PipelineRunner(
            pipeline,
            table.key_columns,
            checkpoint,
            scorer,
            sink,
            self.telemetry,
            exchange=exchange,
            snapshotter=snapshotter,
            on_committed=self._acknowledge,
        )
        if budget is not None:
            self.telemetry.pipelines[pipeline.name].spending = budget.spending
        return runner

    def _committed(self) -> Position | None:
        """The oldest position every pipeline has durably applied (None: not known yet)."""
        positions = [r.checkpoint.position for r in self._runners]
        known = [p for p in positions if p is not None]
        return oldest_position(known) if known and len(known) == len(positions) else None

    def _acknowledge(self) -> None:
        """A pipeline committed: the source learns the oldest position all have applied."""
        committed = self._committed()
        if self._coordinator is not None and committed is not None:
            self._coordinator.acknowledge(committed)

    def _stream(self, tables: dict[str, TableInfo], checkpoints: list[Checkpoint]) -> ChangeStream:
        # The columns anything downstream reads: keys and model inputs (a source may leave the
        # rest undecoded), the heartbeat's time and the signal rows.
        keys = {table: info.key_columns for table, info in tables.items()}
        read: dict[str, frozenset[str] | None] = {t: frozenset(k) for t, k in keys.items()}
        for pipeline in self.spec.pipelines:
            read[pipeline.table] = frozenset(read[pipeline.table] or ()) | set(
                pipeline.input_columns
            )
        keys |= {HEARTBEAT_TABLE: HEARTBEAT_KEY, SIGNAL_TABLE: SIGNAL_KEY}
        read |= {HEARTBEAT_TABLE: HEARTBEAT_COLUMNS, SIGNAL_TABLE: SIGNAL_COLUMNS}
        start = stream_start(checkpoints)
        log.info("streaming", start=str(start))
        hooks = StreamHooks(
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_rows=self.telemetry.on_rows_read,
        )
        shapes = {table: info.column_types for table, info in tables.items()}
        stream = self.source.open(start, Capture(keys, read, shapes), hooks)
        self.telemetry.source.queue_depth = stream.queue_depth
        self.telemetry.source.retained_bytes = stream.retained_bytes
        return stream

    def _on_disconnect(self) -> None:
        self.telemetry.on_disconnect()
        self.telemetry.source.connected = False

    def _on_connect(self) -> None:
        self.telemetry.source.connected = True


def _first(group: BaseExceptionGroup[CdcScorerError]) -> CdcScorerError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, FatalError):
            return exc
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
