"""``cdc-scorer status``: per pipeline checkpoint, lag, leader, dead letters, snapshot state."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import RescoreJob, Rescores
from cdc_scorer.core.rescoring import job_dict
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources.registry import build_source
from cdc_scorer.stores import Store, StoredCheckpoint
from cdc_scorer.stores.registry import build_store


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

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def job_summary(job: RescoreJob) -> dict[str, object]:
    """A re-score as status shows it (not its cursor: a key is row data)."""
    hidden = ("cursor", "sweep_cursor", "check_types")
    return {k: v for k, v in job_dict(job).items() if k not in hidden}


def pipeline_status(spec: ScorerSpec) -> list[PipelineStatus]:
    """Every pipeline of the configuration, as the source and the store tell it now."""
    source = build_source(spec.source, spec.retry)
    store = build_store(spec.source, spec.retry)
    try:
        source.preflight()
        now = source.current_position()
        saved = store.load_checkpoints([p.name for p in spec.pipelines], source.decode_position)
        db_now = store.database_now()
        kept = dict(source.state_notes())
        return [
            replace(_status(store, p, saved.get(p.name), now, db_now), change_log=kept or None)
            for p in spec.pipelines
        ]
    finally:
        store.close()


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
    )
