"""The keys every database-log feed has (the binlog's and pgoutput's sections subclass it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge

from cdc_scorer.core.spec import FeedSpec, Positive


def start_over(feed: str) -> str:
    """The fix for a position of ``feed`` that cannot be resumed: stream from now and re-score
    every row (the predictions of rows deleted meanwhile swept away)."""
    return (
        f'set source.{feed}.on_lost_position = "rescore" to stream from now and re-score every '
        "row, or run `cdc-scorer reposition --config FILE --pipeline NAME --now --rescore`"
    )


@dataclass(frozen=True)
class LogFeedSpec(FeedSpec):
    # The scorer's heartbeat row is written this often, so positions move on a quiet database
    # and the lag is measured.
    heartbeat_interval_s: Positive = 2.0
    queue_max_rows: Annotated[int, Ge(1)] = 2000  # row changes read, not yet taken
    # A checkpoint whose position this server cannot resume: stop with the cause and the fix,
    # or stream from now and re-score every pipeline's table beside the stream.
    on_lost_position: Literal["stop", "rescore"] = "stop"

    @property
    def lag_every_s(self) -> float:
        return self.heartbeat_interval_s

    @property
    def rescores_lost_position(self) -> bool:
        return self.on_lost_position == "rescore"
