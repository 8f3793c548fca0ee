"""Scorers: serialise rows, call the model, parse answers. Nothing else."""

from __future__ import annotations

from typing import Protocol

from cdc_scorer.records import Batch, ScoredBatch


class Scorer(Protocol):
    model_endpoint: str

    async def score(self, batch: Batch) -> ScoredBatch: ...
