"""The embedded default's config builder: valid for load_config, overrides land where asked."""

from __future__ import annotations

from pathlib import Path

from cdc_scorer.config import load_config
from cdc_scorer.local.churn_data import FEATURE_COLUMNS
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.services.comprehend import ComprehendSpec
from cdc_scorer.services.sagemaker import SageMakerSpec


def test_defaults_load_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / "scorer.toml"
    path.write_text(
        local_scorer_config(
            port=3307,
            database="mltest",
            endpoint_url="http://127.0.0.1:1",
            overrides={
                "shutdown_grace_s": 7,
                "source": {"binlog": {"decoder": "stock"}},
                "pipelines": {
                    "churn": {"batching": {"max_rows": 9}},
                    "feedback": {"comprehend": {"overlong_text": "dead_letter"}},
                },
            },
        )
    )
    spec = load_config(path)
    churn, feedback = spec.pipelines
    assert (spec.source.port, spec.source.database, getattr(spec.source.feed, "decoder", None)) == (
        3307,
        "mltest",
        "stock",
    )
    assert spec.shutdown_grace_s == 7
    assert churn.key_columns == ("phone",) and churn.batching.max_rows == 9
    assert isinstance(churn.model, SageMakerSpec)
    assert churn.model.feature_columns == FEATURE_COLUMNS
    assert isinstance(feedback.model, ComprehendSpec)
    assert (feedback.model.text_column, feedback.model.overlong_text) == (
        "user_feedback",
        "dead_letter",
    )
    assert feedback.model.language == "en"  # a default kept beside an override
