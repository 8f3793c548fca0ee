"""Kafka positions: the next offset of each partition of the captured tables' topics.

A message is named by its topic, partition and offset (``KafkaMessage``); a position says,
for each partition it knows, the offset of the next message to read — Kafka's own meaning of
a committed offset. A message is at or before a position when its partition is in the
position and its offset is below that partition's next offset. A consumer in a group owns
some partitions only: its positions name those, and each partition's next offset is stored
in the database row of that partition (``stores``' offsets), moved by compare-and-set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cdc_scorer.core.positions import Position, TxId

TopicPartition = tuple[str, int]


@dataclass(frozen=True, order=True)
class KafkaMessage:
    """One message of a topic: what a row change of the Kafka source names its origin by."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class KafkaPosition(Position):
    """The next offset of each partition in ``offsets`` (sorted (topic, partition, next))."""

    kind: ClassVar[str] = "kafka"
    offsets: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, server_identity: str, offsets: Mapping[TopicPartition, int]) -> KafkaPosition:
        return cls(server_identity, tuple(sorted((t, p, o) for (t, p), o in offsets.items())))

    def next_offsets(self) -> dict[TopicPartition, int]:
        return {(t, p): o for t, p, o in self.offsets}

    def includes(self, tx: TxId) -> bool:
        if not isinstance(tx, KafkaMessage):
            return False
        for topic, partition, next_offset in self.offsets:
            if topic == tx.topic and partition == tx.partition:
                return tx.offset < next_offset
        return False

    def value(self) -> str:
        # Topic names hold no comma (Kafka allows letters, digits, ".", "_" and "-").
        return ",".join(f"{t}:{p}:{o}" for t, p, o in self.offsets)

    def transactions_since(self, earlier: Position) -> int | None:
        if not isinstance(earlier, KafkaPosition):
            return None
        before = earlier.next_offsets()
        return sum(o - before.get((t, p), 0) for t, p, o in self.offsets)

    @classmethod
    def parse(cls, server_identity: str, value: str) -> KafkaPosition:
        offsets: dict[TopicPartition, int] = {}
        for part in filter(None, value.split(",")):
            topic, partition, offset = part.rsplit(":", 2)
            offsets[(topic, int(partition))] = int(offset)
        return cls.of(server_identity, offsets)

    @classmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        """Each partition at the smallest next offset any position has for it (a partition
        some position does not name is not known there: it is left out)."""
        kafka = [p for p in positions if isinstance(p, KafkaPosition)]
        if not kafka:
            raise ValueError("no Kafka positions")
        common = set.intersection(*(set(p.next_offsets()) for p in kafka))
        return cls.of(
            kafka[0].server_identity,
            {tp: min(p.next_offsets()[tp] for p in kafka) for tp in common},
        )


def decode_offsets(server_identity: str, text: str) -> Position:
    """A stored ``kafka:`` position read back (the inverse of ``Position.encode``)."""
    kind, _, value = text.partition(":")
    if kind != KafkaPosition.kind:
        raise ValueError(f"unknown position encoding {text!r}")
    return KafkaPosition.parse(server_identity, value)
