"""The admin commands in Kafka mode: ``status`` (each pipeline's partitions, their offsets in
the database and who last committed them, and Debezium's latest reading of the table),
``reposition`` (the group's offsets moved the way ``kafka-consumer-groups.sh --reset-offsets``
moves them, in the database and in the group) and ``rescore`` (Debezium's incremental snapshot
through its signal table)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.feeds import PipelineReport, RescoreOutcome, RescoreTicket, Target
from cdc_scorer.core.records import RescoreJob
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources.debezium.group import _refusal, client_config, topic_watermarks
from cdc_scorer.sources.debezium.rescores import ReadingProgress, reading_progress, request_snapshot
from cdc_scorer.sources.debezium.spec import DebeziumSpec
from cdc_scorer.stores.offsets import OffsetStore

TIMEOUT_S = 10.0

# librdkafka settings of a consumer that an admin client refuses.
_CONSUMER_ONLY = (
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "max.poll.interval.ms",
    "queued.min.messages",
)


def admin_client(kafka: DebeziumSpec, refusals: list[str]) -> AdminClient:
    """An admin client with the members' security; a refused login or TLS is appended to
    ``refusals`` (with its fix) as librdkafka reports it."""

    def on_error(error: KafkaError) -> None:
        refusal = _refusal(kafka, error, "connecting to the brokers")
        if refusal is not None:
            refusals.append(refusal)

    config: dict[str, Any] = {
        **client_config(kafka, "cdc-scorer-admin"),
        "error_cb": on_error,
        "logger": logging.getLogger("cdc_scorer.kafka.client"),
    }
    for key in (*_CONSUMER_ONLY, *kafka.consumer):
        config.pop(key, None)
    return AdminClient(config)


def group_of(kafka: DebeziumSpec, pipeline: PipelineSpec) -> str:
    return f"{kafka.group_id}.{pipeline.name}"


def group_members(admin: AdminClient, group: str) -> tuple[int, str]:
    """The group's active members and its state, as the brokers describe it."""
    (future,) = admin.describe_consumer_groups([group]).values()
    described = future.result(timeout=TIMEOUT_S)
    return len(described.members), getattr(described.state, "name", str(described.state))


# ------------------------------------------------------------------------------------ status
def kafka_status(
    spec: ScorerSpec, kafka: DebeziumSpec, store: OffsetStore, pipelines: Sequence[PipelineSpec]
) -> list[PipelineReport]:
    rows = store.stored_offsets()
    readings = reading_progress(spec, store)
    reports = []
    for pipeline in pipelines:
        group = group_of(kafka, pipeline)
        mine = [r for r in rows if r[0] == pipeline.name]
        lines = [f"{pipeline.name}: {len(mine)} partitions (group {group})"]
        lines += [
            f"  {topic}[{partition}] next offset {offset}, last committed by {owner or '-'}"
            for _, topic, partition, offset, owner in mine
        ]
        reading = readings.get(pipeline.name)
        if reading is not None:
            lines.append(f"  {_reading_line(reading)}")
        fields = {
            "pipeline": pipeline.name,
            "group": group,
            "partitions": [
                {"topic": t, "partition": p, "next_offset": o, "owner": w} for _, t, p, o, w in mine
            ],
            "reading": None if reading is None else _reading_fields(reading),
        }
        reports.append(PipelineReport(pipeline.name, tuple(lines), fields))
    return reports


def _reading_fields(reading: ReadingProgress) -> dict[str, object]:
    request = reading.request
    return {
        "reason": request.reason,
        "model_version": request.model_version,
        "signal": request.signal_id,
        "where": request.where,
        "requested_at": str(request.requested_at),
        "rows": reading.rows,
        "rows_scored_since": reading.scored,
    }


def _reading_line(reading: ReadingProgress) -> str:
    request, rows, scored = reading.request, reading.rows, reading.scored
    what = (
        "Debezium's snapshot"
        if request.reason == "first snapshot"
        else f"re-score ({request.reason}, signal {request.signal_id})"
    )
    where = f" where {request.where}" if request.where else ""
    if rows is None:
        count = f"{scored} rows scored since (the server refuses the condition now)"
    else:
        done = min(scored, rows)
        share = f" ({100 * done / rows:.0f} %)" if rows else ""
        count = f"{done}/{rows} rows scored since{share}"
    return (
        f"{what}{where}, model version {request.model_version or '-'}, asked "
        f"{request.requested_at}: {count}"
    )


# -------------------------------------------------------------------------------- reposition
_KAFKA_WORDS = "--to-earliest, --to-latest, --to-datetime or --to-offset N --partition P"


def kafka_reposition(
    spec: ScorerSpec,
    kafka: DebeziumSpec,
    store: OffsetStore,
    pipeline: PipelineSpec,
    topic: str,
    target: Target,
) -> list[str]:
    """Move the pipeline's offsets: refused while its group has an active member (the brokers
    refuse too), and with nothing stored when refused. The group's committed offsets move
    first (the brokers refuse it for a group with members, atomically), then the database's,
    which members start from; ``--rescore`` then asks Debezium to read the table again."""
    if target.to in ("position", "now"):
        raise FatalError(
            f"reposition in Kafka mode moves the consumer group's offsets: use {_KAFKA_WORDS} "
            "(--gtid, --file, --lsn and --now name positions of a database's own log)"
        )
    if target.rescore and kafka.signal_table is None:
        raise FatalError(
            "--rescore: source.debezium.signal_table is not set — a re-score on Kafka asks "
            "Debezium for an incremental snapshot through the connector's signal table"
        )
    group = group_of(kafka, pipeline)
    refusals: list[str] = []
    admin = admin_client(kafka, refusals)
    try:
        members, state = group_members(admin, group)
    except (KafkaException, TimeoutError) as exc:
        raise FatalError(refusals[0] if refusals else f"describing group {group}: {exc}") from None
    if members:
        raise FatalError(
            f"consumer group {group} has {members} active member{'s' if members != 1 else ''} "
            f"({state}): stop the scorers of pipeline {pipeline.name}, reposition, then start "
            "them again — nothing was changed"
        )
    marks = topic_watermarks(kafka, topic)
    if not marks:
        raise FatalError(f"topic {topic} does not exist — nothing was changed")
    offsets = _targets(kafka, topic, marks, target)
    request = [
        ConsumerGroupTopicPartitions(
            group, [KafkaPartition(topic, p, offset) for p, offset in sorted(offsets.items())]
        )
    ]
    try:
        (future,) = admin.alter_consumer_group_offsets(request).values()
        future.result(timeout=TIMEOUT_S)
    except (KafkaException, TimeoutError) as exc:
        raise FatalError(
            f"the brokers refused to move group {group}'s offsets ({exc}): is a scorer of "
            f"pipeline {pipeline.name} running? — nothing was changed"
        ) from None
    before = {(t, p): o for name, t, p, o, _ in store.stored_offsets() if name == pipeline.name}
    moved = {(topic, p): offset for p, offset in offsets.items()}
    store.set_offsets(pipeline.name, moved, "reposition")
    lines = [
        f"{topic}[{p}]: {before.get((topic, p), '-')} → {offset} (group {group}, "
        f"{pipeline.name}'s offsets in the database)"
        for p, offset in sorted(offsets.items())
    ]
    lines.insert(0, f"pipeline {pipeline.name} repositioned ({_describe(target)}):")
    if target.rescore:
        signal_id, collection = request_snapshot(spec, store, pipeline, None)
        lines.append(
            f"asked Debezium for an incremental snapshot of {collection} (signal {signal_id}): "
            "every row is re-scored"
        )
    return lines


def _describe(target: Target) -> str:
    if target.to == "offset":
        return f"offset {target.value} of partition {target.partition}"
    if target.to == "datetime":
        return f"the first offsets at or after {target.value}"
    return f"to the {target.to} offsets"


def _targets(
    kafka: DebeziumSpec, topic: str, marks: Mapping[int, tuple[int, int]], target: Target
) -> dict[int, int]:
    """Each partition's new next offset (``--to-offset``: only the partition named)."""
    if target.to == "earliest":
        return {p: low for p, (low, _high) in marks.items()}
    if target.to == "latest":
        return {p: high for p, (_low, high) in marks.items()}
    if target.to == "offset":
        if target.partition is None or target.value is None:
            raise FatalError("--to-offset N goes with --partition P")
        if target.partition not in marks:
            raise FatalError(
                f"--partition {target.partition}: topic {topic} has partitions "
                f"{', '.join(map(str, sorted(marks)))} — nothing was changed"
            )
        low, high = marks[target.partition]
        offset = int(target.value)
        if not low <= offset <= high:
            raise FatalError(
                f"--to-offset {offset}: {topic}[{target.partition}] holds offsets {low} to "
                f"{high} (the next to be written) — nothing was changed"
            )
        return {target.partition: offset}
    return _at_time(kafka, topic, marks, _timestamp_ms(target.value or ""))


def _timestamp_ms(text: str) -> int:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise FatalError(
            f"--to-datetime {text!r}: not an ISO date-time (e.g. 2026-12-07T08:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # as kafka-consumer-groups.sh reads a bare one
    return int(when.timestamp() * 1000)


def _at_time(
    kafka: DebeziumSpec, topic: str, marks: Mapping[int, tuple[int, int]], at_ms: int
) -> dict[int, int]:
    """The first offset of each partition whose message is at or after ``at_ms`` (none: the
    partition's end), as ``kafka-consumer-groups.sh --to-datetime`` finds it."""
    from confluent_kafka import Consumer

    config = {**client_config(kafka, "cdc-scorer-reposition"), "group.id": "cdc-scorer-admin"}
    consumer = Consumer(config)
    try:
        found = consumer.offsets_for_times(
            [KafkaPartition(topic, p, at_ms) for p in sorted(marks)], timeout=TIMEOUT_S
        )
    except KafkaException as exc:
        raise FatalError(f"finding the offsets of {topic} at {at_ms} ms: {exc}") from None
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}


# ---------------------------------------------------------------------------------- rescores
class KafkaRescores:
    """``Source.rescores`` in Kafka mode: Debezium's incremental snapshot, asked through its
    signal table; its progress is shown by ``status`` (Debezium reads the table, not us)."""

    def __init__(self, spec: ScorerSpec, store: OffsetStore) -> None:
        self._spec = spec
        self._store = store

    def request(self, pipeline: PipelineSpec, where: str | None) -> RescoreTicket:
        signal_id, collection = request_snapshot(self._spec, self._store, pipeline, where)
        said = (
            f"asked Debezium for an incremental snapshot of {collection} (signal {signal_id}"
            f"{f', where {where}' if where else ''}): its rows arrive as op r and are scored "
            f"with model version {pipeline.model_version}; `cdc-scorer status` shows how far "
            "it has got"
        )
        return RescoreTicket(signal_id, None, said, followable=False)

    def follow(
        self,
        pipeline: PipelineSpec,
        ticket: RescoreTicket,
        *,
        out: TextIO,
        timeout_s: float | None,
    ) -> RescoreOutcome:
        return RescoreOutcome(None)  # not followable: `status` shows the reading

    def cancel(self, pipeline: PipelineSpec, job_id: str, *, timeout_s: float) -> RescoreJob:
        raise FatalError(
            "--cancel: in Kafka mode the re-score is Debezium's incremental snapshot: stop it "
            "with Debezium's stop-snapshot signal"
        )
