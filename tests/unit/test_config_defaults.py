"""Defaults the config fills in: batch sizes per service, and what the user says wins."""

from __future__ import annotations

from pathlib import Path

from cdc_scorer.config import load_config

CONFIG = """
[source]
host = "127.0.0.1"
port = 3306
user = "scorer"
database = "mltest"

[[pipelines]]
name = "churn"
table = "churn"
service = "sagemaker"
[pipelines.sagemaker]
endpoint_name = "churn-endpoint"
feature_columns = ["state", "acc_length"]
{churn_batching}

[[pipelines]]
name = "feedback"
table = "feedback"
service = "comprehend"
[pipelines.comprehend]
text_column = "user_feedback"
"""


def test_batch_size_defaults_per_service(tmp_path: Path) -> None:
    path = tmp_path / "scorer.toml"
    path.write_text(CONFIG.format(churn_batching=""))
    churn, feedback = load_config(path).pipelines
    assert churn.batching.max_rows == 500
    assert feedback.batching.max_rows == 100


def test_configured_batch_size_wins(tmp_path: Path) -> None:
    path = tmp_path / "scorer.toml"
    path.write_text(CONFIG.format(churn_batching="[pipelines.batching]\nmax_rows = 42"))
    churn, _ = load_config(path).pipelines
    assert churn.batching.max_rows == 42
