"""``cdc-scorer status``: per pipeline checkpoint, lag, leader, dead letters, snapshot state."""

from __future__ import annotations

from dataclasses import dataclass

from cdc_scorer.core.records import RescoreJob, Rescores
from cdc_scorer.core.rescoring import job_dict
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.mysql.connection import Connection, mysql_errors, quote
from cdc_scorer.sources.binlog.server import ServerInfo, preflight_binlog
from cdc_scorer.stores.mysql.checkpoints import current_position, load_checkpoints
from cdc_scorer.stores.mysql.leader import lock_holder, lock_name
from cdc_scorer.stores.mysql.schema import DEAD_LETTER_TABLE


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

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def job_summary(job: RescoreJob) -> dict[str, object]:
    """A re-score as status shows it (not its cursor: a key is row data)."""
    return {k: v for k, v in job_dict(job).items() if k not in ("cursor", "check_types")}


def pipeline_status(conn: Connection, spec: ScorerSpec) -> list[PipelineStatus]:
    server: ServerInfo = preflight_binlog(conn, spec.source.positions)
    now = current_position(conn, server)
    names = [p.name for p in spec.pipelines]
    saved = load_checkpoints(conn, names)
    with mysql_errors("reading the time"), conn.cursor() as cursor:
        cursor.execute("SELECT NOW(6)")
        (db_now,) = cursor.fetchone() or (None,)
    statuses = []
    for pipeline in spec.pipelines:
        with mysql_errors(f"counting rows of {pipeline.name}"), conn.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {quote(pipeline.predictions)}")
            (predictions,) = cursor.fetchone() or (0,)
            cursor.execute(
                f"SELECT COUNT(*), COALESCE(SUM(created_at > NOW(6) - INTERVAL 1 DAY), 0) "
                f"FROM {DEAD_LETTER_TABLE} WHERE pipeline=%s",
                (pipeline.name,),
            )
            dead, dead_24h = cursor.fetchone() or (0, 0)
        found = saved.get(pipeline.name)
        checkpoint = found.checkpoint if found else None
        updated = found.updated_at if found else None
        at = checkpoint.position if checkpoint else None
        rescores = checkpoint.rescores if checkpoint else Rescores()
        statuses.append(
            PipelineStatus(
                pipeline=pipeline.name,
                snapshot_state=checkpoint.snapshot_state if checkpoint else "not started",
                position=str(at) if at else None,
                checkpoint_age_s=(db_now - updated).total_seconds() if updated and db_now else None,
                transactions_behind=now.transactions_since(at) if at else None,
                leader_connection=lock_holder(conn, lock_name(spec.source.database, pipeline.name)),
                predictions=int(predictions),
                dead_letters=int(dead),
                dead_letters_24h=int(dead_24h),
                stopped=found.stopped_reason if found else None,
                rescore=None if rescores.running is None else job_summary(rescores.running),
                rescores_queued=len(rescores.queued),
                rescores_finished=tuple(job_summary(j) for j in rescores.finished),
            )
        )
    return statuses
