"""``cdc-scorer reposition``: move a pipeline's checkpoint to a position an operator names
(Debezium's set-binlog-position), checked against the server before it is stored.

No daemon may run the pipeline meanwhile: the command holds the pipeline's leader lock while
it writes, and refuses when a daemon holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cdc_scorer.core.checkpoints import rescore_from
from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.records import Checkpoint
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources.registry import source_of
from cdc_scorer.stores.registry import build_store

REQUESTED = "reposition"  # the reason of the re-score ``--rescore`` queues


@dataclass(frozen=True)
class Moved:
    was: str | None
    now: str
    rescore: bool


def reposition(
    spec: ScorerSpec, pipeline: PipelineSpec, position: str | None, *, rescore: bool
) -> Moved:
    """Store ``position`` (None: the server's position now) as the pipeline's checkpoint, with
    a re-score of every row queued when ``rescore``."""
    store = build_store(spec.source, spec.retry)
    try:
        source = source_of(spec, store)
        info = source.preflight()
        table = store.inspect_tables([pipeline])[pipeline.table]
        sink = store.sink(pipeline, table.key_columns, info.identity, source.decode_position)
        try:
            if not sink.try_lead(0):
                raise FatalError(
                    f"a cdc-scorer is running pipeline {pipeline.name} (it holds {sink.lock}): "
                    "stop it, reposition, then start it again"
                )
            target = (
                source.current_position() if position is None else source.position_from(position)
            )
            source.check_resumable(target)
            stored = store.load_checkpoints([pipeline.name], source.decode_position)
            found = stored.get(pipeline.name)
            before = found.checkpoint if found is not None else Checkpoint(None, "skipped")
            moved = replace(before, position=target)
            if rescore:
                moved = rescore_from(before, target, pipeline, REQUESTED)
            store.save_checkpoint(pipeline.name, moved, info.identity)
        finally:
            sink.close()
    finally:
        store.close()
    was = str(before.position) if before.position is not None else None
    return Moved(was, str(target), rescore)
