"""The scorer's TOML config for the embedded default.

The demo, the tests and the benchmark all score the blog's two tables (``churn`` through
SageMaker, ``feedback`` through Comprehend) on a private MariaDB and the local endpoints; they
differ in a few keys each, given as ``overrides`` in the config's own shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cdc_scorer.local.churn_data import FEATURE_COLUMNS
from cdc_scorer.local.endpoints import DEFAULT_ENDPOINT


def local_scorer_config(
    *,
    port: int,
    database: str,
    endpoint_url: str,
    http_port: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """The config text. ``overrides`` merges into the defaults key by key; its
    ``pipelines`` is a mapping by pipeline name (``churn``, ``feedback``)."""
    config: dict[str, Any] = {
        "source": {"host": "127.0.0.1", "port": port, "user": "root", "database": database},
        "http": {"host": "127.0.0.1", "port": http_port},
        "aws": {"region": "us-east-1", "endpoint_url": endpoint_url},
        "pipelines": {
            "churn": {
                "table": "churn",
                "key_columns": ["phone"],
                "service": "sagemaker",
                "sagemaker": {
                    "endpoint_name": DEFAULT_ENDPOINT,
                    "feature_columns": list(FEATURE_COLUMNS),
                },
            },
            "feedback": {
                "table": "feedback",
                "service": "comprehend",
                "comprehend": {"text_column": "user_feedback", "language": "en"},
            },
        },
    }
    merged = _merge(config, overrides or {})
    pipelines = [{"name": name, **keys} for name, keys in merged.pop("pipelines").items()]
    return _toml(merged, pipelines)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _toml(config: Mapping[str, Any], pipelines: list[dict[str, Any]]) -> str:
    lines = _scalars(config)
    for name, table in config.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{name}]", *_scalars(table)]
    for pipeline in pipelines:
        lines += ["", "[[pipelines]]", *_scalars(pipeline)]
        for name, table in pipeline.items():
            if isinstance(table, Mapping):
                lines += [f"[pipelines.{name}]", *_scalars(table)]
    return "\n".join(lines) + "\n"


def _scalars(table: Mapping[str, Any]) -> list[str]:
    return [f"{k} = {_value(v)}" for k, v in table.items() if not isinstance(v, Mapping)]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
