"""The model services, by the name ``pipelines[].service`` gives: a new service is one module
and one line here."""

from __future__ import annotations

from cdc_scorer.core.models import ModelSpec
from cdc_scorer.services.bedrock import BedrockSpec
from cdc_scorer.services.comprehend import ComprehendSpec
from cdc_scorer.services.sagemaker import SageMakerSpec

SERVICES: dict[str, type[ModelSpec]] = {
    spec.service: spec
    for spec in (
        SageMakerSpec,
        ComprehendSpec,
        BedrockSpec,
    )
}
