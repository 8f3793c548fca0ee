"""What the daemon counts: in-process counters for logs and the demo, Prometheus for operators.

Counters and histograms are updated where things happen (``Telemetry.on_…``); gauges of state
(queue depths, in flight, checkpoint age, lag, leader, snapshot state) are read at scrape time
by a collector, so the hot path never pays for them. Each daemon has its own registry.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cdc_scorer import __version__
from cdc_scorer.core.batch import DONE, ENDED, MERGED, SUBMITTED, BatchJob
from cdc_scorer.core.errors import CdcScorerError, PoisonError, RetriableError
from cdc_scorer.core.observer import PipelineState, SourceState
from cdc_scorer.core.records import ScoredBatch
from cdc_scorer.core.rescoring import remaining_rows

# `_created` series double every counter for little use, and Prometheus ignores them anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

SNAPSHOT_STATES = ("pending", "running", "done", "failed", "skipped")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)


def error_code(exc: CdcScorerError) -> str:
    if isinstance(exc, RetriableError):
        return exc.code
    if isinstance(exc, PoisonError):
        return exc.reason
    return "fatal"


class _Instruments:
    """The counters and histograms of one registry (the collector adds the gauges of state)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.events = PromCounter(
            "cdc_scorer_source_rows",
            "Row changes read from the change feed (binlog, WAL or Debezium topic), by table and "
            "operation",
            ["table", "operation"],
            registry=r,
        )
        self.scored = PromCounter(
            "cdc_scorer_rows_scored", "Rows scored and written", ["pipeline"], registry=r
        )
        self.partition_lag = Gauge(
            "cdc_scorer_source_partition_lag_messages",
            "Messages of this process's partitions not yet committed (a feed of partitions, "
            "as Debezium's topics: their end offsets less the database's offsets)",
            ["pipeline"],
            registry=r,
        )
        self.partitions = Gauge(
            "cdc_scorer_source_partitions",
            "Partitions of the change feed this process reads (a feed of partitions)",
            ["pipeline"],
            registry=r,
        )
        self.deleted = PromCounter(
            "cdc_scorer_rows_deleted",
            "Predictions removed for deleted source rows",
            ["pipeline"],
            registry=r,
        )
        self.skipped = PromCounter(
            "cdc_scorer_rows_skipped",
            "Row changes not sent to the model, by reason",
            ["pipeline", "reason"],
            registry=r,
        )
        self.dead = PromCounter(
            "cdc_scorer_rows_dead_lettered",
            "Rows written to the dead-letter table, by reason",
            ["pipeline", "reason"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "cdc_scorer_batch_rows",
            "Rows per committed batch (scored + deleted + dead-lettered)",
            ["pipeline"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "cdc_scorer_inference_duration_seconds",
            "Model call latency, every attempt",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.calls = PromCounter(
            "cdc_scorer_model_calls", "Model calls, every attempt", ["service"], registry=r
        )
        self.call_errors = PromCounter(
            "cdc_scorer_inference_errors",
            "Failed model calls by service and error code",
            ["service", "code"],
            registry=r,
        )
        self.retries = PromCounter(
            "cdc_scorer_retries", "Retries by stage and error code", ["stage", "code"], registry=r
        )
        self.sink_write = Histogram(
            "cdc_scorer_sink_write_duration_seconds",
            "Writing a run of a pipeline's batches (one, or those scored while the one before "
            "them was written) with their checkpoint, in one transaction while it stays "
            "moderate; waiting for the shared writer connection and retries included",
            ["pipeline"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            "cdc_scorer_freshness_seconds",
            "Source commit (the change's commit time as its feed tells it: binlog events to the "
            "second) to prediction committed",
            ["pipeline"],
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.disconnects = PromCounter(
            "cdc_scorer_source_disconnects",
            "Connections to the change log lost and re-opened",
            registry=r,
        )
        self.snapshot_rows = PromCounter(
            "cdc_scorer_snapshot_rows",
            "Rows read from the table by snapshot and re-score chunks",
            ["pipeline"],
            registry=r,
        )
        self.rescore_rows = PromCounter(
            "cdc_scorer_rescore_rows",
            "Chunk rows passed to the model by snapshots and re-scores",
            ["pipeline"],
            registry=r,
        )
        self.rescore_conflicts = PromCounter(
            "cdc_scorer_rescore_conflicts",
            "Chunk rows dropped because the stream changed them inside the chunk's window",
            ["pipeline"],
            registry=r,
        )
        self.leader_changes = PromCounter(
            "cdc_scorer_leader_acquisitions", "Times this process became the leader", registry=r
        )
        self.backfill_records = PromCounter(
            "cdc_scorer_backfill_records",
            "Records of backfill batch jobs: submitted, completed, failed (by the service), and "
            "as merged: answered (written with the job's prediction), superseded (the stream "
            "changed the row since: its prediction stands), realtime (sent through the "
            "endpoint), dead_letter",
            ["pipeline", "outcome"],
            registry=r,
        )


KEEP_BATCH_JOBS = 500


class Telemetry:
    """The one place the pipeline reports to; feeds both the counters and Prometheus."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # In-process counts (the demo, the stop log line, tests).
        self.rows_scored: Counter[str] = Counter()
        self.rows_deleted: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.rows_skipped: Counter[str] = Counter()
        self.model_calls: Counter[str] = Counter()
        self.batches: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.rescore_rows: Counter[str] = Counter()
        self.rescore_conflicts: Counter[str] = Counter()
        self.rescore_orphans: Counter[str] = Counter()
        # Each backfill job as last reported, by (pipeline, name); and its records by outcome.
        self.batch_jobs: dict[tuple[str, str], BatchJob] = {}
        self.backfill_records: Counter[tuple[str, str]] = Counter()
        self.disconnects = 0
        self.source = SourceState()
        self.pipelines: dict[str, PipelineState] = {}

        self._m = _Instruments(r)
        self._partitions_behind_s: dict[str, float] = {}
        r.register(_StateCollector(self))

    # ------------------------------------------------------------------ events
    def on_rows_read(self, table: str, operation: str, rows: int) -> None:
        self._m.events.labels(table, operation).inc(rows)

    def on_snapshot_rows(self, pipeline: str, rows: int) -> None:
        self._m.snapshot_rows.labels(pipeline).inc(rows)

    def on_chunk(self, pipeline: str, rows: int, conflicts: int, orphans: int = 0) -> None:
        self.rescore_rows[pipeline] += rows
        self.rescore_conflicts[pipeline] += conflicts
        self.rescore_orphans[pipeline] += orphans
        self._m.rescore_rows.labels(pipeline).inc(rows)
        self._m.rescore_conflicts.labels(pipeline).inc(conflicts)

    def on_batch_job(self, job: BatchJob) -> None:
        key = (job.pipeline, job.name)
        before = self.batch_jobs.pop(key, None)
        self.batch_jobs[key] = job
        was = before.state if before is not None else None
        counts: dict[str, int] = {}
        if job.state == SUBMITTED and was != SUBMITTED:
            counts["submitted"] = job.records
        if job.state in (DONE, ENDED) and was not in (DONE, ENDED):
            counts["completed"] = job.processed - job.failed
            counts["failed"] = job.records - job.processed + job.failed
        if job.state == MERGED and was != MERGED:
            counts |= {
                "answered": job.answered,
                "superseded": job.superseded,
                "realtime": job.realtime,
                "dead_letter": job.dead,
            }
        for outcome, records in counts.items():
            self.backfill_records[(job.pipeline, outcome)] += records
            self._m.backfill_records.labels(job.pipeline, outcome).inc(records)
        while len(self.batch_jobs) > KEEP_BATCH_JOBS:  # the oldest reported first
            self.batch_jobs.pop(next(iter(self.batch_jobs)))

    def on_retry(self, stage: str, exc: RetriableError) -> None:
        self.retries[stage] += 1
        self._m.retries.labels(stage, exc.code).inc()

    def model_call_observer(self, service: str) -> Callable[[float, CdcScorerError | None], None]:
        latency = self._m.latency.labels(service)
        calls = self._m.calls.labels(service)

        def observe(seconds: float, error: CdcScorerError | None) -> None:
            latency.observe(seconds)
            calls.inc()
            if error is not None:
                self._m.call_errors.labels(service, error_code(error)).inc()

        return observe

    def on_disconnect(self) -> None:
        self.disconnects += 1
        self._m.disconnects.inc()

    def on_leader(self, leader: bool) -> None:
        if leader and not self.source.leader:
            self._m.leader_changes.inc()
        self.source.leader = leader

    def on_partition_lag(
        self, pipeline: str, messages: int, seconds_behind: float, partitions: int
    ) -> None:
        """A feed of partitions (Debezium's topics), after each poll: what is not committed
        yet, and for how long this pipeline has not been caught up — the source lag
        (``/readyz``) is the worst of them."""
        self._m.partition_lag.labels(pipeline).set(messages)
        self._m.partitions.labels(pipeline).set(partitions)
        self.source.partitions[pipeline] = partitions
        self._partitions_behind_s[pipeline] = seconds_behind
        self.source.connected = True
        self.source.lag_measured_at = time.time()
        self.source.lag_measured_s = max(self._partitions_behind_s.values())

    def on_heartbeat(self, beat_at: datetime) -> None:
        now = time.time()
        self.source.lag_measured_at = now
        self.source.lag_measured_s = max(0.0, now - beat_at.replace(tzinfo=UTC).timestamp())

    def on_pipeline_stopped(self, pipeline: str, reason: str) -> None:
        state = self.pipelines.get(pipeline)
        if state is not None:
            state.stopped = reason

    def on_sink_write(self, pipeline: str, seconds: float) -> None:
        self._m.sink_write.labels(pipeline).observe(seconds)

    def on_commit(self, pipeline: str, scored: ScoredBatch) -> None:
        now = time.time()
        self.rows_scored[pipeline] += len(scored.upserts)
        self.rows_deleted[pipeline] += len(scored.deletes)
        self.model_calls[pipeline] += scored.model_calls
        self.batches[pipeline] += 1
        self._m.scored.labels(pipeline).inc(len(scored.upserts))
        self._m.deleted.labels(pipeline).inc(len(scored.deletes))
        rows = len(scored.upserts) + len(scored.deletes) + len(scored.dead_letters)
        if rows:
            self._m.batch_rows.labels(pipeline).observe(rows)
        for reason, count in scored.rows_skipped.items():
            self.rows_skipped[f"{pipeline}:{reason}"] += count
            self._m.skipped.labels(pipeline, reason).inc(count)
        for dead in scored.dead_letters:
            self.dead_letters[f"{pipeline}:{dead.reason}"] += 1
            self._m.dead.labels(pipeline, dead.reason).inc()
        observe = self._m.freshness.labels(pipeline).observe
        # The rows of a transaction share its commit time: convert it once per run of rows.
        last_at: datetime | None = None
        lag = 0.0
        for prediction in scored.upserts:
            at = prediction.source_committed_at
            if at is not None:
                if at is not last_at:
                    last_at, lag = at, max(0.0, now - at.replace(tzinfo=UTC).timestamp())
                observe(lag)
        state = self.pipelines.get(pipeline)
        if state is not None:
            state.last_checkpoint_at = now
            state.snapshot_state = scored.checkpoint.snapshot_state
            state.rescores = scored.checkpoint.rescores


class _StateCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        t = self._t
        now = time.time()
        info = InfoMetricFamily("cdc_scorer_build", "Version of cdc-scorer and Python")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info
        leader = GaugeMetricFamily(
            "cdc_scorer_leader",
            "1 while this process holds its pipelines' leader lock (a database log's feed; a "
            "consumer group holds none)",
        )
        leader.add_metric([], 1.0 if t.source.leader else 0.0)
        yield leader
        owns = GaugeMetricFamily(
            "cdc_scorer_owns_work",
            "1 while the change feed gives this process work: the leader lock, or partitions "
            "of a consumer group",
        )
        owns.add_metric([], 1.0 if t.source.owns_work else 0.0)
        yield owns
        connected = GaugeMetricFamily(
            "cdc_scorer_source_connected", "1 while the change stream is open and streaming"
        )
        connected.add_metric([], 1.0 if t.source.streaming and t.source.connected else 0.0)
        yield connected
        lag = GaugeMetricFamily(
            "cdc_scorer_source_lag_seconds",
            "Heartbeat written on the source → seen in the stream; grows while none arrives",
        )
        value = t.source.lag_s(now)
        if value is not None:
            lag.add_metric([], value)
        yield lag
        depth = GaugeMetricFamily(
            "cdc_scorer_queue_depth",
            "Items waiting in a queue (source: row changes; pipeline: rows events)",
            None,
            ["queue"],
        )
        depth.add_metric(["source"], float(t.source.queue_depth()))
        kept = GaugeMetricFamily(
            "cdc_scorer_source_retained_bytes",
            "Change log the server keeps for this reader (PostgreSQL: the replication slot's "
            "WAL since its restart LSN), as last measured; no sample where none is kept for it",
        )
        retained = t.source.retained_bytes()
        if retained is not None:
            kept.add_metric([], float(retained))
        yield kept
        in_flight = GaugeMetricFamily(
            "cdc_scorer_batches_in_flight",
            "Batches sent to the model, not yet committed",
            None,
            ["pipeline"],
        )
        age = GaugeMetricFamily(
            "cdc_scorer_checkpoint_age_seconds",
            "Seconds since the pipeline last committed a checkpoint",
            None,
            ["pipeline"],
        )
        stopped = GaugeMetricFamily(
            "cdc_scorer_pipeline_stopped",
            "1 once the pipeline stopped (its model's input column, or its table, is gone); the "
            "others go on",
            None,
            ["pipeline"],
        )
        snapshot = GaugeMetricFamily(
            "cdc_scorer_snapshot_state",
            "1 for the pipeline's snapshot state",
            None,
            ["pipeline", "state"],
        )
        remaining = GaugeMetricFamily(
            "cdc_scorer_rescore_rows_remaining",
            "Rows the running re-score (or snapshot) has still to read, as counted at its start",
            None,
            ["pipeline"],
        )
        queued = GaugeMetricFamily(
            "cdc_scorer_rescores_queued",
            "Re-scores waiting behind the running one",
            None,
            ["pipeline"],
        )
        # Every pipeline from the start (a sweep is rare: an absent series would read as none).
        orphans = CounterMetricFamily(
            "cdc_scorer_rescore_orphans_removed",
            "Predictions a re-score removed because their source row is gone (deleted while "
            "the change log's position was lost)",
            labels=["pipeline"],
        )
        for name, state in t.pipelines.items():
            orphans.add_metric([name], float(t.rescore_orphans[name]))
            remaining.add_metric([name], float(remaining_rows(state.rescores)))
            queued.add_metric([name], float(len(state.rescores.queued)))
            depth.add_metric([f"pipeline:{name}"], float(state.inbox_depth()))
            in_flight.add_metric([name], float(state.in_flight()))
            age.add_metric([name], max(0.0, now - state.last_checkpoint_at))
            stopped.add_metric([name], 0.0 if state.stopped is None else 1.0)
            for s in SNAPSHOT_STATES:
                snapshot.add_metric([name, s], 1.0 if state.snapshot_state == s else 0.0)
        jobs = GaugeMetricFamily(
            "cdc_scorer_backfill_jobs",
            "Backfill batch jobs of this process by state (prepared, submitted, done, ended, "
            "merged, realtime, abandoned), the last few hundred",
            None,
            ["pipeline", "state"],
        )
        by_state = Counter((j.pipeline, j.state) for j in t.batch_jobs.values())
        for (pipeline, job_state), count in sorted(by_state.items()):
            jobs.add_metric([pipeline, job_state], float(count))
        yield from (depth, in_flight, age, stopped, snapshot, remaining, queued, orphans, jobs)
        yield from _spending(t.pipelines)


def _spending(pipelines: Mapping[str, PipelineState]) -> Iterator[Metric]:
    """The metered services' requests, tokens and time waited for budget, per pipeline."""
    requests = CounterMetricFamily(
        "cdc_scorer_budget_requests",
        "Model calls granted by the pipeline's budget",
        None,
        ["pipeline"],
    )
    tokens = CounterMetricFamily(
        "cdc_scorer_model_tokens",
        "Tokens the model's answers report (input, output)",
        None,
        ["pipeline", "direction"],
    )
    waited = CounterMetricFamily(
        "cdc_scorer_budget_wait_seconds",
        "Time calls waited for the budget, by the rows they score (stream, rescore)",
        None,
        ["pipeline", "traffic"],
    )
    for name, state in pipelines.items():
        if state.spending is None:
            continue
        spent = state.spending()
        requests.add_metric([name], spent["requests"])
        tokens.add_metric([name, "input"], spent["input_tokens"])
        tokens.add_metric([name, "output"], spent["output_tokens"])
        waited.add_metric([name, "stream"], spent["wait_stream_s"])
        waited.add_metric([name, "rescore"], spent["wait_rescore_s"])
    yield from (requests, tokens, waited)
