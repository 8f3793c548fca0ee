"""The configuration, declared once: frozen dataclasses with their constraints and defaults.

``config.py`` validates the TOML file and the environment straight into these (pydantic
validates plain dataclasses: the constraints are ``annotated_types`` markers, unknown keys are
refused by ``__pydantic_config__``); the core sees only the dataclasses and never pydantic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, MinLen, Predicate

from cdc_scorer.core.models import ModelSpec

# Unknown keys are errors (a misspelt key must not silently take a default).
STRICT: Any = {"extra": "forbid"}
_MODEL_ANY: Any = {**STRICT, "arbitrary_types_allowed": True}


def sql_identifier(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,63}", text) is not None


def slot_identifier(text: str) -> bool:
    """What PostgreSQL allows a replication slot's name to be."""
    return re.fullmatch(r"[a-z0-9_]{1,63}", text) is not None


def pipeline_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text) is not None


def column_prefix(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", text) is not None


Identifier = Annotated[str, Predicate(sql_identifier)]
Port = Annotated[int, Ge(1), Le(65535)]
Positive = Annotated[float, Gt(0)]


def random_server_id() -> int:
    # Above the ids people give real servers (small numbers), below the 32-bit limit.
    return random.randint(1 << 24, (1 << 32) - 1)


TlsMode = Literal["disabled", "preferred", "required", "verify-ca", "verify-identity"]


@dataclass(frozen=True)
class TlsSpec:
    """TLS of every connection to the source, in the MySQL client's ssl-mode words.

    ``preferred``: TLS when the server offers it, unverified (pymysql's default);
    ``required``: TLS or no connection, unverified; ``verify-ca``: the server's certificate
    must chain to ``ca_file``; ``verify-identity``: and name the host connected to.
    """

    __pydantic_config__ = STRICT

    mode: TlsMode = "preferred"
    ca_file: str | None = None  # e.g. the RDS global bundle (global-bundle.pem)
    cert_file: str | None = None  # a client certificate, with key_file
    key_file: str | None = None

    def __post_init__(self) -> None:
        if self.mode in ("verify-ca", "verify-identity") and not self.ca_file:
            raise ValueError(
                f"mode {self.mode!r} verifies the server against ca_file: set ca_file "
                "(for RDS/Aurora, the global bundle global-bundle.pem)"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if self.mode == "disabled" and (self.ca_file or self.cert_file):
            raise ValueError("mode 'disabled' uses no certificate: remove the files or set a mode")


@dataclass(frozen=True)
class SourceSpec:
    __pydantic_config__ = STRICT

    database: Identifier
    # The kind of database and its change log, a name of sources/registry.py (config.py checks
    # it): "mysql" is the binlog of MySQL, Aurora MySQL and MariaDB.
    engine: str = "mysql"
    # PostgreSQL: the schema of the source tables and of the scorer's own (MySQL: the database),
    # the publication of the captured tables and the scorer's replication slot (init makes
    # both).
    schema: Identifier = "public"
    publication: Identifier = "cdc_scorer"
    slot_name: Annotated[str, Predicate(slot_identifier)] = "cdc_scorer"
    host: str = "127.0.0.1"
    port: Port = 3306
    user: str = "cdc_scorer"
    password: str = field(default="", repr=False)
    # This process's replica id. Unset: a random id per process, so the tasks of one ECS
    # service never clash (two readers with one id disconnect each other).
    server_id: Annotated[int, Ge(1), Le(4294967295)] | None = None
    connect_timeout_s: Positive = 10.0
    heartbeat_interval_s: Positive = 2.0
    queue_max_rows: Annotated[int, Ge(1)] = 2000  # row changes read, not yet taken
    # auto: GTIDs on MariaDB, GTID sets on MySQL with gtid_mode=ON, else file:pos; file: file:pos
    positions: Literal["auto", "file"] = "auto"
    # rows events: fast (per-table compiled plans) | stock (the library)
    decoder: Literal["fast", "stock"] = "fast"
    tls: TlsSpec = TlsSpec()
    # A checkpoint whose position this server cannot resume: stop with the cause and the fix,
    # or stream from now and re-score every pipeline's table beside the stream.
    on_lost_position: Literal["stop", "rescore"] = "stop"
    # password: the password above; rds-iam: a fresh RDS IAM token for every connection
    auth: Literal["password", "rds-iam"] = "password"
    iam_region: str | None = None  # the region of the tokens (None: AWS_REGION & co.)

    def __post_init__(self) -> None:
        if self.server_id is None:
            object.__setattr__(self, "server_id", random_server_id())
        if self.auth == "rds-iam":
            if self.tls.mode not in ("required", "verify-ca", "verify-identity"):
                raise ValueError(
                    "auth 'rds-iam' sends its token with the cleartext plugin: set [source.tls] "
                    "mode = 'verify-identity' and ca_file (the RDS global bundle)"
                )
            if self.password:
                raise ValueError("auth 'rds-iam' replaces the password: remove [source] password")


# librdkafka settings the Kafka source sets itself ([kafka] names them otherwise).
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
class KafkaSpec:
    """``[kafka]``: read the changes from Debezium's topics through a consumer group instead of
    the database's log (``[source]`` still names the database and where predictions go)."""

    __pydantic_config__ = STRICT

    bootstrap_servers: str  # "b-1.msk…:9098,b-2.msk…:9098"
    topic_prefix: str  # Debezium's topic.prefix: a table's topic is <prefix>.<db>.<table>
    group_id: str = "cdc-scorer"
    # plaintext | ssl | msk-iam (SASL_SSL + OAUTHBEARER, AWS's signer) | sasl-scram
    security: Literal["plaintext", "ssl", "msk-iam", "sasl-scram"] = "plaintext"
    ca_file: str | None = None  # ssl / sasl-scram / msk-iam: None is the system's CAs
    scram_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str | None = None  # sasl-scram
    password: str = field(default="", repr=False)  # sasl-scram
    iam_region: str | None = None  # msk-iam: the cluster's region (None: AWS_REGION & co.)
    # Messages without schemas: how the connector writes DECIMAL (its scale is lost in the
    # default, precise, encoding: such an input is refused until this says "string").
    decimal_handling_mode: Literal["precise", "string"] = "precise"
    session_timeout_ms: Annotated[int, Ge(6000), Le(300_000)] = 45_000
    max_poll_interval_ms: Annotated[int, Ge(10_000), Le(3_600_000)] = 300_000
    # Messages librdkafka fetches ahead per partition (queued.min.messages): read, not yet
    # taken by the pipeline — the bound of what a member holds in memory.
    queue_max_messages: Annotated[int, Ge(1), Le(10_000_000)] = 2000
    # The connector's signal table (its signal.data.collection, in [source]'s database or
    # schema): re-scores ask Debezium for an incremental snapshot through it. None: a model
    # version change stops with the fix instead.
    signal_table: Identifier | None = None
    # More librdkafka consumer settings, passed as they are (fetch.min.bytes, …).
    consumer: dict[str, str | int | float | bool] = field(default_factory=dict)

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
                "environment: CDC_SCORER_KAFKA__PASSWORD)"
            )
        if self.security != "sasl-scram" and (self.username or self.password):
            problems.append(
                f"username: security {self.security!r} sends no username or password — remove "
                'them, or set security = "sasl-scram"'
            )
        for key in sorted(set(self.consumer) & KAFKA_MANAGED):
            problems.append(
                f"consumer: {key!r} is set by the scorer — remove it (bootstrap_servers, "
                "group_id and security are [kafka]'s own keys)"
            )
        if problems:
            raise ValueError("\n".join(problems))


@dataclass(frozen=True)
class BatchingSpec:
    __pydantic_config__ = STRICT

    max_rows: Annotated[int, Ge(1), Le(100_000)] | None = None  # None: the service's default
    max_bytes: Annotated[int, Ge(1_000), Le(6_000_000)] = 1_000_000
    linger_ms: Annotated[float, Ge(0)] = 200
    max_in_flight: Annotated[int, Ge(1), Le(256)] = 4

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000


@dataclass(frozen=True)
class RescoreSpec:
    """Incremental snapshots and re-scores of a pipeline's table (``snapshotter.py``)."""

    __pydantic_config__ = STRICT

    # A cap on rows read per second (None: as fast as the model and the sink take them), so a
    # re-score cannot starve the stream's freshness or flood the endpoint.
    max_rows_per_s: Positive | None = None


@dataclass(frozen=True)
class PipelineSpec:
    # The model section is validated by config.py with its service's own class (the registry
    # of services/): here it is any ModelSpec.
    __pydantic_config__ = _MODEL_ANY

    name: Annotated[str, Predicate(pipeline_name)]
    table: Identifier
    model: ModelSpec  # [pipelines.<service>]
    key_columns: tuple[str, ...] | None = None  # None: the table's primary key
    # A label of the model deployed, stamped on every prediction row (model_version).
    model_version: Annotated[str, MinLen(1)] = "1"
    # Where this pipeline's predictions go (None: <table>_predictions; a challenger model on
    # the same table names its own) and the view joining them to the source (None: derived).
    predictions_table: Identifier | None = None
    scored_view: Identifier | None = None
    snapshot: Literal["initial", "never"] = "initial"
    snapshot_chunk_rows: Annotated[int, Ge(1), Le(100_000)] = 1000
    # Re-score every row when an ALTER TABLE changes the type of a model input.
    rescore_on_alter: bool = True
    rescore: RescoreSpec = RescoreSpec()
    batching: BatchingSpec = BatchingSpec()

    def __post_init__(self) -> None:
        if not self.key_columns:
            object.__setattr__(self, "key_columns", None)
        if self.batching.max_rows is None:
            batching = replace(self.batching, max_rows=self.model.default_max_rows)
            object.__setattr__(self, "batching", batching)
        pace = self.model.rescore_rows_per_s()
        if pace is not None and self.rescore.max_rows_per_s is None:
            # A model with a budget: re-scores keep under their share of it, in chunks of
            # about two seconds of it, so their batches never queue in front of the stream's.
            object.__setattr__(self, "rescore", replace(self.rescore, max_rows_per_s=pace))
            chunk = min(self.snapshot_chunk_rows, max(1, int(pace * 2)))
            object.__setattr__(self, "snapshot_chunk_rows", chunk)

    @property
    def service(self) -> str:
        """The model service's name (``pipelines[].service``)."""
        return self.model.service

    @property
    def max_batch_rows(self) -> int:
        assert self.batching.max_rows is not None  # __post_init__ set the service's default
        return self.batching.max_rows

    @property
    def predictions(self) -> str:
        """The predictions table's name."""
        return self.predictions_table or f"{self.table}_predictions"

    @property
    def view(self) -> str:
        """The view's name: ``<table>_scored``, or for ``x_predictions`` ``x_scored``."""
        if self.scored_view:
            return self.scored_view
        if self.predictions_table:
            return self.predictions_table.removesuffix("_predictions") + "_scored"
        return f"{self.table}_scored"

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The source columns the model reads: an update touching none of them is skipped."""
        return self.model.input_columns


@dataclass(frozen=True)
class AwsSpec:
    __pydantic_config__ = STRICT

    region: str | None = None
    endpoint_url: str | None = None  # None: the SDK's standard resolution (AWS_ENDPOINT_URL...)
    call_timeout_s: Positive = 30.0


@dataclass(frozen=True)
class RetrySpec:
    """Exponential backoff with full jitter (``retry.py``)."""

    __pydantic_config__ = STRICT

    base_ms: Positive = 100
    cap_ms: Positive = 10_000

    def __post_init__(self) -> None:
        if self.cap_ms < self.base_ms:
            raise ValueError("cap_ms must be >= base_ms")

    @property
    def base_s(self) -> float:
        return self.base_ms / 1000

    @property
    def cap_s(self) -> float:
        return self.cap_ms / 1000


@dataclass(frozen=True)
class HttpSpec:
    """The operations port: /metrics, /healthz, /readyz (port 0: no server)."""

    __pydantic_config__ = STRICT

    host: str = "0.0.0.0"
    port: Annotated[int, Ge(0), Le(65535)] = 9400
    ready_max_lag_s: Positive = 30.0


@dataclass(frozen=True)
class ScorerSpec:
    __pydantic_config__ = STRICT

    source: SourceSpec
    pipelines: tuple[PipelineSpec, ...]  # at least one (config.py checks)
    aws: AwsSpec = AwsSpec()
    retry: RetrySpec = RetrySpec()
    shutdown_grace_s: Positive = 20.0
    http: HttpSpec = HttpSpec()
    kafka: KafkaSpec | None = None  # the Kafka source (Debezium's topics) instead of the log
