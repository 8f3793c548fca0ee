"""Kafka positions: a partition's next offset decides what is at or before a position."""

from __future__ import annotations

from cdc_scorer.core.positions import decode_position, oldest_position
from cdc_scorer.sources.debezium.positions import KafkaMessage, KafkaPosition

T = "dbz.mltest.churn"


def test_a_message_is_included_below_its_partitions_next_offset() -> None:
    position = KafkaPosition.of("cluster", {(T, 0): 10, (T, 2): 0})
    assert position.includes(KafkaMessage(T, 0, 9))
    assert not position.includes(KafkaMessage(T, 0, 10))
    assert not position.includes(KafkaMessage(T, 2, 0))
    assert not position.includes(KafkaMessage(T, 1, 0))  # a partition it does not know
    assert not position.includes(KafkaMessage("other", 0, 0))


def test_positions_encode_and_decode() -> None:
    position = KafkaPosition.of("cluster", {(T, 1): 7, (T, 0): 10, ("a-b_c", 3): 0})
    text = position.encode()
    assert text == "kafka:a-b_c:3:0,dbz.mltest.churn:0:10,dbz.mltest.churn:1:7"
    assert decode_position({"kafka": KafkaPosition}, "cluster", text) == position
    assert KafkaPosition.parse("cluster", "") == KafkaPosition("cluster", ())


def test_the_oldest_takes_each_partitions_smallest_next_offset() -> None:
    a = KafkaPosition.of("c", {(T, 0): 10, (T, 1): 3})
    b = KafkaPosition.of("c", {(T, 0): 4, (T, 1): 8, (T, 2): 1})
    assert oldest_position([a, b]) == KafkaPosition.of("c", {(T, 0): 4, (T, 1): 3})
    assert b.transactions_since(KafkaPosition.of("c", {(T, 0): 1})) == 3 + 8 + 1
