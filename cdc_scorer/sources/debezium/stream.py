"""One pipeline's change stream from Debezium's topic of its table, as a member of the
pipeline's consumer group (``<group_id>.<pipeline>``: each pipeline reads the topic on its
own, so its offsets are its own and a batch moves only them).

Each poll's messages become row changes (``r`` snapshot reads are scored like creates; a
truncate empties the predictions; tombstones only move the offset), then a ``Commit`` whose
position is every owned partition's next offset: the pipeline's batch that covers it moves
those offsets in the database (``stores/offsets.py``). Before a revoked partition is given
up, the stream waits until the offsets of what it read of it are committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import replace

import structlog

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Commit, Op, RowChange, SourceItem, TableTruncated
from cdc_scorer.sources.debezium.envelope import Change, EnvelopeDecoder, EnvelopeError
from cdc_scorer.sources.debezium.group import GroupMember, Partition
from cdc_scorer.sources.debezium.positions import KafkaMessage, KafkaPosition
from cdc_scorer.sources.debezium.spec import DebeziumSpec

log = structlog.get_logger("cdc_scorer.sources.debezium")

# (newly assigned partitions, their first offsets) → the stored next offsets (a thread).
LoadOffsets = Callable[[list[Partition], dict[Partition, int]], Awaitable[dict[Partition, int]]]


LAG_EVERY_S = 0.5  # the partition lag's measuring interval (a scrape is every 15 s or so)


class KafkaChangeStream:
    """A ``ChangeStream`` of one pipeline's table topic."""

    def __init__(
        self,
        spec: DebeziumSpec,
        *,
        pipeline: str,
        topic: str,
        identity: str,
        client_id: str,
        decoder: EnvelopeDecoder,
        load_offsets: LoadOffsets,
        committed_offset: Callable[[Partition], int | None],
        forget: Callable[[list[Partition]], None],
        poison: Callable[[Partition, int], None],
        on_lag: Callable[[int, float, int], None] | None = None,
        on_rows: Callable[[str, str, int], None] | None = None,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self._on_rows = on_rows  # (table, operation, rows) per poll: the rows-read counter
        self._on_lag = on_lag  # (messages behind, seconds not caught up, partitions)
        self._caught_up_at = time.monotonic()
        self._lag_at = 0.0  # when the lag was last measured
        self._spec = spec
        self._pipeline = pipeline
        self._topic = topic
        self._identity = identity
        self._client_id = client_id
        self._decoder = decoder
        self._load_offsets = load_offsets
        self._committed_offset = committed_offset
        self._forget = forget
        self._poison = poison
        self._drain_timeout_s = drain_timeout_s
        self._next: dict[Partition, int] = {}
        self._told: dict[Partition, int] = {}  # offsets committed to the group
        self._member: GroupMember | None = None
        self._stopped = False

    def acknowledge(self, position: Position) -> None:
        """The database holds the offsets (the group is told them after each poll)."""

    def stop(self) -> None:
        self._stopped = True

    def queue_depth(self) -> int:
        return 0  # nothing is read ahead of the pipeline: each poll is routed before the next

    def retained_bytes(self) -> int | None:
        return None

    async def changes(self) -> AsyncGenerator[tuple[SourceItem, ...], None]:
        group = f"{self._spec.group_id}.{self._pipeline}"
        spec = replace(self._spec, group_id=group)
        member = GroupMember(
            spec,
            [self._topic],
            client_id=self._client_id,
            on_assign=self._assigned,
            on_revoke=self._revoked,
        )
        async with member:
            self._member = member
            log.info("joined the consumer group", group=group, topic=self._topic)
            while not self._stopped:
                messages = await member.poll(0.5)
                await self._report_lag(member)
                await self._tell_the_group(member.owned)
                if not messages:
                    continue
                rows: list[SourceItem] = []
                committed_at = None
                for message in messages:
                    partition = (message.topic, message.partition)
                    tx = KafkaMessage(message.topic, message.partition, message.offset)
                    item = self._item(tx, message.value)
                    self._next[partition] = message.offset + 1
                    if item is not None:
                        rows.append(item)
                        committed_at = getattr(item, "committed_at", committed_at)
                if rows:
                    self._count(rows)
                    yield tuple(rows)
                position = KafkaPosition.of(self._identity, self._next)
                yield (Commit(position, committed_at),)

    def _count(self, items: list[SourceItem]) -> None:
        if self._on_rows is None:
            return
        counted = Counter(
            (item.table, item.op.value) for item in items if isinstance(item, RowChange)
        )
        for (table, operation), rows in counted.items():
            self._on_rows(table, operation, rows)

    async def _report_lag(self, member: GroupMember) -> None:
        now = time.monotonic()
        # At most every LAG_EVERY_S: a poll returns as soon as messages are there, many a
        # second when busy, and each measure asks librdkafka once per partition.
        if self._on_lag is None or now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        behind = await member.lag(self._committed_offset)
        if behind == 0:
            self._caught_up_at = now
        self._on_lag(behind, now - self._caught_up_at, len(member.owned))

    async def _tell_the_group(self, partitions: Iterable[Partition]) -> None:
        """Commit to the group, asynchronously, the offsets the database holds for
        ``partitions`` (those not told yet): Kafka's lag tools (kafka-consumer-groups.sh,
        Burrow, MSK's consumer-lag metrics) read the group's offsets. Never read back: a member
        starts from the database's."""
        told = {}
        for partition in partitions:
            offset = self._committed_offset(partition)
            if offset is not None and self._told.get(partition) != offset:
                told[partition] = offset
        if told and self._member is not None:
            await self._member.commit_informational(told)
            self._told |= told

    def _item(self, tx: KafkaMessage, value: bytes | None) -> SourceItem | None:
        try:
            change = self._decoder.decode(value)
        except EnvelopeError as exc:
            raise FatalError(
                f"pipeline {self._pipeline}: message {tx.topic}[{tx.partition}] offset "
                f"{tx.offset}: {exc}"
            ) from None
        if not isinstance(change, Change):
            return None  # a tombstone
        if change.op is None:
            return TableTruncated(change.table, tx)
        op = Op.INSERT if change.op is Op.SNAPSHOT else change.op
        return RowChange(
            op,
            change.table,
            change.key,
            change.values,
            tx,
            change.committed_at,
            before=change.before if op is Op.UPDATE else None,
        )

    async def _assigned(
        self, partitions: list[Partition], start: Mapping[Partition, int]
    ) -> Mapping[Partition, int]:
        offsets = await self._load_offsets(partitions, dict(start))
        self._next |= offsets
        log.info(
            "partitions assigned",
            pipeline=self._pipeline,
            offsets={f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())},
        )
        return offsets

    async def _revoked(self, partitions: list[Partition], lost: bool) -> None:
        """Before Kafka gives ``partitions`` to another member: what was read of them is
        committed (the pipeline's batches move their offsets). If the wait ends at the drain
        timeout, or the partitions were lost (the session expired), no batch of this member
        commits any more: the next one stops the process with ``PartitionLost``, and it
        rejoins from the database's offsets."""
        deadline = time.monotonic() + (0 if lost else self._drain_timeout_s)
        waiting = [p for p in partitions if p in self._next]
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if (self._committed_offset(p) or 0) < self._next[p]]
            if waiting:
                await asyncio.sleep(0.05)
        for partition in waiting if not lost else partitions:
            self._poison(partition, self._committed_offset(partition) or 0)
        if not lost:  # the group learns where the next owner starts
            await self._tell_the_group(partitions)
        for partition in partitions:
            self._next.pop(partition, None)
            self._told.pop(partition, None)
        self._forget(partitions)
        log.info(
            "partitions revoked",
            pipeline=self._pipeline,
            partitions=[f"{t}[{p}]" for t, p in partitions],
            lost=lost,
            uncommitted=[f"{t}[{p}]" for t, p in waiting],
        )
