"""The scorer of a pipeline's service (the daemon and ``check`` build them the same way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc_scorer.errors import RetriableError
from cdc_scorer.scoring import Scorer
from cdc_scorer.scoring.aws import CallObserver
from cdc_scorer.scoring.comprehend import ComprehendScorer
from cdc_scorer.scoring.sagemaker import SageMakerScorer
from cdc_scorer.spec import COMPREHEND, SAGEMAKER, PipelineSpec, RetrySpec

# The aiobotocore client each pipeline service calls through.
CLIENT_NAMES = {SAGEMAKER: "sagemaker-runtime", COMPREHEND: "comprehend"}


def model_endpoint(pipeline: PipelineSpec) -> str:
    """What the predictions' ``model_endpoint`` column says."""
    if pipeline.sagemaker is not None:
        return pipeline.sagemaker.endpoint_name
    return ComprehendScorer.model_endpoint


def build_scorer(
    pipeline: PipelineSpec,
    client: Any,
    retry: RetrySpec,
    *,
    on_retry: Callable[[str, RetriableError], None] | None = None,
    on_call: CallObserver | None = None,
) -> Scorer:
    """The pipeline's scorer on ``client`` (an aiobotocore client of its service).

    Retriable errors are retried for ever, each reported to ``on_retry`` first; an
    ``on_retry`` that raises gives up instead (``check`` does, to report and move on)."""
    if pipeline.sagemaker is not None:
        return SageMakerScorer(
            client, pipeline.sagemaker, retry, on_retry=on_retry, on_call=on_call
        )
    assert pipeline.comprehend is not None
    return ComprehendScorer(client, pipeline.comprehend, retry, on_retry=on_retry, on_call=on_call)
