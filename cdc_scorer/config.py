"""Configuration: a TOML file plus ``CDC_SCORER_…`` environment overrides.

The only module that reads files and the environment. Unknown keys are rejected and every
problem is reported at once, each naming the key and the fix. Hands frozen dataclasses inward.

Environment overrides use ``__`` between levels: ``CDC_SCORER_SOURCE__PASSWORD`` sets
``[source] password`` (as ECS injects secrets).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cdc_scorer.errors import ConfigError
from cdc_scorer.spec import (
    AwsSpec,
    HttpSpec,
    PipelineSpec,
    RetrySpec,
    ScorerSpec,
    SourceSpec,
    column_prefix,
    pipeline_name,
    sql_identifier,
)


class _Settings(BaseSettings):
    """The file's contents and the environment, validated into the spec's dataclasses."""

    model_config = SettingsConfigDict(
        env_prefix="CDC_SCORER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    source: SourceSpec
    pipelines: tuple[PipelineSpec, ...] = ()
    aws: AwsSpec = AwsSpec()
    retry: RetrySpec = RetrySpec()
    shutdown_grace_s: float = Field(ScorerSpec.shutdown_grace_s, gt=0)
    http: HttpSpec = HttpSpec()

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


# Pydantic words an unknown or missing key of a dataclass differently from one of a model:
# the same problem gets the same words.
_MESSAGES = {
    "unexpected_keyword_argument": "Extra inputs are not permitted",
    "missing_argument": "Field required",
}
_FIXES = {
    "extra_forbidden": "remove it or fix its spelling (README: Configuration)",
    "unexpected_keyword_argument": "remove it or fix its spelling (README: Configuration)",
    "missing": "set it in the file or in the environment as CDC_SCORER_{env}",
    "missing_argument": "set it in the file or in the environment as CDC_SCORER_{env}",
    "literal_error": "use one of the listed values",
}
# What a name must look like, by the spec's predicate that checks it.
_SHAPES = {
    sql_identifier.__name__: (
        "a plain SQL identifier",
        "use a letter or _, then letters, digits, _ or $ (64 at most)",
    ),
    pipeline_name.__name__: ("a pipeline name", "use letters, digits, _ . or - (64 at most)"),
    column_prefix.__name__: (
        "a column name prefix",
        "use a letter or _, then letters, digits or _ (41 at most)",
    ),
}


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    env = "__".join(str(p).upper() for p in error["loc"] if not isinstance(p, int))
    message = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
    fix = _FIXES.get(error["type"], "").format(env=env)
    if error["type"] == "predicate_failed":
        shape = next((v for k, v in _SHAPES.items() if f"'{k}'" in message), None)
        if shape is not None:
            message, fix = f"{error['input']!r} is not {shape[0]}", shape[1]
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
        settings = _Settings(**raw)
    except ValidationError as exc:
        raise ConfigError([_describe(dict(e)) for e in exc.errors()]) from None
    spec = ScorerSpec(
        source=settings.source,
        pipelines=settings.pipelines,
        aws=settings.aws,
        retry=settings.retry,
        shutdown_grace_s=settings.shutdown_grace_s,
        http=settings.http,
    )
    problems = _cross_checks(spec)
    if problems:
        raise ConfigError(problems)
    return spec


def _cross_checks(config: ScorerSpec) -> list[str]:
    problems: list[str] = []
    if not config.pipelines:
        problems.append("pipelines: none configured — add a [[pipelines]] section (README)")
    names = [p.name for p in config.pipelines]
    outputs = [n for p in config.pipelines for n in (p.predictions, p.view)]
    for index, pipeline in enumerate(config.pipelines):
        if names.count(pipeline.name) > 1:
            problems.append(
                f"pipelines.{index}.name: {pipeline.name!r} is used twice — names must be unique"
            )
        for key, name in (
            ("predictions_table", pipeline.predictions),
            ("scored_view", pipeline.view),
        ):
            if outputs.count(name) > 1:
                problems.append(
                    f"pipelines.{index}.{key}: {name!r} is written by two pipelines — give each "
                    "model on a table its own predictions_table (champion / challenger)"
                )
        others = [p for p in config.pipelines if p.table == pipeline.table]
        if any(p.key_columns != pipeline.key_columns for p in others):
            problems.append(
                f"pipelines.{index}.key_columns: the pipelines of table {pipeline.table!r} must "
                "name the same key_columns"
            )
        if pipeline.table.startswith("cdc_scorer_") or pipeline.table.endswith("_predictions"):
            problems.append(
                f"pipelines.{index}.table: {pipeline.table!r} is one of the scorer's own tables "
                "— score a source table"
            )
    return problems
