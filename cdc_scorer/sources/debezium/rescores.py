"""Re-scores in Kafka mode, as the commands ask for them and show them: the signal row asking
Debezium for an incremental snapshot of a pipeline's table (`cdc-scorer rescore`), and how far
Debezium's latest reading of it has got (`status`)."""

from __future__ import annotations

from dataclasses import dataclass

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources.debezium.signals import data_collection, incremental_snapshot
from cdc_scorer.sources.debezium.spec import debezium_spec
from cdc_scorer.stores.offsets import (
    OffsetStore,
    RescoreRequest,
)


def request_snapshot(
    spec: ScorerSpec, store: OffsetStore, pipeline: PipelineSpec, where: str | None
) -> tuple[str, str]:
    """`cdc-scorer rescore` in Kafka mode: the signal row asking Debezium for an incremental
    snapshot of the pipeline's table (of the rows matching ``where``); its id and the table."""
    kafka, source = debezium_spec(spec.source), spec.source
    if kafka.signal_table is None:
        raise FatalError(
            "source.debezium.signal_table: not set — a re-score on Kafka asks Debezium for an "
            "incremental snapshot through the connector's signal table (its signal.data.collection)"
        )
    collection = data_collection(source.engine, source.database, source.schema, pipeline.table)
    signal_id, kind, data = incremental_snapshot(collection, where)
    signal = (store.qualified(kafka.signal_table), signal_id, kind, data)
    if where is not None:
        # Refused here with the server's own words, not later inside Debezium's task.
        try:
            store.count_rows(pipeline.table, where)
        except FatalError as exc:
            raise FatalError(f"--where {where!r} is refused by the server: {exc}") from exc
    store.record_request(pipeline.name, pipeline.model_version or "", signal, where)
    return signal_id, collection


@dataclass(frozen=True)
class ReadingProgress:
    """How far Debezium's latest reading of a pipeline's table has got, as the database
    shows it: of the rows it covers now, those whose prediction was committed since it was
    asked for (the stream's updates of those rows count too: they carry the same model)."""

    request: RescoreRequest
    rows: int | None  # None: the server refuses the request's condition now
    scored: int


def reading_progress(spec: ScorerSpec, store: OffsetStore) -> dict[str, ReadingProgress]:
    """Per pipeline, its latest reading (`status` in Kafka mode)."""
    tables = store.inspect_tables(list(spec.pipelines))
    found: dict[str, ReadingProgress] = {}
    for pipeline in spec.pipelines:
        request = store.latest_request(pipeline.name)
        if request is None:
            continue
        where = request.where
        rows: int | None
        try:
            rows = store.count_rows(pipeline.table, where)
        except FatalError:
            rows, where = None, None
        keys = tables[pipeline.table].key_columns
        scored = store.count_scored_since(pipeline, keys, where, request.requested_at)
        found[pipeline.name] = ReadingProgress(request, rows, scored)
    return found
