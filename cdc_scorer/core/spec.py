"""The configuration, declared once: frozen dataclasses with their constraints and defaults.

``config.py`` validates the TOML file and the environment straight into these (pydantic
validates plain dataclasses: the constraints are ``annotated_types`` markers, unknown keys are
refused by ``__pydantic_config__``); the core sees only the dataclasses and never pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

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


TlsMode = Literal["disabled", "preferred", "required", "verify-ca", "verify-identity"]


@dataclass(frozen=True)
class TlsSpec:
    """TLS of every connection to the source, in the MySQL client's ssl-mode words.

    ``preferred``: TLS when the server offers it, unverified (pymysql's default);
    ``required``: TLS or no connection, unverified; ``verify-ca``: the server's certificate
    must chain to ``ca_file``; ``verify-identity``: and name the host connected to.
    """

    __pydantic_config__ = STRICT

    # preferred: TLS when the server offers it, unverified; required: TLS or no connection,
    # unverified; verify-ca: the certificate chains to ca_file; verify-identity: and names the
    # host (PostgreSQL: libpq's sslmode prefer, require, verify-ca, verify-full)
    mode: TlsMode = "preferred"
    ca_file: str | None = None  # the CA bundle to verify against; RDS: global-bundle.pem
    cert_file: str | None = None  # a client certificate, with key_file
    key_file: str | None = None  # the client certificate's key, with cert_file

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
class FeedSpec:
    """The change feed's own section, ``[source.<name>]``: each source's package subclasses it
    with its keys and registers it by ``name`` in ``sources/registry.py``; ``config.py``
    validates the section with that class, as a model service's section is validated."""

    __pydantic_config__ = STRICT

    name: ClassVar[str] = ""
    # The [source] engines whose changes the feed reads (the database predictions go to).
    engines: ClassVar[tuple[str, ...]] = ()

    @property
    def lag_every_s(self) -> float:
        """How often the feed measures its lag behind the database: silence beyond it counts
        as growing lag."""
        return 2.0

    @property
    def batch_backfills(self) -> bool:
        """Whether the feed's re-scores can run as batch jobs (its re-scorer reads the table's
        chunks itself)."""
        return True

    @property
    def rescores_lost_position(self) -> bool:
        """Whether a stored position the database can no longer serve is re-scored from now
        (else the start stops with the fix)."""
        return False


@dataclass(frozen=True)
class SourceSpec:
    """``[source]``: the database whose tables are scored and where the predictions go; how its
    changes are read is ``feed`` (``[source.binlog]``, ``[source.pgoutput]``,
    ``[source.debezium]``; none given: the engine's own log with its defaults)."""

    __pydantic_config__ = _MODEL_ANY

    # MySQL: the database of the source tables and of the scorer's own; PostgreSQL: the
    # database connected to
    database: Identifier
    feed: FeedSpec
    # The kind of database, a name of stores/registry.py (config.py checks it): "mysql" is
    # MySQL, Aurora MySQL and MariaDB.
    engine: str = "mysql"
    # PostgreSQL: the schema of the source tables and of the scorer's own (MySQL: the database).
    schema: Identifier = "public"
    host: str = "127.0.0.1"  # the writer's (the cluster's) endpoint
    port: Port = 3306  # PostgreSQL: set 5432
    user: str = "cdc_scorer"  # the grants it needs: deploy/grants.sql, grants-postgresql.sql
    # Best from the environment: CDC_SCORER_SOURCE__PASSWORD (never printed or logged)
    password: str = field(default="", repr=False)
    connect_timeout_s: Positive = 10.0  # each connection's
    tls: TlsSpec = TlsSpec()
    # password: the password above; rds-iam: a fresh RDS IAM token for every connection
    auth: Literal["password", "rds-iam"] = "password"
    iam_region: str | None = None  # the region of the tokens (None: AWS_REGION & co.)

    def __post_init__(self) -> None:
        if self.auth == "rds-iam":
            if self.tls.mode not in ("required", "verify-ca", "verify-identity"):
                raise ValueError(
                    "auth 'rds-iam' sends its token with the cleartext plugin: set [source.tls] "
                    "mode = 'verify-identity' and ca_file (the RDS global bundle)"
                )
            if self.password:
                raise ValueError("auth 'rds-iam' replaces the password: remove [source] password")


@dataclass(frozen=True)
class BatchingSpec:
    __pydantic_config__ = STRICT

    # Rows per batch (None: the service's default: SageMaker 500, Comprehend 100, Bedrock 96)
    max_rows: Annotated[int, Ge(1), Le(100_000)] | None = None
    # Approximate input bytes per batch: each input value counts 21 bytes plus its length when
    # it is text or binary
    max_bytes: Annotated[int, Ge(1_000), Le(6_000_000)] = 1_000_000
    # The longest a batch waits to fill while the pipeline's earlier batches of the change log
    # are in flight (a snapshot's or re-score's chunks do not count); with none in flight,
    # rows go as soon as their transaction's commit is read
    linger_ms: Annotated[float, Ge(0)] = 200
    # Concurrent model calls of the pipeline, held exactly; scored batches not yet committed
    # count too
    max_in_flight: Annotated[int, Ge(1), Le(256)] = 4

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000


@dataclass(frozen=True)
class RescoreSpec:
    """Incremental snapshots and re-scores of a pipeline's table (``snapshotter.py``)."""

    __pydantic_config__ = STRICT

    # A cap on rows read per second, so a re-score cannot starve the stream's freshness or
    # flood the endpoint (None: a budgeted model's default pace, its share of the budget while
    # the stream calls and nearly all of it while the stream is quiet; else as fast as the
    # model and the sink take them). It also paces the merge of a batch backfill's answers
    # (which no model's budget paces: they need no model call).
    max_rows_per_s: Positive | None = None


def is_s3_uri(text: str) -> bool:
    return re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?", text) is not None


def is_role_arn(text: str) -> bool:
    return re.fullmatch(r"arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+", text) is not None


@dataclass(frozen=True)
class BackfillSpec:
    """``[pipelines.<name>.backfill]``: how re-scores of the whole table reach the model —
    through the real-time endpoint like the stream's rows, or as batch jobs at batch prices
    (Bedrock batch inference, SageMaker Batch Transform; ``core/backfill.py``)."""

    __pydantic_config__ = STRICT

    # realtime: every re-score through the endpoint; batch: as batch jobs; auto: batch jobs
    # when the re-score covers at least min_rows rows
    mode: Literal["realtime", "batch", "auto"] = "realtime"
    min_rows: Annotated[int, Ge(1)] = 10_000  # auto: the smallest re-score sent as batch jobs
    # Where the jobs' inputs and outputs go: s3://bucket/prefix/ (the scorer writes and reads
    # it; the job's role too)
    s3_uri: Annotated[str, Predicate(is_s3_uri)] | None = None
    # The IAM role the service assumes to read and write s3_uri (docs: "Backfills")
    role_arn: Annotated[str, Predicate(is_role_arn)] | None = None
    # Records per job (within the service's quotas: Bedrock 100 to 50,000)
    records_per_job: Annotated[int, Ge(1), Le(1_000_000)] = 10_000
    max_jobs_in_flight: Annotated[int, Ge(1), Le(20)] = 2  # jobs submitted and not yet merged
    timeout_hours: Annotated[int, Ge(24), Le(168)] = 24  # a job not done by then expires
    poll_s: Positive = 30.0  # how often a running job's state is read
    # SageMaker Batch Transform: the instances of each job
    instance_type: str = "ml.m5.large"
    instance_count: Annotated[int, Ge(1), Le(100)] = 1

    def __post_init__(self) -> None:
        if self.mode != "realtime":
            missing = [k for k in ("s3_uri", "role_arn") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"mode {self.mode!r} submits batch jobs: set {' and '.join(missing)} "
                    '(s3_uri = "s3://bucket/prefix/", role_arn = the job\'s IAM role)'
                )

    def takes(self, rows: int) -> bool:
        """Whether a re-score of ``rows`` rows goes as batch jobs."""
        return self.mode == "batch" or (self.mode == "auto" and rows >= self.min_rows)


@dataclass(frozen=True)
class PipelineSpec:
    # The model section is validated by config.py with its service's own class (the registry
    # of services/): here it is any ModelSpec.
    __pydantic_config__ = _MODEL_ANY

    name: Annotated[str, Predicate(pipeline_name)]  # unique: its checkpoint row's key
    table: Identifier  # the source table scored
    model: ModelSpec  # [pipelines.<service>]
    key_columns: tuple[str, ...] | None = None  # None: the table's primary key
    # A label of the model deployed, stamped on every prediction row (model_version).
    model_version: Annotated[str, MinLen(1)] = "1"
    # Where this pipeline's predictions go (None: <table>_predictions; a challenger model on
    # the same table names its own).
    predictions_table: Identifier | None = None
    # The view joining the predictions to the source (None: <table>_scored, or for
    # x_predictions x_scored).
    scored_view: Identifier | None = None
    # initial: score the rows already there, beside the stream; never: only changes from now
    snapshot: Literal["initial", "never"] = "initial"
    snapshot_chunk_rows: Annotated[int, Ge(1), Le(100_000)] = 1000  # rows per snapshot chunk
    # Re-score every row when an ALTER TABLE changes the type of a model input.
    rescore_on_alter: bool = True
    rescore: RescoreSpec = RescoreSpec()
    backfill: BackfillSpec = BackfillSpec()
    batching: BatchingSpec = BatchingSpec()

    def __post_init__(self) -> None:
        if not self.key_columns:
            object.__setattr__(self, "key_columns", None)
        if self.batching.max_rows is None:
            batching = replace(self.batching, max_rows=self.model.default_max_rows)
            object.__setattr__(self, "batching", batching)
        pace = self.model.rescore_rows_per_s()
        if pace is not None and self.rescore.max_rows_per_s is None:
            # A model with a budget: re-scores keep under their share of it while the stream
            # calls (rescore_pace), in chunks of about two seconds of that pace, so their
            # batches never queue long in front of the stream's.
            chunk = min(self.snapshot_chunk_rows, max(1, int(pace * 2)))
            object.__setattr__(self, "snapshot_chunk_rows", chunk)

    def rescore_pace(self, stream_quiet: bool) -> float | None:
        """Rows per second a re-score reads now: ``rescore.max_rows_per_s`` when set, else
        the model's default pace — its share of a budget while the stream calls, nearly all
        of it while the stream is quiet (None: as fast as the model and the sink take rows)."""
        if self.rescore.max_rows_per_s is not None:
            return self.rescore.max_rows_per_s
        return self.model.rescore_rows_per_s(stream_quiet)

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

    region: str | None = None  # None: the SDK's (AWS_REGION & co.)
    endpoint_url: str | None = None  # None: the SDK's standard resolution (AWS_ENDPOINT_URL...)
    call_timeout_s: Positive = 30.0  # the read timeout of one model call
    # S3's endpoint when not the SDK's (None: the standard one, or AWS_ENDPOINT_URL_S3); the
    # local S3 of `serve-models` for example. endpoint_url does not apply to S3.
    s3_endpoint_url: str | None = None


@dataclass(frozen=True)
class RetrySpec:
    """Exponential backoff with full jitter (``retry.py``)."""

    __pydantic_config__ = STRICT

    base_ms: Positive = 100  # the first retry's backoff
    cap_ms: Positive = 10_000  # the longest backoff

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

    host: str = "0.0.0.0"  # the address /metrics, /healthz and /readyz listen on
    port: Annotated[int, Ge(0), Le(65535)] = 9400  # 0: no server
    ready_max_lag_s: Positive = 30.0  # /readyz fails above this source lag


@dataclass(frozen=True)
class PriceSpec:
    """``[pricing."<model>"]``: what a model costs, for ``rescore --estimate`` (prices change
    and differ by region: the user sets them from the AWS price list). Bedrock: per 1,000
    input tokens; SageMaker: per instance-hour (on_demand: the endpoint's instances, batch:
    a transform job's)."""

    __pydantic_config__ = STRICT

    on_demand: Annotated[float, Ge(0)]  # through the real-time endpoint
    batch: Annotated[float, Ge(0)]  # as batch jobs
    currency: str = "USD"


@dataclass(frozen=True)
class ScorerSpec:
    __pydantic_config__ = STRICT

    source: SourceSpec
    pipelines: tuple[PipelineSpec, ...]  # at least one (config.py checks)
    aws: AwsSpec = AwsSpec()
    retry: RetrySpec = RetrySpec()
    # After SIGTERM: stop reading, finish the model calls in flight, commit, exit within this
    shutdown_grace_s: Positive = 20.0
    http: HttpSpec = HttpSpec()
    # Prices by model: the Bedrock model id or the SageMaker endpoint name (rescore --estimate)
    pricing: dict[str, PriceSpec] = field(default_factory=dict)
