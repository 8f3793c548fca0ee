"""Configuration: a TOML file plus ``CDC_SCORER_…`` environment overrides.

The only module that reads files and the environment. Unknown keys are rejected and every
problem is reported at once, each naming the key and the fix. Hands frozen dataclasses inward.

Environment overrides use ``__`` between levels: ``CDC_SCORER_SOURCE__PASSWORD`` sets
``[source] password`` (as ECS injects secrets).
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cdc_scorer.errors import ConfigError
from cdc_scorer.spec import (
    COMPREHEND,
    SAGEMAKER,
    AwsSpec,
    BatchingSpec,
    ComprehendSpec,
    HttpSpec,
    PipelineSpec,
    RetrySpec,
    SageMakerSpec,
    ScorerSpec,
    SourceSpec,
)

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    user: str = "cdc_scorer"
    password: str = ""
    database: str = Field(pattern=_IDENTIFIER)
    # Unset: a random id per process, so the tasks of one ECS service never clash.
    server_id: int | None = Field(None, ge=1, le=4294967295)
    connect_timeout_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    queue_max_rows: int = Field(2000, ge=1)
    positions: Literal["auto", "file"] = "auto"
    decoder: Literal["fast", "stock"] = "fast"


# Rows per batch when the config does not say. SageMaker: a call costs the scorer ~0.8 ms of
# CPU whatever its size and a 500-row CSV body is ~100 KB of the 6 MB allowed, so bigger
# batches are what lets a backlog drain (100 → 500 rows: 12k → 17k rows/s end to end here,
# docs/benchmarks.md); under light load linger_ms cuts batches long before. Comprehend: 25
# documents a call, four calls a batch.
DEFAULT_MAX_ROWS = {SAGEMAKER: 500, COMPREHEND: 100}


class BatchingConfig(_Strict):
    max_rows: int | None = Field(None, ge=1, le=100_000)  # None: DEFAULT_MAX_ROWS[service]
    max_bytes: int = Field(1_000_000, ge=1_000, le=6_000_000)
    linger_ms: float = Field(200, ge=0)
    max_in_flight: int = Field(4, ge=1, le=256)


class SageMakerConfig(_Strict):
    endpoint_name: str = Field(min_length=1)
    feature_columns: list[str] = Field(min_length=1)
    content_type: Literal["text/csv"] = "text/csv"
    output_form: Literal["predicted_label", "predicted_label,probability", "probabilities"] = (
        "predicted_label,probability"
    )
    positive_label: str = "True."
    negative_label: str = "False."
    label_column: str = Field("will_churn", pattern=_IDENTIFIER)
    probability_column: str = Field("churn_probability", pattern=_IDENTIFIER)


class ComprehendConfig(_Strict):
    text_column: str = Field(pattern=_IDENTIFIER)
    language: str = "en"
    language_column: str | None = Field(None, pattern=_IDENTIFIER)
    overlong_text: Literal["truncate", "dead_letter"] = "truncate"
    sentiment_column: str = Field("sentiment", pattern=_IDENTIFIER)
    score_column_prefix: str = Field("sentiment_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    table: str = Field(pattern=_IDENTIFIER)
    service: Literal["sagemaker", "comprehend"]
    key_columns: list[str] | None = None
    snapshot: Literal["initial", "never"] = "initial"
    snapshot_chunk_rows: int = Field(1000, ge=1, le=100_000)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    sagemaker: SageMakerConfig | None = None
    comprehend: ComprehendConfig | None = None

    @model_validator(mode="after")
    def _service_section(self) -> PipelineConfig:
        if self.service == SAGEMAKER and self.sagemaker is None:
            raise ValueError("service is 'sagemaker': add a [pipelines.sagemaker] section")
        if self.service == COMPREHEND and self.comprehend is None:
            raise ValueError("service is 'comprehend': add a [pipelines.comprehend] section")
        other = self.comprehend if self.service == SAGEMAKER else self.sagemaker
        if other is not None:
            raise ValueError(f"service is {self.service!r}: remove the other service's section")
        return self


class AwsConfig(_Strict):
    region: str | None = None
    endpoint_url: str | None = None
    call_timeout_s: float = Field(30.0, gt=0)


class RetryConfig(_Strict):
    base_ms: float = Field(100, gt=0)
    cap_ms: float = Field(10_000, gt=0)


class HttpConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(9400, ge=0, le=65535)
    ready_max_lag_s: float = Field(30.0, gt=0)


class ScorerConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CDC_SCORER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    source: SourceConfig
    aws: AwsConfig = Field(default_factory=AwsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    shutdown_grace_s: float = Field(20.0, gt=0)
    http: HttpConfig = Field(default_factory=HttpConfig)
    pipelines: list[PipelineConfig] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (init holds the file's contents).
        return (env_settings, init_settings)


_FIXES = {
    "extra_forbidden": "remove it or fix its spelling (README: Configuration)",
    "missing": "set it in the file or in the environment as CDC_SCORER_{env}",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "use a plain SQL identifier",
}


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    env = "__".join(str(p).upper() for p in error["loc"] if not isinstance(p, int))
    message = error["msg"].removeprefix("Value error, ")
    fix = _FIXES.get(error["type"], "")
    fix = fix.format(env=env)
    return f"{key}: {message}" + (f" — {fix}" if fix else "")


def load_config(path: Path | str) -> ScorerSpec:
    """Read, validate and convert; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            [f"--config: file {path} not found — pass the path of a TOML file"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"--config: {path} is not valid TOML ({exc}) — fix the syntax"]
        ) from None
    try:
        config = ScorerConfig(**raw)
    except ValidationError as exc:
        raise ConfigError([_describe(dict(e)) for e in exc.errors()]) from None
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return _to_spec(config)


def _cross_checks(config: ScorerConfig) -> list[str]:
    problems: list[str] = []
    names = [p.name for p in config.pipelines]
    tables = [p.table for p in config.pipelines]
    for index, pipeline in enumerate(config.pipelines):
        if names.count(pipeline.name) > 1:
            problems.append(
                f"pipelines.{index}.name: {pipeline.name!r} is used twice — names must be unique"
            )
        if tables.count(pipeline.table) > 1:
            problems.append(
                f"pipelines.{index}.table: {pipeline.table!r} has two pipelines — one per table"
            )
        if pipeline.table.startswith("cdc_scorer_") or pipeline.table.endswith("_predictions"):
            problems.append(
                f"pipelines.{index}.table: {pipeline.table!r} is one of the scorer's own tables "
                "— score a source table"
            )
    if config.retry.cap_ms < config.retry.base_ms:
        problems.append("retry.cap_ms: must be >= retry.base_ms")
    return problems


def _to_spec(config: ScorerConfig) -> ScorerSpec:
    source = config.source
    pipelines = []
    for p in config.pipelines:
        sagemaker = comprehend = None
        if p.sagemaker is not None:
            s = p.sagemaker
            sagemaker = SageMakerSpec(
                endpoint_name=s.endpoint_name,
                feature_columns=tuple(s.feature_columns),
                content_type=s.content_type,
                output_form=s.output_form,
                positive_label=s.positive_label,
                negative_label=s.negative_label,
                label_column=s.label_column,
                probability_column=s.probability_column,
            )
        if p.comprehend is not None:
            c = p.comprehend
            comprehend = ComprehendSpec(
                text_column=c.text_column,
                language=c.language,
                language_column=c.language_column,
                overlong_text=c.overlong_text,
                sentiment_column=c.sentiment_column,
                score_column_prefix=c.score_column_prefix,
            )
        pipelines.append(
            PipelineSpec(
                name=p.name,
                table=p.table,
                service=p.service,
                key_columns=tuple(p.key_columns) if p.key_columns else None,
                batching=BatchingSpec(
                    max_rows=p.batching.max_rows or DEFAULT_MAX_ROWS[p.service],
                    max_bytes=p.batching.max_bytes,
                    linger_s=p.batching.linger_ms / 1000,
                    max_in_flight=p.batching.max_in_flight,
                ),
                snapshot=p.snapshot,
                snapshot_chunk_rows=p.snapshot_chunk_rows,
                sagemaker=sagemaker,
                comprehend=comprehend,
            )
        )
    return ScorerSpec(
        source=SourceSpec(
            host=source.host,
            port=source.port,
            user=source.user,
            password=source.password,
            database=source.database,
            server_id=source.server_id or random_server_id(),
            connect_timeout_s=source.connect_timeout_s,
            heartbeat_interval_s=source.heartbeat_interval_s,
            queue_max_rows=source.queue_max_rows,
            positions=source.positions,
            decoder=source.decoder,
        ),
        aws=AwsSpec(
            region=config.aws.region,
            endpoint_url=config.aws.endpoint_url,
            call_timeout_s=config.aws.call_timeout_s,
        ),
        pipelines=tuple(pipelines),
        retry=RetrySpec(base_s=config.retry.base_ms / 1000, cap_s=config.retry.cap_ms / 1000),
        shutdown_grace_s=config.shutdown_grace_s,
        http=HttpSpec(
            host=config.http.host,
            port=config.http.port,
            ready_max_lag_s=config.http.ready_max_lag_s,
        ),
    )


def random_server_id() -> int:
    # Above the ids people give real servers (small numbers), below the 32-bit limit.
    return random.randint(1 << 24, (1 << 32) - 1)
