"""``[source.debezium]``: Debezium's topics on Kafka (or MSK), read through a consumer group."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from annotated_types import Ge, Le

from cdc_scorer.core.spec import FeedSpec, Identifier, SourceSpec

# librdkafka settings the scorer sets itself ([source.debezium] names them otherwise).
KAFKA_MANAGED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "on_commit",
        "partition.assignment.strategy",
        "queued.min.messages",
    }
)
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:(\d{1,5})$")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")


@dataclass(frozen=True)
class DebeziumSpec(FeedSpec):
    """``[source.debezium]``: read the changes from Debezium's topics on Kafka through a
    consumer group instead of the database's log (``[source]`` still names the database the
    predictions go to)."""

    name: ClassVar[str] = "debezium"
    engines: ClassVar[tuple[str, ...]] = ("mysql", "postgresql")

    bootstrap_servers: str  # "b-1.msk…:9098,b-2.msk…:9098"
    topic_prefix: str  # Debezium's topic.prefix: a table's topic is <prefix>.<db>.<table>
    group_id: str = "cdc-scorer"  # the groups' prefix: pipeline churn is group <group_id>.churn
    # plaintext | ssl | msk-iam (SASL_SSL + OAUTHBEARER, AWS's signer) | sasl-scram
    security: Literal["plaintext", "ssl", "msk-iam", "sasl-scram"] = "plaintext"
    ca_file: str | None = None  # ssl / sasl-scram / msk-iam: None is the system's CAs
    scram_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"  # sasl-scram
    username: str | None = None  # sasl-scram
    password: str = field(default="", repr=False)  # sasl-scram
    iam_region: str | None = None  # msk-iam: the cluster's region (None: AWS_REGION & co.)
    # Messages without schemas: how the connector writes DECIMAL (its scale is lost in the
    # default, precise, encoding: such an input is refused until this says "string").
    decimal_handling_mode: Literal["precise", "string"] = "precise"
    # The group's timeouts: a member silent this long is out of the group
    session_timeout_ms: Annotated[int, Ge(6000), Le(300_000)] = 45_000
    max_poll_interval_ms: Annotated[int, Ge(10_000), Le(3_600_000)] = 300_000  # between polls
    # Messages librdkafka fetches ahead per partition (queued.min.messages): read, not yet
    # taken by the pipeline — the bound of what a member holds in memory.
    queue_max_messages: Annotated[int, Ge(1), Le(10_000_000)] = 2000
    # The connector's signal table (its signal.data.collection, in [source]'s database or
    # schema): re-scores ask Debezium for an incremental snapshot through it. None: a model
    # version change stops with the fix instead.
    signal_table: Identifier | None = None
    # More librdkafka consumer settings, passed as they are (fetch.min.bytes, …).
    consumer: dict[str, str | int | float | bool] = field(default_factory=dict)

    @property
    def batch_backfills(self) -> bool:
        return False  # Debezium's incremental snapshot re-reads the table into the topics

    def __post_init__(self) -> None:
        problems = []
        servers = [s.strip() for s in self.bootstrap_servers.split(",")]
        for server in servers:
            match = _HOST_PORT.match(server)
            if match is None or not 1 <= int(match.group(1)) <= 65535:
                problems.append(
                    f"bootstrap_servers: {server!r} is not host:port — list the brokers as "
                    '"host:port,host:port"'
                )
        if not _TOPIC.match(self.topic_prefix):
            problems.append(
                f"topic_prefix: {self.topic_prefix!r} is not a Kafka topic prefix — use "
                "Debezium's topic.prefix (letters, digits, . _ -)"
            )
        if not self.group_id.strip():
            problems.append("group_id: empty — name the consumer group the scorers share")
        if self.security == "sasl-scram" and (not self.username or not self.password):
            problems.append(
                "username: sasl-scram needs username and password (the password from the "
                "environment: CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD)"
            )
        if self.security != "sasl-scram" and (self.username or self.password):
            problems.append(
                f"username: security {self.security!r} sends no username or password — remove "
                'them, or set security = "sasl-scram"'
            )
        for key in sorted(set(self.consumer) & KAFKA_MANAGED):
            problems.append(
                f"consumer: {key!r} is set by the scorer — remove it (bootstrap_servers, "
                "group_id and security are [source.debezium]'s own keys)"
            )
        if problems:
            raise ValueError("\n".join(problems))


def debezium_spec(source: SourceSpec) -> DebeziumSpec:
    """``[source.debezium]`` of a configuration the registry gave this package."""
    feed: FeedSpec = source.feed
    if not isinstance(feed, DebeziumSpec):
        raise TypeError(f"[source.{feed.name}] is not Debezium's section")
    return feed
