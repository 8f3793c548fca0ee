"""Where each pipeline starts: its stored checkpoint, checked against the source, or a new
one from the source's position now; and where a stream shared by the pipelines starts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

import structlog

from cdc_scorer.core.errors import PositionLost
from cdc_scorer.core.feeds import Source
from cdc_scorer.core.positions import Position, oldest_position
from cdc_scorer.core.records import Checkpoint, RescoreJob, Rescores
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT, enqueue, now_iso, snapshot_state
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.core.store import DaemonStore

log = structlog.get_logger("cdc_scorer.core.checkpoints")

LOST_POSITION = "position lost"  # the reason of the re-score that replaces a lost position


def prepare_checkpoints(
    store: DaemonStore,
    source: Source,
    identity: str,
    pipelines: Sequence[PipelineSpec],
    rescore_lost: bool = False,
) -> dict[str, Checkpoint]:
    """Each pipeline's checkpoint: the stored one, checked resumable, or a new one streaming
    from now (with its first snapshot to run, unless ``snapshot = "never"``) where none is
    stored. A stored one this server cannot resume stops the start (``PositionLost``) or, with
    ``rescore_lost`` (the feed's ``on_lost_position = "rescore"``), streams from now with
    every row re-scored beside the stream. Call it holding the pipelines' locks: nobody else
    writes them then (blocking)."""
    saved = store.load_checkpoints([p.name for p in pipelines], source.decode_position)
    for name in (n for n, s in saved.items() if s.stopped_reason is not None):
        store.record_stop(name, None)  # it runs again
    now = source.current_position()
    checkpoints: dict[str, Checkpoint] = {}
    for pipeline in pipelines:
        stored = saved.get(pipeline.name)
        if stored is not None and stored.checkpoint.position is not None:
            checkpoint = stored.checkpoint
            try:
                source.check_resumable(stored.checkpoint.position)
            except PositionLost as lost:
                if not rescore_lost:
                    raise
                checkpoint = rescore_from(checkpoint, now, pipeline, LOST_POSITION)
                log.warning(
                    "checkpoint position lost: streaming from now, re-scoring every row",
                    pipeline=pipeline.name,
                    lost=str(stored.checkpoint.position),
                    now=str(now),
                    reason=str(lost),
                )
                store.save_checkpoint(pipeline.name, checkpoint, identity)
            else:
                if stored.server_identity != identity:
                    # A failover, a switchover: the position follows the data to this server.
                    log.info(
                        "resuming a checkpoint taken on another server",
                        pipeline=pipeline.name,
                        was=stored.server_identity,
                        now=identity,
                        position=str(checkpoint.position),
                    )
                    store.save_checkpoint(pipeline.name, checkpoint, identity)
        elif pipeline.snapshot == "initial":
            # Its predictions table may hold rows of an earlier deployment: the sweep removes
            # those whose source row is gone (a quick pass over an empty table).
            first = RescoreJob(
                id=uuid.uuid4().hex,
                reason=FIRST_SNAPSHOT,
                model_version=pipeline.model_version,
                requested_at=now_iso(),
                sweep=True,
            )
            checkpoint = Checkpoint(now, snapshot_state="running", rescores=Rescores(first))
            store.save_checkpoint(pipeline.name, checkpoint, identity)
        else:
            checkpoint = Checkpoint(position=now, snapshot_state="skipped")
            store.save_checkpoint(pipeline.name, checkpoint, identity)
        checkpoints[pipeline.name] = checkpoint
    return checkpoints


def rescore_from(
    checkpoint: Checkpoint, position: Position, pipeline: PipelineSpec, reason: str
) -> Checkpoint:
    """The checkpoint moved to ``position``, with a re-score of every row queued: what was
    between the old position and the new one is not in the stream, but is in the table — and
    the rows deleted meanwhile are not: the job sweeps their predictions away too."""
    job = RescoreJob(
        id=uuid.uuid4().hex,
        reason=reason,
        model_version=pipeline.model_version,
        requested_at=now_iso(),
        sweep=True,
    )
    rescores = enqueue(checkpoint.rescores, job)
    state = snapshot_state(checkpoint.snapshot_state, rescores)
    return replace(checkpoint, position=position, rescores=rescores, snapshot_state=state)


def stream_start(checkpoints: Sequence[Checkpoint]) -> Position:
    """The oldest position any pipeline still needs (each has one after
    :func:`prepare_checkpoints`)."""
    return oldest_position([c.position for c in checkpoints if c.position is not None])
