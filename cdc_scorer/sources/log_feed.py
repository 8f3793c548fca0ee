"""The feed of a database's own change log (the binlog; pgoutput): one stream shared by every
pipeline, read from the oldest position any of them still needs. Its checkpoint step is each
pipeline's checkpoint row, written through a sink that holds the pipeline's leader lock; its
re-scorer is the scorer's own DBLog chunks (``core/snapshotter.py``); the heartbeat row keeps
positions moving on a quiet database; at a clean stop the source may let go of what every
pipeline committed (a replication slot is advanced)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from cdc_scorer.core.backfill import Backfill
from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.checkpoints import prepare_checkpoints, stream_start
from cdc_scorer.core.errors import CdcScorerError
from cdc_scorer.core.leadership import lead
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.own_tables import (
    HEARTBEAT_COLUMNS,
    HEARTBEAT_KEY,
    HEARTBEAT_TABLE,
    SIGNAL_COLUMNS,
    SIGNAL_KEY,
    SIGNAL_TABLE,
)
from cdc_scorer.core.pipeline import ChunkReader
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.snapshotter import Snapshotter, plan_rescores
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.sources import Capture, ChangeStream, Source, SourceInfo, StreamHooks
from cdc_scorer.sources.log_spec import LogFeedSpec
from cdc_scorer.stores import DaemonStore, PipelineSink

log = structlog.get_logger("cdc_scorer.sources.log_feed")


class LogFeed:
    """Every pipeline of a process on one reader of the database's change log."""

    def __init__(
        self,
        source: Source,
        spec: SourceSpec,
        log_spec: LogFeedSpec,
        retry: RetrySpec,
        pipelines: Sequence[PipelineSpec],
        tables: Mapping[str, TableInfo],
        store: DaemonStore,
        telemetry: Observer,
    ) -> None:
        self.pipelines = tuple(pipelines)
        self._source = source
        self._spec = spec
        self._log = log_spec
        self._retry = retry
        self._tables = tables
        self._store = store
        self._telemetry = telemetry
        self._info: SourceInfo | None = None
        self._sinks: dict[str, PipelineSink] = {}
        self.checkpoints: dict[str, Checkpoint] = {}

    # ---------------------------------------------------------------- before the pipelines run
    async def start(self, stopping: asyncio.Event) -> bool:
        """Each pipeline's leader lock (a standby waits here), then its checkpoint: the stored
        one checked resumable (or re-scored from now), the re-scores it needs; False if
        ``stopping`` came first."""
        self._info = info = await asyncio.to_thread(self._source.preflight)
        self._sinks = {
            p.name: self._store.sink(
                p,
                self._tables[p.table].key_columns,
                info.identity,
                self._source.decode_position,
                on_retry=self._telemetry.on_retry,
            )
            for p in self.pipelines
        }
        try:
            if not await lead(list(self._sinks.values()), stopping):
                self.close()
                return False
            self._telemetry.on_leader(True)
            self.checkpoints = await asyncio.to_thread(self._checkpoints, info)
        except BaseException:
            self.close()
            raise
        for name, sink in self._sinks.items():
            sink.expect(self.checkpoints[name])
        log.info(
            "starting",
            server=info.description,
            pipelines=[p.name for p in self.pipelines],
            positions={n: str(c.position) for n, c in self.checkpoints.items()},
        )
        return True

    def _checkpoints(self, info: SourceInfo) -> dict[str, Checkpoint]:
        store, pipelines = self._store, self.pipelines
        checkpoints = prepare_checkpoints(
            store, self._source, info.identity, pipelines, self._log.rescores_lost_position
        )

        def save(name: str, checkpoint: Checkpoint) -> None:
            store.save_checkpoint(name, checkpoint, info.identity)

        return plan_rescores(store, pipelines, checkpoints, dict(self._tables), save)

    def close(self) -> None:
        """Before the pipelines took their sinks over: let the locks go."""
        for sink in self._sinks.values():
            sink.close()

    # ---------------------------------------------------------------- each pipeline's parts
    def sink(self, pipeline: PipelineSpec) -> PipelineSink:
        return self._sinks[pipeline.name]

    def rescorer(
        self,
        pipeline: PipelineSpec,
        exchange: ChunkExchange,
        stream_quiet: Callable[[], bool],
        batch: BatchService | None = None,
    ) -> ChunkReader | None:
        name, table = pipeline.name, self._tables[pipeline.table]
        chunks = self._store.chunks(pipeline, table)
        backfill = None
        if batch is not None:
            backfill = Backfill(batch, pipeline, table, chunks, on_job=self._telemetry.on_batch_job)
        return Snapshotter(
            chunks,
            pipeline,
            table,
            exchange,
            self._retry,
            on_chunk_read=lambda rows: self._telemetry.on_snapshot_rows(name, rows),
            on_retry=self._telemetry.on_retry,
            stream_quiet=stream_quiet,
            backfill=backfill,
        )

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Beside the pipelines until the stop: the heartbeat row (one per pipeline set, not
        per process: restarts do not grow the table)."""
        instance = ",".join(sorted(p.name for p in self.pipelines))
        return [
            ("heartbeat", self._store.heartbeat(instance, self._log.heartbeat_interval_s).run())
        ]

    # ---------------------------------------------------------------- the stream
    def open(self) -> ChangeStream:
        # The columns anything downstream reads: keys and model inputs (a source may leave the
        # rest undecoded), the heartbeat's time and the signal rows.
        keys = {table: info.key_columns for table, info in self._tables.items()}
        read: dict[str, frozenset[str] | None] = {t: frozenset(k) for t, k in keys.items()}
        for pipeline in self.pipelines:
            read[pipeline.table] = frozenset(read[pipeline.table] or ()) | set(
                pipeline.input_columns
            )
        keys |= {HEARTBEAT_TABLE: HEARTBEAT_KEY, SIGNAL_TABLE: SIGNAL_KEY}
        read |= {HEARTBEAT_TABLE: HEARTBEAT_COLUMNS, SIGNAL_TABLE: SIGNAL_COLUMNS}
        start = stream_start(list(self.checkpoints.values()))
        log.info("streaming", start=str(start))
        telemetry = self._telemetry
        hooks = StreamHooks(
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_rows=telemetry.on_rows_read,
        )
        shapes = {table: info.column_types for table, info in self._tables.items()}
        stream = self._source.open(start, Capture(keys, read, shapes), hooks)
        telemetry.source.queue_depth = stream.queue_depth
        telemetry.source.retained_bytes = stream.retained_bytes
        return stream

    def _on_disconnect(self) -> None:
        self._telemetry.on_disconnect()
        self._telemetry.source.connected = False

    def _on_connect(self) -> None:
        self._telemetry.source.connected = True

    async def finish(self, committed: Position | None) -> None:
        """Drained: the source may let go of everything every pipeline committed."""
        self._telemetry.on_leader(False)
        if committed is None:
            return
        try:
            await asyncio.to_thread(self._source.release, committed)
        except CdcScorerError as exc:  # the next start confirms it instead
            log.warning("could not release the change log", error=str(exc))
