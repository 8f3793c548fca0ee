"""Where each pipeline starts: its stored checkpoint, checked against the source, or a new
one from the source's position now; and where a stream shared by the pipelines starts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog

from cdc_scorer.core.positions import Position, oldest_position
from cdc_scorer.core.records import Checkpoint, RescoreJob, Rescores
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT, now_iso
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.sources import Source
from cdc_scorer.stores import Store

log = structlog.get_logger("cdc_scorer.core.checkpoints")


def prepare_checkpoints(
    store: Store, source: Source, identity: str, pipelines: Sequence[PipelineSpec]
) -> dict[str, Checkpoint]:
    """Each pipeline's checkpoint: the stored one, checked resumable, or a new one streaming
    from now (with its first snapshot to run, unless ``snapshot = "never"``) where none is
    stored. Call it holding the pipelines' locks: nobody else writes them then (blocking)."""
    saved = store.load_checkpoints([p.name for p in pipelines], source.decode_position)
    for name in (n for n, s in saved.items() if s.stopped_reason is not None):
        store.record_stop(name, None)  # it runs again
    now = source.current_position()
    checkpoints: dict[str, Checkpoint] = {}
    for pipeline in pipelines:
        stored = saved.get(pipeline.name)
        if stored is not None and stored.checkpoint.position is not None:
            checkpoint = stored.checkpoint
            source.check_resumable(stored.checkpoint.position)
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
            first = RescoreJob(
                id=uuid.uuid4().hex,
                reason=FIRST_SNAPSHOT,
                model_version=pipeline.model_version,
                requested_at=now_iso(),
            )
            checkpoint = Checkpoint(now, snapshot_state="running", rescores=Rescores(first))
            store.save_checkpoint(pipeline.name, checkpoint, identity)
        else:
            checkpoint = Checkpoint(position=now, snapshot_state="skipped")
            store.save_checkpoint(pipeline.name, checkpoint, identity)
        checkpoints[pipeline.name] = checkpoint
    return checkpoints


def stream_start(checkpoints: Sequence[Checkpoint]) -> Position:
    """The oldest position any pipeline still needs (each has one after
    :func:`prepare_checkpoints`)."""
    return oldest_position([c.position for c in checkpoints if c.position is not None])
