"""What the core reports as it runs, and the state a scrape reads (``ops/metrics.py``'s
``Telemetry`` is the observer of a daemon; the core names only this contract)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cdc_scorer.core.batch import BatchJob
from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.records import Rescores, ScoredBatch


@dataclass
class PipelineState:
    """What the collector reads of one pipeline at scrape time (set by the app)."""

    snapshot_state: str = "pending"
    rescores: Rescores = field(default_factory=Rescores)  # as last committed
    last_checkpoint_at: float = field(default_factory=time.time)
    inbox_depth: Callable[[], int] = lambda: 0
    in_flight: Callable[[], int] = lambda: 0
    stopped: str | None = None  # why the pipeline stopped (the others go on)
    # A metered model service's spending: requests, input_tokens, output_tokens,
    # wait_stream_s, wait_rescore_s (services/budget.py).
    spending: Callable[[], Mapping[str, float]] | None = None


@dataclass
class SourceState:
    connected: bool = False
    streaming: bool = False
    # Holds its pipelines' leader lock (a database log's feed: one process at a time).
    leader: bool = False
    # Partitions of the change feed this process was given, per pipeline (a consumer group).
    partitions: dict[str, int] = field(default_factory=dict)
    queue_depth: Callable[[], int] = lambda: 0
    # Bytes of change log the server keeps for this reader (a replication slot's WAL; None:
    # not kept for it, or not known yet).
    retained_bytes: Callable[[], int | None] = lambda: None
    # How often the feed measures its lag (a log feed: its heartbeat row read back; Debezium:
    # the partitions' newest message against the broker's end) — the last measurement, when it
    # was taken, and how long a silence may last before the lag counts as growing.
    lag_every_s: float = 2.0
    lag_measured_at: float | None = None
    lag_measured_s: float | None = None

    @property
    def owns_work(self) -> bool:
        """The change feed gave this process work: the leader lock, or some partitions."""
        return self.leader or any(self.partitions.values())

    def lag_s(self, now: float | None = None) -> float | None:
        """Lag of the stream behind the source, growing while no measurement arrives."""
        if self.lag_measured_at is None or self.lag_measured_s is None:
            return None
        now = time.time() if now is None else now
        silent = now - self.lag_measured_at - self.lag_every_s
        return max(self.lag_measured_s, silent, 0.0)


class Observer(Protocol):
    """Where the pipelines and the feeds report (the daemon's telemetry)."""

    pipelines: dict[str, PipelineState]
    source: SourceState

    def on_rows_read(self, table: str, operation: str, rows: int) -> None: ...

    def on_snapshot_rows(self, pipeline: str, rows: int) -> None: ...

    def on_chunk(self, pipeline: str, rows: int, conflicts: int, orphans: int = 0) -> None: ...

    def on_batch_job(self, job: BatchJob) -> None:
        """A backfill's batch job changed (submitted, ended, merged...)."""

    def on_retry(self, stage: str, exc: RetriableError) -> None: ...

    def on_disconnect(self) -> None: ...

    def on_leader(self, leader: bool) -> None: ...

    def on_partition_lag(
        self, pipeline: str, messages: int, seconds_behind: float, partitions: int
    ) -> None: ...

    def on_heartbeat(self, beat_at: datetime) -> None: ...

    def on_pipeline_stopped(self, pipeline: str, reason: str) -> None: ...

    def on_sink_write(self, pipeline: str, seconds: float) -> None: ...

    def on_commit(self, pipeline: str, scored: ScoredBatch) -> None: ...
