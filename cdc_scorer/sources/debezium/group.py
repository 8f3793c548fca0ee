"""One member of the consumer group of scorers on Debezium's topics (librdkafka through
``confluent_kafka.aio``).

Partitions are spread over the members by Kafka's cooperative-sticky assignor, so a member
joining or leaving moves only the partitions that must move. When partitions arrive, the
member asks the database where each one stands (``on_assign``: the offsets table, not Kafka's
committed offsets) and starts reading there; before partitions leave, it waits until what it
read of them has been committed or abandoned (``on_revoke``) — librdkafka does not finish the
rebalance until the callback returns. A member that lost partitions without a revoke (its
session expired: ``on_lost``) is told the same way; its late commits are refused by the
offsets' compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.aio import AIOConsumer

from cdc_scorer.core.errors import FatalError, RetriableError
from cdc_scorer.sources.debezium.spec import DebeziumSpec

log = structlog.get_logger("cdc_scorer.sources.debezium")

Partition = tuple[str, int]
# (newly assigned partitions, each one's first offset in the topic) → where each starts
OnAssign = Callable[[list[Partition], Mapping[Partition, int]], Awaitable[Mapping[Partition, int]]]
OnRevoke = Callable[[list[Partition], bool], Awaitable[None]]  # (partitions, lost)


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    value: bytes | None


def client_config(spec: DebeziumSpec, client_id: str) -> dict[str, Any]:
    """librdkafka's settings for a member: the group, the security, the tuning."""
    config: dict[str, Any] = {
        "bootstrap.servers": spec.bootstrap_servers,
        "group.id": spec.group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Every partition starts at an explicit offset (the database's, or the topic's first
        # for a new one): one Kafka does not have is an error to stop on, never a silent jump.
        "auto.offset.reset": "error",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": spec.session_timeout_ms,
        "max.poll.interval.ms": spec.max_poll_interval_ms,
        "queued.min.messages": spec.queue_max_messages,
        "log_level": 3,
    }
    if spec.security == "plaintext":
        config["security.protocol"] = "PLAINTEXT"
    elif spec.security == "ssl":
        config["security.protocol"] = "SSL"
    elif spec.security == "sasl-scram":
        config |= {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": spec.scram_mechanism,
            "sasl.username": spec.username,
            "sasl.password": spec.password,
        }
    else:  # msk-iam
        config |= {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "OAUTHBEARER",
            "oauth_cb": _msk_iam_token(spec.iam_region),
        }
    if spec.ca_file and spec.security != "plaintext":
        config["ssl.ca.location"] = spec.ca_file
    return {**config, **spec.consumer}


def _msk_iam_token(region: str | None) -> Callable[[Any], tuple[str, float]]:
    """librdkafka's OAUTHBEARER callback with AWS's MSK IAM signer: a token and its expiry in
    seconds (the signer gives milliseconds)."""

    def token(_config: Any) -> tuple[str, float]:
        import os

        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        where = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not where:
            raise FatalError(
                "source.debezium.iam_region: the region of the MSK cluster is not known — set "
                "it, or AWS_REGION"
            )
        value, expiry_ms = MSKAuthTokenProvider.generate_auth_token(where)
        return value, expiry_ms / 1000

    return token


def _refusal(spec: DebeziumSpec, error: KafkaError, doing: str) -> str | None:
    """The line to stop on when the brokers refuse this client's credentials or it does not
    trust theirs (None: another error). librdkafka retries these for ever; a Kafka client
    stops on them, and so does the scorer."""
    fix = _refused(spec, error)
    return None if fix is None else f"{doing}: {error.str()} — {fix}"


def _refused(spec: DebeziumSpec, error: KafkaError) -> str | None:
    if error.code() == KafkaError._AUTHENTICATION:
        if spec.security == "msk-iam":
            return (
                "the brokers refused the IAM credentials: the task role needs "
                "kafka-cluster:Connect on the cluster (deploy/ecs-service.yaml)"
            )
        return (
            "the brokers refused the credentials: check source.debezium.username and its password "
            "(CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD) and source.debezium.scram_mechanism"
        )
    if error.code() == KafkaError._SSL:
        return (
            "TLS with the brokers failed: set source.debezium.ca_file to the CA bundle that "
            "signed their certificate (and check that they speak TLS on this port)"
        )
    return None


@contextlib.contextmanager
def kafka_errors(doing: str) -> Any:
    """librdkafka's errors leave as ours: retriable ones as RetriableError, the rest fatal."""
    try:
        yield
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and (error.retriable() or not error.fatal()):
            raise RetriableError(f"{doing}: {error.str()}") from None
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        raise FatalError(f"{doing}: {text}") from None


def topic_watermarks(spec: DebeziumSpec, topic: str) -> dict[int, tuple[int, int]]:
    """Each partition's first and next offset now (blocking; empty: the topic is not there
    yet — Debezium makes it with the table's first message). A refused login or TLS stops
    with its fix at once, as the members do."""
    refusals: list[str] = []

    def on_error(error: KafkaError) -> None:
        refusal = _refusal(spec, error, "connecting to the brokers")
        if refusal is not None:
            refusals.append(refusal)

    probe = Consumer(
        {
            **client_config(spec, "cdc-scorer-watermarks"),
            "error_cb": on_error,
            "logger": logging.getLogger("cdc_scorer.kafka.client"),
        }
    )
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with kafka_errors(f"reading the partitions of {topic}"):
                    metadata = probe.list_topics(topic, timeout=2).topics.get(topic)
                if metadata is None or (
                    metadata.error is not None
                    and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                ):
                    return {}
                if metadata.error is not None:  # not allowed to describe it, and the like
                    raise FatalError(f"reading the partitions of {topic}: {metadata.error.str()}")
                found: dict[int, tuple[int, int]] = {}
                for number in sorted(metadata.partitions):
                    with kafka_errors(f"reading the offsets of {topic}[{number}]"):
                        low, high = probe.get_watermark_offsets(
                            TopicPartition(topic, number), timeout=10
                        )
                    found[number] = (int(low), int(high))
                return found
            except RetriableError:  # no broker yet, or a new topic electing its leaders
                probe.poll(0)  # serves the error callback
                if refusals:
                    raise FatalError(refusals[0]) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        probe.close()


class GroupMember:
    """``async with GroupMember(...) as member:`` then ``await member.poll()`` in a loop."""

    def __init__(
        self,
        spec: DebeziumSpec,
        topics: Sequence[str],
        *,
        client_id: str,
        on_assign: OnAssign,
        on_revoke: OnRevoke,
        batch_max: int = 500,
    ) -> None:
        self._spec = spec
        self._topics = list(topics)
        self._client_id = client_id
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._batch_max = batch_max
        self._consumer: AIOConsumer | None = None
        self._owned: set[Partition] = set()
        self._missing_logged = False
        # The first refusal of this client by the brokers (credentials, TLS), told by
        # librdkafka's error callback on its own thread; poll stops on it.
        self._refusal: str | None = None

    @property
    def owned(self) -> frozenset[Partition]:
        """The partitions this member reads now."""
        return frozenset(self._owned)

    async def __aenter__(self) -> GroupMember:
        with kafka_errors("joining the consumer group"):
            self._consumer = AIOConsumer(
                {
                    **client_config(self._spec, self._client_id),
                    "error_cb": self._error,
                    # librdkafka's own log lines through the daemon's renderer (JSON), not
                    # as its raw "%3|…" lines on stderr.
                    "logger": logging.getLogger("cdc_scorer.kafka.client"),
                }
            )
            await self._consumer.subscribe(
                self._topics,
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._lost,
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                await consumer.close()  # leaves the group: revokes first (on_revoke)

    async def poll(self, timeout_s: float = 0.5) -> list[RawMessage]:
        """The next messages of the owned partitions (empty when none came in time)."""
        assert self._consumer is not None, "enter the member first"
        consumer = self._consumer
        with kafka_errors("reading Debezium's topics"):
            # consume(n, timeout) waits until it has n messages or the timeout passed: at a
            # steady trickle every batch would wait the timeout (measured: freshness p50
            # 0.37 s at 1,000 rows/s). What is there goes at once; only an empty queue waits,
            # for its first message.
            messages = await consumer.consume(self._batch_max, 0)
            if not messages:
                messages = await consumer.consume(1, timeout_s)
                if messages:
                    messages += await consumer.consume(self._batch_max - 1, 0)
        if self._refusal is not None:
            raise FatalError(self._refusal)
        batch: list[RawMessage] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.code() == KafkaError._AUTO_OFFSET_RESET:
                    raise FatalError(
                        f"reading Debezium's topics: {error.str()} — the offset the database "
                        "holds for a partition is not in the topic any more (retention removed "
                        "it, or the topic was made again): stop the scorers and move the "
                        "group with cdc-scorer reposition --config FILE --pipeline NAME "
                        "--to-latest --rescore (the table read again by Debezium)"
                    )
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and not error.fatal():
                    # Debezium makes a table's topic with its first message: until then the
                    # member waits in the group (librdkafka subscribes once it appears).
                    if not self._missing_logged:
                        self._missing_logged = True
                        log.warning("topic not there yet", topics=self._topics, error=error.str())
                    continue
                refusal = _refusal(self._spec, error, "reading Debezium's topics")
                if refusal is not None:
                    raise FatalError(refusal)
                if error.fatal() or error.code() in (
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                    KafkaError.GROUP_AUTHORIZATION_FAILED,
                ):
                    raise FatalError(f"reading Debezium's topics: {error.str()}")
                raise RetriableError(f"reading Debezium's topics: {error.str()}")
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            if (topic, partition) not in self._owned:
                continue  # fetched before a revoke: another member reads it from the database
            batch.append(RawMessage(topic, partition, offset, message.value()))
        return batch

    async def _error(self, error: KafkaError) -> None:
        """librdkafka's errors that are not a message's (a broker down, a refused login):
        it retries them itself; a refusal is kept for ``poll`` to stop on."""
        refusal = _refusal(self._spec, error, "connecting to the brokers")
        if refusal is None:
            log.warning("Kafka client error", error=error.str(), code=error.name())
        elif self._refusal is None:
            self._refusal = refusal

    async def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` again from ``offset`` (its stored offset, after a refused
        commit)."""
        assert self._consumer is not None
        with kafka_errors(f"seeking {partition[0]}[{partition[1]}]"):
            await self._consumer.seek(TopicPartition(partition[0], partition[1], offset))

    async def commit_informational(self, offsets: Mapping[Partition, int]) -> None:
        """Tell Kafka the offsets the database holds (for lag tools; never read back)."""
        if self._consumer is None or not offsets:
            return
        with contextlib.suppress(KafkaException):
            await self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )

    async def lag(self, committed: Callable[[Partition], int | None]) -> int:
        """Messages of the owned partitions past their committed offsets (the end offsets
        librdkafka last saw: no request to the broker)."""
        assert self._consumer is not None
        behind = 0
        for topic, number in sorted(self._owned):
            with contextlib.suppress(KafkaException):
                _low, high = await self._consumer.get_watermark_offsets(
                    TopicPartition(topic, number), cached=True
                )
                done = committed((topic, number))
                if high >= 0 and done is not None:
                    behind += max(0, int(high) - done)
        return behind

    async def low_watermarks(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        assert self._consumer is not None
        found: dict[Partition, int] = {}
        for topic, number in partitions:
            # A topic Debezium just made may still be electing its partitions' leaders
            # ("Not leader for partition"): asked again for a while before giving up.
            deadline = time.monotonic() + 60
            while True:
                try:
                    with kafka_errors(f"reading the first offset of {topic}[{number}]"):
                        low, _high = await self._consumer.get_watermark_offsets(
                            TopicPartition(topic, number), timeout=10
                        )
                    break
                except RetriableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            found[(topic, number)] = int(low)
        return found

    async def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        names = [(p.topic, p.partition) for p in partitions]
        start = await self.low_watermarks(names) if names else {}
        offsets = await self._on_assign(names, start) if names else {}
        self._owned |= set(names)
        await consumer.incremental_assign([TopicPartition(t, p, offsets[(t, p)]) for t, p in names])

    async def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        await self._give_up(consumer, partitions, lost=False)

    async def _lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        await self._give_up(consumer, partitions, lost=True)

    async def _give_up(self, consumer: Any, partitions: list[TopicPartition], lost: bool) -> None:
        names = [(p.topic, p.partition) for p in partitions]
        self._owned -= set(names)  # nothing more of them is handed out
        if names:
            await self._on_revoke(names, lost)
        with contextlib.suppress(KafkaException):
            await consumer.incremental_unassign(partitions)
