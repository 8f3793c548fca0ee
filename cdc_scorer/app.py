"""Wiring: the ops server, preflight, leadership, checkpoints, then the pipelines and the
coordinator that feeds them, and the heartbeat.

Shutdown is "stop intake → drain until a deadline → cancel": the reader stops, every batcher
flushes, in-flight model calls finish and commit in order, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from cdc_scorer.core.coordinator import ChangeSource, Coordinator
from cdc_scorer.core.errors import CdcScorerError, FatalError
from cdc_scorer.core.pipeline import Inbox, PipelineRunner
from cdc_scorer.core.records import Checkpoint
from cdc_scorer.core.rescoring import SIGNAL_COLUMNS, SIGNAL_TABLE, ChunkExchange
from cdc_scorer.core.router import Router
from cdc_scorer.core.snapshotter import Snapshotter, plan_rescores
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect
from cdc_scorer.ops.http import OpsServer
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.ops.readiness import not_ready
from cdc_scorer.services import Scorer
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.sources.binlog.reader import BinlogSource, CaptureSpec, Handover
from cdc_scorer.sources.binlog.server import ServerInfo, preflight_binlog
from cdc_scorer.stores.mysql.checkpoints import prepare_checkpoints, save_checkpoint, stream_start
from cdc_scorer.stores.mysql.heartbeat import Heartbeat
from cdc_scorer.stores.mysql.leader import lead, lock_name
from cdc_scorer.stores.mysql.schema import (
    HEARTBEAT_TABLE,
    TableInfo,
    check_schema,
    inspect_tables,
    partial_json_inputs,
)
from cdc_scorer.stores.mysql.sink import Sink

log = structlog.get_logger("cdc_scorer.app")


class ScorerApp:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self.telemetry = Telemetry()
        self.telemetry.source.heartbeat_interval_s = spec.source.heartbeat_interval_s
        self._stop = asyncio.Event()
        self._coordinator: Coordinator | None = None
        self.server: ServerInfo | None = None
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
                await self._run_pipelines()
        except* CdcScorerError as group:
            raise _first(group) from None

    async def _run_pipelines(self) -> None:
        spec = self.spec
        conn = await asyncio.to_thread(connect, spec.source)
        try:
            server, tables = await asyncio.to_thread(self._inspect, conn)
            self.server = server
            sinks = {p.name: self._sink(p, tables[p.table], server) for p in spec.pipelines}
            try:
                if not await lead(list(sinks.values()), self._stop):
                    return
                self.telemetry.on_leader(True)
                checkpoints = await asyncio.to_thread(self._checkpoints, conn, server, tables)
            except BaseException:
                for sink in sinks.values():
                    sink.close()
                raise
        finally:
            close_quietly(conn)
        for name, sink in sinks.items():
            sink.expect(checkpoints[name])
        log.info(
            "starting",
            server=server.version,
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
                self._runner(
                    p, tables[p.table], checkpoints[p.name], clients[p.model.client_name], sinks
                )
                for p in spec.pipelines
            ]
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
                router,
                lambda: self._binlog(tables, list(checkpoints.values()), server),
                self.telemetry,
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
                    Heartbeat(spec.source, HEARTBEAT_TABLE, instance).run(), name="heartbeat"
                )
                await self._stop.wait()
                # The coordinator ends the runners once intake stops; the heartbeat just stops.
                heartbeat.cancel()
        self.telemetry.on_leader(False)
        log.info(
            "stopped",
            rows_scored=dict(self.telemetry.rows_scored),
            dead_letters=dict(self.telemetry.dead_letters),
            model_calls=dict(self.telemetry.model_calls),
        )

    def _checkpoints(
        self, conn: Connection, server: ServerInfo, tables: dict[str, TableInfo]
    ) -> dict[str, Checkpoint]:
        checkpoints = prepare_checkpoints(conn, server, self.spec.pipelines)

        def save(name: str, checkpoint: Checkpoint) -> None:
            save_checkpoint(conn, name, checkpoint, server.identity)

        return plan_rescores(conn, self.spec.pipelines, checkpoints, tables, save)

    def _runner(
        self,
        pipeline: PipelineSpec,
        table: TableInfo,
        checkpoint: Checkpoint,
        client: Any,
        sinks: dict[str, Sink],
    ) -> PipelineRunner:
        exchange = ChunkExchange()
        snapshotter = Snapshotter(
            self.spec.source,
            pipeline,
            table,
            exchange,
            self.spec.retry,
            on_chunk_read=lambda rows: self.telemetry.on_snapshot_rows(pipeline.name, rows),
            on_retry=self.telemetry.on_retry,
        )
        return PipelineRunner(
            pipeline,
            table.key_columns,
            checkpoint,
            self._scorer(pipeline, client),
            sinks[pipeline.name],
            self.telemetry,
            exchange=exchange,
            snapshotter=snapshotter,
        )

    def _inspect(self, conn: Connection) -> tuple[ServerInfo, dict[str, TableInfo]]:
        server = preflight_binlog(conn, self.spec.source.positions)
        tables = inspect_tables(conn, self.spec)
        check_schema(conn, self.spec)
        for problem in partial_json_inputs(server, self.spec, tables):
            log.warning("partial JSON updates", problem=problem)
        return server, tables

    def _sink(self, pipeline: PipelineSpec, table: TableInfo, server: ServerInfo) -> Sink:
        return Sink(
            self.spec.source,
            pipeline,
            table.key_columns,
            pipeline.model.model_endpoint,
            server.identity,
            self.spec.retry,
            on_retry=self.telemetry.on_retry,
            lock=lock_name(self.spec.source.database, pipeline.name),
        )

    def _scorer(self, pipeline: PipelineSpec, client: Any) -> Scorer:
        return build_scorer(
            pipeline,
            client,
            self.spec.retry,
            on_retry=self.telemetry.on_retry,
            on_call=self.telemetry.model_call_observer(pipeline.service),
        )

    def _binlog(
        self, tables: dict[str, TableInfo], checkpoints: list[Checkpoint], server: ServerInfo
    ) -> ChangeSource:
        keys = {table: info.key_columns for table, info in tables.items()}
        keys[HEARTBEAT_TABLE] = ("instance",)
        keys[SIGNAL_TABLE] = ("id",)
        # The columns anything downstream reads: keys and model inputs (the decoder skips the
        # rest), and the heartbeat's time.
        read: dict[str, frozenset[str] | None] = {table: frozenset(keys[table]) for table in tables}
        for pipeline in self.spec.pipelines:
            table = pipeline.table
            read[table] = frozenset(read[table] or ()) | set(pipeline.input_columns)
        read[HEARTBEAT_TABLE] = frozenset({"instance", "beat_at"})
        read[SIGNAL_TABLE] = SIGNAL_COLUMNS
        handover = Handover(self.spec.source.queue_max_rows)
        self.telemetry.source.queue_depth = handover.qsize
        start = stream_start(checkpoints)
        log.info("streaming", start=str(start))
        return BinlogSource(
            self.spec.source,
            CaptureSpec(keys, read),
            start,
            handover,
            retry=self.spec.retry,
            on_disconnect=self._on_disconnect,
            on_connect=self._on_connect,
            on_rows=self.telemetry.on_rows_read,
        )

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
