"""One pipeline's feed from Debezium's topic of its table: the process is a member of the
pipeline's consumer group (``<group_id>.<pipeline>``). Its checkpoint step moves the batch's
partitions' offsets by compare-and-set (``stores/offsets.py``; no leader lock: the group
decides who reads what); its re-scorer is Debezium's own incremental snapshot, asked through
the connector's signal table, whose rows arrive in the topic like any change."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.pipeline import ChunkReader
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources import ChangeStream
from cdc_scorer.sources.debezium.envelope import CapturedTable, EnvelopeDecoder
from cdc_scorer.sources.debezium.group import Partition, topic_watermarks
from cdc_scorer.sources.debezium.positions import decode_offsets
from cdc_scorer.sources.debezium.signals import (
    data_collection,
    incremental_snapshot,
    namespace,
)
from cdc_scorer.sources.debezium.spec import DebeziumSpec, debezium_spec
from cdc_scorer.sources.debezium.stream import KafkaChangeStream
from cdc_scorer.stores import PipelineSink
from cdc_scorer.stores.offsets import (
    OffsetLedger,
    OffsetStore,
    SignalNeeded,
)

log = structlog.get_logger("cdc_scorer.sources.debezium")


def member_name() -> str:
    """This process in the group and in the offsets rows: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class DebeziumFeed:
    """One pipeline's table topic, read as a member of the pipeline's consumer group."""

    def __init__(
        self,
        spec: ScorerSpec,
        pipeline: PipelineSpec,
        topic: str,
        table: TableInfo,
        store: OffsetStore,
        telemetry: Observer,
    ) -> None:
        if not table.key_columns:
            raise FatalError(f"pipeline {pipeline.name}: table {pipeline.table} has no key")
        self.pipelines: tuple[PipelineSpec, ...] = (pipeline,)
        self._spec = spec
        self._kafka: DebeziumSpec = debezium_spec(spec.source)
        self._pipeline = pipeline
        self._topic = topic
        self._table = table
        self._store = store
        self._telemetry = telemetry
        self._identity = f"kafka:{self._kafka.group_id}"
        self._owner = member_name()
        self._ledger = OffsetLedger(store.offsets_sql(), pipeline.name, self._owner)
        self._sink: PipelineSink | None = None
        # Debezium snapshots the table: the scorer's own snapshot is not run.
        self.checkpoints: dict[str, Checkpoint] = {
            pipeline.name: Checkpoint(position=None, snapshot_state="skipped")
        }

    async def start(self, stopping: asyncio.Event) -> bool:
        """A model version not seen before asks Debezium to re-read the table (once across
        the group); then the pipeline's sink, which moves offsets instead of a checkpoint."""
        await asyncio.to_thread(self._rescore_on_model_change)
        pipeline = self._pipeline
        self._sink = self._store.sink(
            pipeline,
            self._table.key_columns,
            self._identity,
            decode_offsets,
            on_retry=self._telemetry.on_retry,
            step=self._ledger,
        )
        self._sink.try_lead(0)  # no lock with offsets: the group decides who reads what
        log.info("pipeline on Kafka", pipeline=pipeline.name, topic=self._topic)
        return True

    def sink(self, pipeline: PipelineSpec) -> PipelineSink:
        assert self._sink is not None, "start the feed first"
        return self._sink

    def rescorer(
        self,
        pipeline: PipelineSpec,
        exchange: ChunkExchange,
        stream_quiet: Callable[[], bool],
        batch: BatchService | None = None,
    ) -> ChunkReader | None:
        return None  # Debezium re-reads the table: its rows arrive in the topic

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return []

    def open(self) -> ChangeStream:
        source, pipeline, table = self._spec.source, self._pipeline, self._table
        where = namespace(source.engine, source.database, source.schema)
        read = frozenset({*table.key_columns, *pipeline.input_columns})
        captured = CapturedTable(pipeline.table, table.column_types, table.key_columns, read)
        decoder = EnvelopeDecoder(
            source.engine,
            where,
            {pipeline.table: captured},
            decimal_strings=self._kafka.decimal_handling_mode == "string",
        )
        ledger, store, name = self._ledger, self._store, pipeline.name

        async def load(partitions: list[Partition], start: dict[Partition, int]) -> Any:
            return await asyncio.to_thread(store.load_offsets, ledger, partitions, start)

        return KafkaChangeStream(
            self._kafka,
            pipeline=name,
            topic=self._topic,
            identity=self._identity,
            client_id=f"{self._owner}-{name}",
            decoder=decoder,
            load_offsets=load,
            committed_offset=ledger.committed_offset,
            forget=ledger.forget,
            poison=ledger.poison,
            on_lag=lambda messages, seconds, owned: self._telemetry.on_partition_lag(
                name, messages, seconds, owned
            ),
            on_rows=self._telemetry.on_rows_read,
        )

    async def finish(self, committed: Position | None) -> None:
        self._telemetry.on_partition_lag(self._pipeline.name, 0, 0.0, 0)  # owns none now

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()

    def _rescore_on_model_change(self) -> None:
        """Debezium re-reads the table (an incremental snapshot) for a model version not seen
        before after another one ran, and for a new pipeline when there is a signal table —
        once: the member whose claim made the version's row asks. A new pipeline without one
        reads its topic from the beginning, which must then still be there."""
        source, kafka, store, pipeline = self._spec.source, self._kafka, self._store, self._pipeline
        collection = data_collection(source.engine, source.database, source.schema, pipeline.table)
        signal_id, kind, data = incremental_snapshot(collection)
        version = pipeline.model_version or ""
        topic = self._topic
        signal = None
        if kafka.signal_table is not None:
            signal = (store.qualified(kafka.signal_table), signal_id, kind, data)
        start: dict[Any, int] | None = None
        if store.is_new_pipeline(pipeline.name):
            # Where the topic is now, before any signal: the snapshot's rows come after it.
            marks = topic_watermarks(kafka, topic)
            if signal is not None:
                start = {(topic, p): high for p, (_low, high) in marks.items()}
            else:
                trimmed = {p: low for p, (low, _high) in marks.items() if low > 0}
                if trimmed:
                    number, low = min(trimmed.items())
                    raise FatalError(
                        f"pipeline {pipeline.name} is new and topic {topic} no longer holds its "
                        f"beginning (partition {number} starts at offset {low}: retention "
                        "removed the rest): set source.debezium.signal_table, and the scorer asks "
                        "Debezium for an incremental snapshot of the table instead"
                    )

        try:
            requested = store.claim_version(pipeline.name, version, signal, start, self._owner)
        except SignalNeeded:
            raise FatalError(
                f"pipeline {pipeline.name}: model version {version or '(none)'} is new, and "
                "re-scoring on Kafka asks Debezium for an incremental snapshot: set "
                "source.debezium.signal_table to the connector's signal.data.collection table"
            ) from None
        if requested is not None:
            log.info(
                "asked Debezium for an incremental snapshot",
                pipeline=pipeline.name,
                model_version=version,
                signal=requested,
                table=collection,
                reason="new pipeline" if start is not None else "new model version",
            )
