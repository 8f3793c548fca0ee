"""Wiring of the Kafka mode (``[kafka]``): each pipeline a member of its own consumer group on
its table's Debezium topic, its batches committed with their partitions' offsets by
compare-and-set — no leader lock: the group decides who reads what.

The pipelines are the log mode's (``PipelineRunner``: batcher, scoring, ordered commits);
what differs is the feed (``sources/debezium/stream.py``) and the sink's checkpoint step
(``stores/offsets.py``). Snapshots are Debezium's (``op: r`` messages), not the scorer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from dataclasses import dataclass
from typing import Any

import structlog

from cdc_scorer.core.coordinator import Coordinator
from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.own_tables import HEARTBEAT_TABLE
from cdc_scorer.core.pipeline import PipelineRunner
from cdc_scorer.core.positions import decode_position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.router import Router
from cdc_scorer.core.spec import KafkaSpec, PipelineSpec, ScorerSpec
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.sources.debezium.envelope import CapturedTable, EnvelopeDecoder
from cdc_scorer.sources.debezium.group import topic_watermarks
from cdc_scorer.sources.debezium.positions import KafkaPosition
from cdc_scorer.sources.debezium.signals import data_collection, incremental_snapshot
from cdc_scorer.sources.debezium.source import topic_of
from cdc_scorer.sources.debezium.stream import KafkaChangeStream
from cdc_scorer.stores import Store
from cdc_scorer.stores.offsets import (
    OffsetLedger,
    RescoreRequest,
    SignalNeeded,
    count_rows,
    count_scored_since,
    is_new,
    latest_request,
    record_request,
    request_rescore,
)
from cdc_scorer.stores.registry import build_store

log = structlog.get_logger("cdc_scorer.group_app")


def member_name() -> str:
    """This process in the group and in the offsets rows: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_group(
    spec: ScorerSpec,
    store: Store,
    telemetry: Telemetry,
    stop: asyncio.Event,
    tables: dict[str, TableInfo],
) -> None:
    """Every pipeline until ``stop`` (then each drains: its member leaves the group after its
    read messages are committed)."""
    kafka = spec.kafka
    assert kafka is not None
    identity = f"kafka:{kafka.group_id}"
    owner = member_name()
    for pipeline in spec.pipelines:
        await asyncio.to_thread(_rescore_on_model_change, spec, kafka, store, pipeline, owner)
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, Any] = {}
        pool = sum(p.batching.max_in_flight for p in spec.pipelines)
        for client_name in sorted({p.model.client_name for p in spec.pipelines}):
            clients[client_name] = await stack.enter_async_context(
                create_client_context(client_name, spec.aws, pool)
            )
        coordinators: list[Coordinator] = []
        async with asyncio.TaskGroup() as group:
            for pipeline in spec.pipelines:
                runner, coordinator = _pipeline(
                    spec,
                    kafka,
                    store,
                    telemetry,
                    pipeline,
                    tables[pipeline.table],
                    clients,
                    identity,
                    owner,
                )
                coordinators.append(coordinator)
                group.create_task(runner.run(), name=f"pipeline-{pipeline.name}")
                group.create_task(coordinator.run(), name=f"members-{pipeline.name}")
            telemetry.on_leader(True)
            await stop.wait()
            for coordinator in coordinators:
                coordinator.stop()
    telemetry.on_leader(False)


def _rescore_on_model_change(
    spec: ScorerSpec, kafka: KafkaSpec, store: Store, pipeline: PipelineSpec, owner: str
) -> None:
    """Debezium re-reads the table (an incremental snapshot) for a model version not seen
    before after another one ran, and for a new pipeline when there is a signal table —
    once: the member whose claim made the version's row asks. A new pipeline without one
    reads its topic from the beginning, which must then still be there."""
    source = spec.source
    collection = data_collection(source.engine, source.database, source.schema, pipeline.table)
    signal_id, kind, data = incremental_snapshot(collection)
    sql = store.offsets_sql()
    version = pipeline.model_version or ""
    topic = topic_of(kafka, source.engine, source.database, source.schema, pipeline.table)
    signal = None
    if kafka.signal_table is not None:
        signal = (store.qualified(kafka.signal_table), signal_id, kind, data)
    start: dict[Any, int] | None = None
    if store.in_transaction("reading the model versions", lambda c: is_new(c, sql, pipeline.name)):
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
                    f"beginning (partition {number} starts at offset {low}: retention removed "
                    "the rest): set kafka.signal_table, and the scorer asks Debezium for an "
                    "incremental snapshot of the table instead"
                )

    def claim(cursor: Any) -> str | None:
        try:
            return request_rescore(
                cursor, sql, pipeline.name, version, signal, start=start, owner=owner
            )
        except SignalNeeded:
            raise FatalError(
                f"pipeline {pipeline.name}: model version {version or '(none)'} is new, and "
                "re-scoring on Kafka asks Debezium for an incremental snapshot: set "
                "kafka.signal_table to the connector's signal.data.collection table"
            ) from None

    requested = store.in_transaction(f"claiming model version {version}", claim)
    if requested is not None:
        log.info(
            "asked Debezium for an incremental snapshot",
            pipeline=pipeline.name,
            model_version=version,
            signal=requested,
            table=collection,
            reason="new pipeline" if start is not None else "new model version",
        )


def request_snapshot(
    spec: ScorerSpec, pipeline: PipelineSpec, where: str | None
) -> tuple[str, str]:
    """`cdc-scorer rescore` in Kafka mode: the signal row asking Debezium for an incremental
    snapshot of the pipeline's table (of the rows matching ``where``); its id and the table."""
    kafka, source = spec.kafka, spec.source
    assert kafka is not None
    if kafka.signal_table is None:
        raise FatalError(
            "kafka.signal_table: not set — a re-score on Kafka asks Debezium for an incremental "
            "snapshot through the connector's signal table (its signal.data.collection)"
        )
    collection = data_collection(source.engine, source.database, source.schema, pipeline.table)
    signal_id, kind, data = incremental_snapshot(collection, where)
    store = build_store(source, spec.retry)
    try:
        signal = (store.qualified(kafka.signal_table), signal_id, kind, data)
        if where is not None:
            # Refused here with the server's own words, not later inside Debezium's task.
            try:
                store.in_transaction(
                    "checking --where",
                    functools.partial(
                        count_rows, table=store.qualified(pipeline.table), where=where
                    ),
                )
            except FatalError as exc:
                raise FatalError(f"--where {where!r} is refused by the server: {exc}") from exc
        store.in_transaction(
            "writing Debezium's signal",
            lambda cursor: record_request(
                cursor,
                store.offsets_sql(),
                pipeline.name,
                pipeline.model_version or "",
                signal,
                where,
            ),
        )
    finally:
        store.close()
    return signal_id, collection


@dataclass(frozen=True)
class ReadingProgress:
    """How far Debezium's latest reading of a pipeline's table has got, as the database
    shows it: of the rows it covers now, those whose prediction was committed since it was
    asked for (the stream's updates of those rows count too: they carry the same model)."""

    request: RescoreRequest
    rows: int | None  # None: the server refuses the request's condition now
    scored: int


def reading_progress(spec: ScorerSpec, store: Store) -> dict[str, ReadingProgress]:
    """Per pipeline, its latest reading (`status` in Kafka mode)."""
    tables = store.inspect_tables(list(spec.pipelines))
    sql = store.offsets_sql()
    found: dict[str, ReadingProgress] = {}
    for pipeline in spec.pipelines:
        request = store.in_transaction(
            "reading the re-score requests",
            functools.partial(latest_request, sql=sql, pipeline=pipeline.name),
        )
        if request is None:
            continue
        keys = ", ".join(_quoted(spec, k) for k in tables[pipeline.table].key_columns)
        table, where = store.qualified(pipeline.table), request.where
        rows: int | None
        try:
            rows = store.in_transaction(
                "counting the rows of a re-score",
                functools.partial(count_rows, table=table, where=where),
            )
        except FatalError:
            rows, where = None, None
        scored = store.in_transaction(
            "counting the rows re-scored",
            functools.partial(
                count_scored_since,
                predictions=store.qualified(pipeline.predictions),
                table=table,
                keys=keys,
                where=where,
                since=request.requested_at,
            ),
        )
        found[pipeline.name] = ReadingProgress(request, rows, scored)
    return found


def _quoted(spec: ScorerSpec, name: str) -> str:
    return f'"{name}"' if spec.source.engine == "postgresql" else f"`{name}`"


def _pipeline(
    spec: ScorerSpec,
    kafka: KafkaSpec,
    store: Store,
    telemetry: Telemetry,
    pipeline: PipelineSpec,
    table: TableInfo,
    clients: dict[str, Any],
    identity: str,
    owner: str,
) -> tuple[PipelineRunner, Coordinator]:
    source = spec.source
    ledger = OffsetLedger(store.offsets_sql(), pipeline.name, owner)

    def decode(server_identity: str, text: str) -> Any:
        return decode_position({"kafka": KafkaPosition}, server_identity, text)

    sink = store.sink(
        pipeline, table.key_columns, identity, decode, on_retry=telemetry.on_retry, offsets=ledger
    )
    sink.try_lead(0)
    scorer = build_scorer(
        pipeline,
        clients[pipeline.model.client_name],
        spec.retry,
        on_retry=telemetry.on_retry,
        on_call=telemetry.model_call_observer(pipeline.service),
        budget=pipeline.model.budget(),
    )
    # Debezium snapshots the table: the scorer's own snapshot is not run.
    checkpoint = Checkpoint(position=None, snapshot_state="skipped")
    runner = PipelineRunner(pipeline, table.key_columns, checkpoint, scorer, sink, telemetry)
    where = source.schema if source.engine == "postgresql" else source.database
    read = frozenset({*table.key_columns, *pipeline.input_columns})
    decoder = EnvelopeDecoder(
        source.engine,
        where,
        {
            pipeline.table: CapturedTable(
                pipeline.table, table.column_types, table.key_columns, read
            )
        },
        decimal_strings=kafka.decimal_handling_mode == "string",
    )
    topic = topic_of(kafka, source.engine, source.database, source.schema, pipeline.table)

    async def load(partitions: list[Any], start: dict[Any, int]) -> dict[Any, int]:
        return await asyncio.to_thread(
            store.in_transaction,
            f"loading the Kafka offsets of {pipeline.name}",
            lambda cursor: ledger.load(cursor, partitions, start),
        )

    def open_stream() -> KafkaChangeStream:
        return KafkaChangeStream(
            kafka,
            pipeline=pipeline.name,
            topic=topic,
            identity=identity,
            client_id=f"{owner}-{pipeline.name}",
            decoder=decoder,
            load_offsets=load,
            committed_offset=ledger.committed_offset,
            forget=ledger.forget,
            poison=ledger.poison,
            on_lag=lambda messages, seconds, owned: telemetry.on_kafka_lag(
                pipeline.name, messages, seconds, owned
            ),
        )

    router = Router(
        {pipeline.table: [runner.inbox]},
        heartbeat_table=HEARTBEAT_TABLE,
        on_heartbeat=telemetry.on_heartbeat,
        pipelines={pipeline.name: runner.inbox},
    )
    log.info("pipeline on Kafka", pipeline=pipeline.name, topic=topic, group=kafka.group_id)
    if not table.key_columns:
        raise FatalError(f"pipeline {pipeline.name}: table {pipeline.table} has no key")
    return runner, Coordinator(router, open_stream, telemetry)
