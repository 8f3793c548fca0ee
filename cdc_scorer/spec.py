"""The validated configuration as frozen dataclasses: what the core sees (no pydantic here)."""

from __future__ import annotations

from dataclasses import dataclass, field

SAGEMAKER = "sagemaker"
COMPREHEND = "comprehend"


@dataclass(frozen=True)
class SourceSpec:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    server_id: int  # this process's replica id; random per process unless configured
    connect_timeout_s: float = 10.0
    heartbeat_interval_s: float = 2.0
    queue_max_rows: int = 2000  # row changes read and not yet taken by the pipelines
    positions: str = "auto"  # auto: GTIDs on MariaDB, file:pos on MySQL; file: file:pos
    decoder: str = "fast"  # rows events: fast (per-table compiled plans) | stock (the library)


@dataclass(frozen=True)
class BatchingSpec:
    max_rows: int = 100
    max_bytes: int = 1_000_000
    linger_s: float = 0.2
    max_in_flight: int = 4


@dataclass(frozen=True)
class SageMakerSpec:
    endpoint_name: str
    feature_columns: tuple[str, ...]
    content_type: str = "text/csv"
    output_form: str = "predicted_label,probability"
    positive_label: str = "True."
    negative_label: str = "False."
    label_column: str = "will_churn"
    probability_column: str = "churn_probability"


@dataclass(frozen=True)
class ComprehendSpec:
    text_column: str
    language: str = "en"
    language_column: str | None = None
    overlong_text: str = "truncate"  # truncate | dead_letter
    sentiment_column: str = "sentiment"
    score_column_prefix: str = "sentiment_"


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    table: str
    service: str
    key_columns: tuple[str, ...] | None  # None: the table's primary key
    batching: BatchingSpec
    snapshot: str = "initial"  # initial | never
    snapshot_chunk_rows: int = 1000
    sagemaker: SageMakerSpec | None = None
    comprehend: ComprehendSpec | None = None

    @property
    def predictions_table(self) -> str:
        return f"{self.table}_predictions"

    @property
    def scored_view(self) -> str:
        return f"{self.table}_scored"

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The source columns the model reads: an update touching none of them is skipped."""
        if self.sagemaker is not None:
            return self.sagemaker.feature_columns
        assert self.comprehend is not None
        language = (self.comprehend.language_column,) if self.comprehend.language_column else ()
        return (self.comprehend.text_column, *language)


@dataclass(frozen=True)
class AwsSpec:
    region: str | None = None
    endpoint_url: str | None = None  # None: the SDK's standard resolution (AWS_ENDPOINT_URL...)
    call_timeout_s: float = 30.0


@dataclass(frozen=True)
class RetrySpec:
    base_s: float = 0.1
    cap_s: float = 10.0


@dataclass(frozen=True)
class HttpSpec:
    """The operations port: /metrics, /healthz, /readyz (port 0: no server)."""

    host: str = "0.0.0.0"
    port: int = 9400
    ready_max_lag_s: float = 30.0


@dataclass(frozen=True)
class ScorerSpec:
    source: SourceSpec
    aws: AwsSpec
    pipelines: tuple[PipelineSpec, ...]
    retry: RetrySpec = RetrySpec()
    shutdown_grace_s: float = 20.0
    http: HttpSpec = HttpSpec()
