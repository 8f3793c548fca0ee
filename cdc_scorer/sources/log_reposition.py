"""``cdc-scorer reposition`` on a database's own log: move a pipeline's checkpoint to a
position an operator names (Debezium's set-binlog-position), checked against the server before
it is stored.

No daemon may run the pipeline meanwhile: the command holds the pipeline's leader lock while
it writes, and refuses when a daemon holds it.
"""

from __future__ import annotations

from dataclasses import replace

from cdc_scorer.core.checkpoints import rescore_from
from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.feeds import Source, Target
from cdc_scorer.core.records import Checkpoint
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.stores import Store

REQUESTED = "reposition"  # the reason of the re-score ``--rescore`` queues


def log_reposition(source: Source, pipeline: PipelineSpec, store: Store, to: Target) -> list[str]:
    """Store the position ``to`` names (``now``: the server's position now) as the pipeline's
    checkpoint, with a re-score of every row queued when ``to.rescore``."""
    if to.to not in ("position", "now"):
        raise FatalError(
            f"--to-{to.to}: moves a Kafka consumer group's offsets; this configuration reads "
            "the database's own log — name a position (--gtid, --file and --pos, --lsn) or --now"
        )
    position = to.value if to.to == "position" else None
    rescore = to.rescore
    info = source.preflight()
    table = store.inspect_tables([pipeline])[pipeline.table]
    sink = store.sink(pipeline, table.key_columns, info.identity, source.decode_position)
    try:
        if not sink.try_lead(0):
            raise FatalError(
                f"a cdc-scorer is running pipeline {pipeline.name} (it holds {sink.lock}): "
                "stop it, reposition, then start it again"
            )
        target = source.current_position() if position is None else source.position_from(position)
        source.check_resumable(target)
        try:
            found = store.load_checkpoints([pipeline.name], source.decode_position).get(
                pipeline.name
            )
        except ValueError:  # a position of another kind of source: start over here
            found = None
        before = found.checkpoint if found is not None else Checkpoint(None, "skipped")
        moved = replace(before, position=target)
        if rescore:
            moved = rescore_from(before, target, pipeline, REQUESTED)
        store.save_checkpoint(pipeline.name, moved, info.identity)
    finally:
        sink.close()
    was = str(before.position) if before.position is not None else "-"
    return [
        f"pipeline {pipeline.name} repositioned: {was} → {target}"
        + ("; every row is re-scored beside the stream at the next start" if rescore else "")
    ]
