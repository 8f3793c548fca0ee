"""Scorers: serialise rows, call the model, parse answers. Nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cdc_scorer.errors import PoisonError
from cdc_scorer.records import Batch, RowChange, ScoredBatch


class Scorer(Protocol):
    model_endpoint: str

    async def score(self, batch: Batch) -> ScoredBatch: ...


def require_complete(change: RowChange, inputs: Sequence[str]) -> None:
    """A row whose model input the binlog carried only as a partial JSON diff is not scored
    from a guess: it is a dead letter with the reason and the fix."""
    if change.incomplete:
        partial = [c for c in inputs if c in change.incomplete]
        if partial:
            raise PoisonError(
                f"model input {', '.join(partial)} arrived as a partial JSON update "
                "(binlog_row_value_options=PARTIAL_JSON): set binlog_row_value_options='' "
                "so the binlog carries whole JSON values",
                reason="partial_json_update",
            )
