"""Members of one consumer group on a real Debezium topic (a real MySQL, Kafka Connect and a
KRaft broker): each partition starts where the database says, not where Kafka's committed
offsets are; when a member joins, the partitions that move are given up only after the old
owner's revoke callback has finished (its batches committed), and the new owner starts from
what that commit stored — every message read once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from cdc_scorer.local.kafka import KafkaStack
from cdc_scorer.local.kafka.connectors import mysql_connector
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.sources.debezium.group import GroupMember, RawMessage
from cdc_scorer.sources.debezium.spec import DebeziumSpec
from tests.integration.test_debezium_envelope import _wait_topic

pytestmark = pytest.mark.slow

ROWS = 200
MORE = 100
PARTITIONS = 4


class Member:
    """A member whose "database" is ``stored``: offsets loaded on assign, saved on revoke."""

    def __init__(
        self, name: str, spec: DebeziumSpec, topic: str, stored: dict[Any, int], log: list[Any]
    ) -> None:
        self.name, self.stored, self.log = name, stored, log
        self.read: list[RawMessage] = []
        self.next: dict[Any, int] = {}
        self.started: dict[Any, int] = {}
        self.member = GroupMember(
            spec, [topic], client_id=name, on_assign=self.assigned, on_revoke=self.revoked
        )

    async def assigned(self, partitions: list[Any], start: Mapping[Any, int]) -> Mapping[Any, int]:
        offsets = {p: self.stored.get(p, start[p]) for p in partitions}
        self.next |= offsets
        self.started |= offsets
        self.log.append((time.monotonic(), self.name, "assigned", sorted(partitions)))
        return offsets

    async def revoked(self, partitions: list[Any], lost: bool) -> None:
        self.log.append((time.monotonic(), self.name, "revoking", sorted(partitions)))
        await asyncio.sleep(1.0)  # the in-flight batches of these partitions commit
        for p in partitions:
            self.stored[p] = self.next.pop(p)
        self.log.append((time.monotonic(), self.name, "revoked", sorted(partitions)))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for message in await self.member.poll(0.2):
                self.read.append(message)
                self.next[(message.topic, message.partition)] = message.offset + 1


async def test_members_start_at_the_databases_offsets_and_hand_partitions_over(
    mysql_gtid: DatabaseServer, kafka: KafkaStack
) -> None:
    database = f"grp_{uuid.uuid4().hex[:6]}"
    conn = mysql_gtid.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        cursor.execute(f"CREATE TABLE {database}.t (id INT PRIMARY KEY, v INT)")
        cursor.executemany(
            f"INSERT INTO {database}.t VALUES (%s, %s)", [(i, i) for i in range(ROWS)]
        )
    conn.close()
    prefix = f"g{uuid.uuid4().hex[:6]}"
    kafka.put_connector(
        prefix,
        {
            **mysql_connector(
                mysql_gtid,
                prefix=prefix,
                database=database,
                tables=["t"],
                bootstrap=kafka.bootstrap_servers,
                partitions=PARTITIONS,
                server_id=5601,
            ),
        },
    )
    topic = f"{prefix}.{database}.t"
    try:
        _wait_topic(kafka, topic)
        await _until(lambda: _messages(kafka, topic) == ROWS)  # the snapshot is in the topic
        spec = DebeziumSpec(
            bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=prefix,
            group_id=f"scorers-{prefix}",
            session_timeout_ms=6000,
        )
        stored: dict[Any, int] = {(topic, 0): 10}  # the database has applied p0 up to 10
        log: list[Any] = []
        a = Member("a", spec, topic, stored, log)
        b = Member("b", spec, topic, stored, log)
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(a.member)
            first = asyncio.create_task(a.run(stop))
            await _until(lambda: len(a.member.owned) == PARTITIONS and len(a.read) >= 40)
            await stack.enter_async_context(b.member)
            second = asyncio.create_task(b.run(stop))
            await _until(
                lambda: (
                    len(a.member.owned) + len(b.member.owned) == PARTITIONS > len(a.member.owned)
                )
            )
            # Changes after the hand-over: the new owner reads them from the stored offsets.
            conn = mysql_gtid.connect()
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {database}.t VALUES (%s, %s)",
                    [(i, i) for i in range(ROWS, ROWS + MORE)],
                )
            conn.close()
            await _until(lambda: len(a.read) + len(b.read) >= ROWS - 10 + MORE)
            stop.set()
            await asyncio.gather(first, second)
        read = [(m.partition, m.offset) for m in a.read + b.read]
        assert len(read) == len(set(read)) == ROWS - 10 + MORE  # every message once
        assert b.read  # the new owner read the changes of its partitions after the hand-over
        for message in b.read:  # … from where the old owner's revoke stored them
            assert message.offset >= b.started[(message.topic, message.partition)]
        for partition, offset in b.started.items():
            assert offset == 1 + max(
                m.offset for m in a.read if (m.topic, m.partition) == partition
            )
        assert min(o for p, o in read if p == 0) == 10  # p0 began at the database's offset
        moved = next(entry[3] for entry in log if entry[1] == "b" and entry[2] == "assigned")
        revoked_at = {
            p: t for t, who, what, ps in log if who == "a" and what == "revoked" for p in ps
        }
        assigned_at = next(t for t, who, what, _ in log if who == "b" and what == "assigned")
        assert moved and all(revoked_at[p] <= assigned_at for p in moved)
    finally:
        kafka.delete_connector(prefix)


def _messages(kafka: KafkaStack, topic: str, partitions: int = PARTITIONS) -> int:
    """The messages of ``topic``: the sum of its partitions' end offsets (asked again while a
    topic Debezium just made elects its leaders: "Not leader for partition")."""
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "probe"})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                return sum(
                    probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(partitions)
                )
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        probe.close()


async def _until(condition: Any, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
