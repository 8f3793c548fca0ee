"""The scorer's TOML config for the embedded default.

The demo, the tests and the benchmark all score the blog's two tables (``churn`` through
SageMaker, ``feedback`` through Comprehend) on a private MariaDB and the local endpoints; they
differ in a few keys each, given as ``overrides`` in the config's own shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w

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
    return tomli_w.dumps({**merged, "pipelines": pipelines})


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
