"""Configuration: a TOML file plus ``CDC_SCORER_…`` environment overrides.

The only module that reads files and the environment. Unknown keys are rejected and every
problem is reported at once, each naming the key and the fix. Hands frozen dataclasses inward.

Environment overrides use ``__`` between levels: ``CDC_SCORER_SOURCE__PASSWORD`` sets
``[source] password`` (as ECS injects secrets), ``CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD``
``[source.debezium] password``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cdc_scorer.core.errors import ConfigError
from cdc_scorer.core.spec import (
    AwsSpec,
    FeedSpec,
    HttpSpec,
    PipelineSpec,
    PriceSpec,
    RetrySpec,
    ScorerSpec,
    SourceSpec,
    column_prefix,
    pipeline_name,
    slot_identifier,
    sql_identifier,
)
from cdc_scorer.services import ModelSpec
from cdc_scorer.services.registry import SERVICES
from cdc_scorer.sources.registry import FEEDS, NATIVE
from cdc_scorer.stores.registry import STORES


class _Settings(BaseSettings):
    """The file's contents and the environment, validated into the spec's dataclasses."""

    model_config = SettingsConfigDict(
        env_prefix="CDC_SCORER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # Validated with the feed's own section class (``_source``).
    source: dict[str, Any]
    # Validated one by one with their service's own section class (``_pipeline``).
    pipelines: tuple[dict[str, Any], ...] = ()
    aws: AwsSpec = AwsSpec()
    retry: RetrySpec = RetrySpec()
    shutdown_grace_s: float = Field(ScorerSpec.shutdown_grace_s, gt=0)
    http: HttpSpec = HttpSpec()
    pricing: dict[str, PriceSpec] = Field(default_factory=dict)
    # Moved to [source.debezium]: reported with its new place (``_moved``).
    kafka: Any = None

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
_KEYS = "docs/reference/configuration.md"
_FIXES = {
    "extra_forbidden": f"remove it or fix its spelling ({_KEYS})",
    "unexpected_keyword_argument": f"remove it or fix its spelling ({_KEYS})",
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
    slot_identifier.__name__: (
        "a replication slot name",
        "use lower-case letters, digits or _ (63 at most)",
    ),
    column_prefix.__name__: (
        "a column name prefix",
        "use a letter or _, then letters, digits or _ (41 at most)",
    ),
}


def _describe(error: Mapping[str, Any]) -> str:
    key = _key(error["loc"]) or "(top level)"
    env = "__".join(str(p).upper() for p in error["loc"] if not isinstance(p, int))
    message = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
    if error["type"] == "missing":
        message = "Field required"
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
    problems: list[str] = _moved(raw)
    settings: _Settings | None = None
    try:
        settings = _Settings(**raw)
    except ValidationError as exc:
        problems += [_describe(dict(e)) for e in exc.errors()]
    raw_source = raw.get("source") if settings is None else settings.source
    source, found = _source(raw_source)
    problems += found
    # The pipelines' problems are listed beside the others' (all at once).
    raw_pipelines = raw.get("pipelines", ()) if settings is None else settings.pipelines
    pipelines = []
    for index, section in enumerate(
        raw_pipelines if isinstance(raw_pipelines, list | tuple) else ()
    ):
        pipeline, found = _pipeline(index, section)
        problems += found
        if pipeline is not None:
            pipelines.append(pipeline)
    if problems or settings is None or source is None:
        raise ConfigError(problems)
    spec = ScorerSpec(
        source=source,
        pipelines=tuple(pipelines),
        aws=settings.aws,
        retry=settings.retry,
        shutdown_grace_s=settings.shutdown_grace_s,
        http=settings.http,
        pricing=dict(settings.pricing),
    )
    problems = _cross_checks(spec)
    if problems:
        raise ConfigError(problems)
    return spec


# The pipeline's fields declared before its model section: their problems are listed first,
# in the order of the file's keys as users read them (name, table, service, …).
_BEFORE_MODEL = tuple(
    f.name for f in dataclasses.fields(PipelineSpec)[: PipelineSpec.__match_args__.index("model")]
)


def _pipeline(index: int, section: Any) -> tuple[PipelineSpec | None, list[str]]:
    """One ``[[pipelines]]`` section: its service's own section validated by the service's
    class (services/registry.py), the rest by ``PipelineSpec``; every problem of both."""
    where: tuple[str | int, ...] = ("pipelines", index)
    if not isinstance(section, dict):
        return None, [_describe({"loc": where, "type": "", "msg": "must be a table"})]
    fields = dict(section)
    service = fields.pop("service", None)
    sections = {name: fields.pop(name) for name in list(fields) if name in SERVICES}
    model, model_problems = _model(where, service, sections)
    try:
        pipeline = TypeAdapter(PipelineSpec).validate_python({**fields, "model": model})
    except ValidationError as exc:
        errors = [e for e in exc.errors() if e["loc"][:1] != ("model",)]  # reported above
        first = [e for e in errors if e["loc"][:1] and e["loc"][0] in _BEFORE_MODEL]
        rest = [e for e in errors if e not in first]
        return None, [*_errors(first, where), *model_problems, *_errors(rest, where)]
    return (None if model_problems else pipeline), model_problems


def _model(
    where: tuple[str | int, ...], service: Any, sections: dict[str, Any]
) -> tuple[ModelSpec | None, list[str]]:
    """The pipeline's model section, validated by its service's class; or its problems."""
    if service is None:
        return None, [_describe({"loc": (*where, "service"), "type": "missing", "msg": ""})]
    spec_class = SERVICES.get(service) if isinstance(service, str) else None
    if spec_class is None:
        allowed = " or ".join(repr(name) for name in SERVICES)
        error = {"loc": (*where, "service"), "type": "literal_error"}
        return None, [_describe({**error, "msg": f"Input should be {allowed}"})]
    problems = []
    if service not in sections:
        problems.append(
            f"{_key(where)}: service is {service!r}: add a [pipelines.{service}] section"
        )
    if any(name != service for name in sections):
        problems.append(
            f"{_key(where)}: service is {service!r}: remove the other service's section"
        )
    if service not in sections:
        return None, problems
    try:
        model = TypeAdapter(spec_class).validate_python(sections[service])
    except ValidationError as exc:
        return None, [*problems, *_errors(exc.errors(), (*where, service))]
    return (None if problems else model), problems


# Keys of [source] that moved to the section of a change feed ([source.<feed>]); None: to the
# section of the engine's own log.
_MOVED = {
    "server_id": "binlog",
    "positions": "binlog",
    "decoder": "binlog",
    "publication": "pgoutput",
    "slot_name": "pgoutput",
    "heartbeat_interval_s": None,
    "queue_max_rows": None,
    "on_lost_position": None,
}


def _moved(raw: Mapping[str, Any]) -> list[str]:
    """Keys in the place they had before the change feeds got their own sections: each named
    with its new place (the file's and the environment's)."""
    problems = []
    if "kafka" in raw:
        problems.append(
            "kafka: the Kafka source's section is now [source.debezium] — rename [kafka] to "
            "[source.debezium] (environment: CDC_SCORER_SOURCE__DEBEZIUM__…)"
        )
    for name in sorted(os.environ):
        if name.upper().startswith("CDC_SCORER_KAFKA__"):
            key = name[len("CDC_SCORER_KAFKA__") :]
            problems.append(
                f"{name}: [kafka] is now [source.debezium] — set CDC_SCORER_SOURCE__DEBEZIUM__"
                f"{key} instead"
            )
    return problems


def _source(section: Any) -> tuple[SourceSpec | None, list[str]]:
    """``[source]`` with its feed's section (``[source.binlog]``, …) validated by the feed's
    own class (sources/registry.py); with none, the engine's own log with its defaults."""
    if not isinstance(section, dict):
        return None, []  # missing or not a table: reported with the other sections
    fields = dict(section)
    engine = fields.get("engine", "mysql")
    problems = []
    for key in [k for k in fields if k in _MOVED]:
        fields.pop(key)
        feed = _MOVED[key] or NATIVE.get(engine, "binlog")
        problems.append(
            f"source.{key}: moved to [source.{feed}] — write {key} there (environment: "
            f"CDC_SCORER_SOURCE__{feed.upper()}__{key.upper()})"
        )
    if not isinstance(engine, str) or engine not in STORES or engine not in NATIVE:
        known = " or ".join(repr(name) for name in NATIVE if name in STORES)
        problems.append(f"source.engine: {engine!r} is not {known} — use one of those")
    sections = {name: fields.pop(name) for name in list(fields) if name in FEEDS}
    feed_spec: FeedSpec | None = None
    if len(sections) > 1:
        names = " and ".join(f"[source.{n}]" for n in sections)
        problems.append(f"source: {names} are both set — keep the one change feed to read")
    elif sections:
        ((name, keys),) = sections.items()
        feed_spec, found = _feed(name, keys, engine)
        problems += found
    elif isinstance(engine, str) and engine in NATIVE:
        feed_spec = FEEDS[NATIVE[engine]].spec()
    try:
        source = TypeAdapter(SourceSpec).validate_python(
            {**fields, "feed": feed_spec or FeedSpec()}
        )
    except ValidationError as exc:
        return None, [*_errors(exc.errors(), ("source",)), *problems]
    return (None if problems or feed_spec is None else source), problems


def _feed(name: str, keys: Any, engine: Any) -> tuple[FeedSpec | None, list[str]]:
    spec_class = FEEDS[name].spec
    if isinstance(engine, str) and engine not in spec_class.engines:
        others = " or ".join(f"[source.{n}]" for n, f in FEEDS.items() if engine in f.spec.engines)
        return None, [
            f"source.{name}: reads the changes of {' or '.join(spec_class.engines)}, not of "
            f"engine {engine!r} — use {others or 'another engine'}"
        ]
    try:
        return TypeAdapter(spec_class).validate_python(keys), []
    except ValidationError as exc:
        return None, _errors(exc.errors(), ("source", name))


def _errors(errors: Iterable[Mapping[str, Any]], where: tuple[str | int, ...]) -> list[str]:
    out = []
    for e in errors:
        if e["type"] == "value_error" and not e["loc"]:
            # A section's own checks, a line each, name their keys: "key.sub: problem".
            for part in str(e["msg"]).removeprefix("Value error, ").splitlines():
                key, found, problem = part.partition(": ")
                if found and re.fullmatch(r"[A-Za-z_][\w.]*", key):
                    out.append(f"{_key((*where, key))}: {problem}")
                else:
                    out.append(f"{_key(where)}: {part}")
            continue
        out.append(_describe({**e, "loc": (*where, *e["loc"])}))
    return out


def _key(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _cross_checks(config: ScorerSpec) -> list[str]:
    problems: list[str] = []
    if not config.pipelines:
        problems.append(f"pipelines: none configured — add a [[pipelines]] section ({_KEYS})")
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
        backfill = pipeline.backfill
        problems += [
            f"pipelines.{index}.backfill.{p}" for p in pipeline.model.batch_problems(backfill)
        ]
        if backfill.mode != "realtime" and not config.source.feed.batch_backfills:
            problems.append(
                f"pipelines.{index}.backfill.mode: {backfill.mode!r} needs the scorer's own "
                f"re-score chunks; with [source.{config.source.feed.name}] the table is re-read "
                "by the feed itself and its rows arrive as changes (real-time) — set mode = "
                '"realtime"'
            )
    return problems


def select_pipelines(spec: ScorerSpec, names: str) -> ScorerSpec:
    """The configuration with only the pipelines named (``run --pipelines churn,feedback``):
    several processes can split one configuration, each with its own replica id, leader locks
    and checkpoint rows."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [p.name for p in spec.pipelines]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ConfigError(
            [
                f"--pipelines: {n!r} is not a pipeline of the configuration — use some of "
                f"{', '.join(known)}"
                for n in unknown or ["(none)"]
            ]
        )
    return replace(spec, pipelines=tuple(p for p in spec.pipelines if p.name in wanted))
