"""Kafka's own command-line tools on the stack's jars, as an operator runs them (the tests
read what they print)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from cdc_scorer.local.kafka import KafkaUnavailable, ensure_kafka_jars, java

# What kafka-consumer-groups.sh runs (kafka-tools, Kafka 4.x).
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


@dataclass(frozen=True)
class GroupPartition:
    """One line of ``kafka-consumer-groups.sh --describe``: a partition the group has an
    offset for, or one a member owns (None: "-")."""

    group: str
    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None
    consumer_id: str | None


def describe_group(bootstrap_servers: str, group: str) -> list[GroupPartition]:
    """``kafka-consumer-groups.sh --bootstrap-server S --describe --group G``."""
    result = subprocess.run(
        [
            java(),
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-cp",
            f"{ensure_kafka_jars()}/*",
            CONSUMER_GROUP_COMMAND,
            "--bootstrap-server",
            bootstrap_servers,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise KafkaUnavailable(f"kafka-consumer-groups.sh failed: {result.stderr.strip()[-500:]}")
    found = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) < 7 or parts[0] != group:
            continue  # the header, blank lines, "Consumer group … has no active members."

        def number(text: str) -> int | None:
            return None if text == "-" else int(text)

        found.append(
            GroupPartition(
                group=parts[0],
                topic=parts[1],
                partition=int(parts[2]),
                current_offset=number(parts[3]),
                log_end_offset=number(parts[4]),
                lag=number(parts[5]),
                consumer_id=None if parts[6] == "-" else parts[6],
            )
        )
    return found
