"""Model services (SageMaker, Comprehend, Bedrock), each a section class and its codec behind
the contract of ``core/models.py`` (re-exported here), registered in ``services/registry.py``;
``driver.py`` owns retries, splitting, dead letters, budgets and the in-flight limit."""

from cdc_scorer.core.models import (
    Answer,
    Budget,
    ColumnKind,
    Grant,
    ItemError,
    ItemT,
    MeteredCodec,
    ModelCodec,
    ModelSpec,
    Outcome,
    PredictionColumn,
    Scorer,
)

__all__ = [
    "Answer",
    "Budget",
    "ColumnKind",
    "Grant",
    "ItemError",
    "ItemT",
    "MeteredCodec",
    "ModelCodec",
    "ModelSpec",
    "Outcome",
    "PredictionColumn",
    "Scorer",
]
