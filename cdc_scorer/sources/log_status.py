"""``cdc-scorer status`` of a database's own log: per pipeline its checkpoint, lag, leader,
dead letters, snapshot state and re-scores, as the checkpoint rows keep them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cdc_scorer.core.batch import DONE, ENDED, MERGED, BatchJob
from cdc_scorer.core.feeds import PipelineReport, Source
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import RescoreJob, Rescores
from cdc_scorer.core.rescoring import job_dict
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.stores import Store, StoredCheckpoint


@dataclass(frozen=True)
class PipelineStatus:
    pipeline: str
    snapshot_state: str
    position: str | None
    checkpoint_age_s: float | None
    transactions_behind: int | None
    leader_connection: int | None
    predictions: int
    dead_letters: int
    dead_letters_24h: int
    stopped: str | None = None  # why the pipeline stopped (None: it has not)
    rescore: dict[str, object] | None = None  # the running re-score (or snapshot)
    rescores_queued: int = 0
    rescores_finished: tuple[dict[str, object], ...] = ()
    server: str | None = None  # the server the checkpoint was last written on
    # What the change log keeps for the scorer (PostgreSQL: the slot's retained WAL), shared
    # by the pipelines of one source.
    change_log: dict[str, str] | None = None
    # The running re-score's batch jobs, when it runs as a backfill (backfill_summary).
    backfill: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def job_summary(job: RescoreJob) -> dict[str, object]:
    """A re-score as status shows it (not its cursor: a key is row data)."""
    hidden = ("cursor", "sweep_cursor", "check_types")
    return {k: v for k, v in job_dict(job).items() if k not in hidden}


def pipeline_status(
    source: Source, pipelines: Sequence[PipelineSpec], store: Store
) -> list[PipelineStatus]:
    """Every pipeline, as the source and the store tell it now."""
    source.preflight()
    now = source.current_position()
    saved = store.load_checkpoints([p.name for p in pipelines], source.decode_position)
    db_now = store.database_now()
    kept = dict(source.state_notes())
    return [
        replace(_status(store, p, saved.get(p.name), now, db_now), change_log=kept or None)
        for p in pipelines
    ]


def log_status(
    source: Source, pipelines: Sequence[PipelineSpec], store: Store
) -> tuple[list[PipelineReport], list[tuple[str, str]]]:
    """``Source.status`` of a database's own log."""
    statuses = pipeline_status(source, pipelines, store)
    reports = [PipelineReport(s.pipeline, _lines(s), s.as_dict()) for s in statuses]
    return reports, list(source.state_notes())


def _lines(s: PipelineStatus) -> tuple[str, ...]:
    age = "-" if s.checkpoint_age_s is None else f"{s.checkpoint_age_s:.1f}s ago"
    lag = "-" if s.transactions_behind is None else f"{s.transactions_behind} transactions"
    leader = (
        "none (no instance running)"
        if s.leader_connection is None
        else f"connection {s.leader_connection}"
    )
    lines = [
        f"{s.pipeline}: snapshot {s.snapshot_state}; checkpoint {s.position or '-'} ({age}"
        f"{f', on {s.server}' if s.server else ''}); "
        f"behind: {lag}; leader: {leader}; predictions {s.predictions}; "
        f"dead letters {s.dead_letters} ({s.dead_letters_24h} in 24 h)"
        + (f"; STOPPED: {s.stopped}" if s.stopped else "")
    ]
    if s.rescore is not None:
        lines.append(f"  re-score running: {_job_line(s.rescore)}")
    if s.backfill is not None:
        lines.append(f"  backfill: {backfill_line(s.backfill)}")
    if s.rescores_queued:
        lines.append(f"  re-scores waiting: {s.rescores_queued}")
    return tuple(lines)


def backfill_summary(
    jobs: Sequence[BatchJob], running: RescoreJob | None
) -> dict[str, object] | None:
    """The running re-score's batch jobs: their states, records done of the total (answered
    by the service, or merged), and an ETA from the pace so far."""
    if running is None:
        return None
    mine = [j for j in jobs if j.rescore_id == running.id]
    if not mine:
        return None
    total = running.rows_total
    done = sum(j.records if j.state in (MERGED, DONE, ENDED) else j.processed for j in mine)
    started = min((j.submitted_at for j in mine if j.submitted_at), default=None)
    eta_s: float | None = None
    if started and total and 0 < done < total:
        # The jobs' times are the scorer's own (UTC), not the database's clock.
        now = datetime.now(UTC).replace(tzinfo=None)
        elapsed = (now - datetime.fromisoformat(started)).total_seconds()
        eta_s = max(0.0, elapsed * (total - done) / done)
    return {
        "jobs": {j.name: j.service_state or j.state for j in mine},
        "states": dict(Counter(j.state for j in mine)),
        "records_done": done,
        "records_total": total,
        "eta_s": eta_s,
    }


def backfill_line(summary: dict[str, Any]) -> str:
    states = ", ".join(f"{n} {state}" for state, n in sorted(summary["states"].items()))
    total = summary["records_total"]
    eta = summary["eta_s"]
    return (
        f"{len(summary['jobs'])} batch jobs ({states}); records {summary['records_done']}/"
        f"{'?' if total is None else total}"
        + (f", ETA {eta / 60:.0f} min" if eta is not None else "")
    )


def _job_line(job: dict[str, Any]) -> str:
    done, total = job["rows_done"], job["rows_total"]
    share = f" ({100 * done / total:.0f} %)" if total else ""
    where = f" where {job['where']}" if job["where"] else ""
    sweep = ""
    if job.get("sweep"):
        state = "done" if job.get("swept") else "sweeping"
        sweep = f", predictions of deleted rows removed: {job['orphans_removed']} ({state})"
    return (
        f"{job['reason']}{where}, model version {job['model_version']}: "
        f"{done}/{'?' if total is None else total} rows{share}{sweep}, id {job['id']}"
    )


def _status(
    store: Store,
    pipeline: PipelineSpec,
    found: StoredCheckpoint | None,
    now: Position,
    db_now: datetime | None,
) -> PipelineStatus:
    counts = store.counts(pipeline)
    checkpoint = found.checkpoint if found else None
    updated = found.updated_at if found else None
    at = checkpoint.position if checkpoint else None
    rescores = checkpoint.rescores if checkpoint else Rescores()
    return PipelineStatus(
        pipeline=pipeline.name,
        snapshot_state=checkpoint.snapshot_state if checkpoint else "not started",
        position=str(at) if at else None,
        checkpoint_age_s=(db_now - updated).total_seconds() if updated and db_now else None,
        transactions_behind=now.transactions_since(at) if at else None,
        leader_connection=counts.leader_connection,
        predictions=counts.predictions,
        dead_letters=counts.dead_letters,
        dead_letters_24h=counts.dead_letters_24h,
        stopped=found.stopped_reason if found else None,
        rescore=None if rescores.running is None else job_summary(rescores.running),
        rescores_queued=len(rescores.queued),
        rescores_finished=tuple(job_summary(j) for j in rescores.finished),
        server=found.server_identity if found else None,
        backfill=backfill_summary(
            [BatchJob.decode(text) for text in counts.batch_jobs], rescores.running
        ),
    )
