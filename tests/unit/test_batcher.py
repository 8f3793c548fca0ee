"""The batcher on its own: where batches are cut, what is skipped, what a key change becomes."""

from __future__ import annotations

import asyncio
from datetime import datetime

from cdc_scorer.core.batcher import NUMBER_BYTES, Batcher
from cdc_scorer.core.records import (
    Batch,
    Checkpoint,
    Commit,
    Op,
    RowChange,
    SourceItem,
)
from cdc_scorer.core.spec import BatchingSpec, PipelineSpec
from cdc_scorer.services.sagemaker import SageMakerSpec
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition

AT = datetime(2026, 11, 24, 12, 0, 0)


def pipeline(**batching: float) -> PipelineSpec:
    return PipelineSpec(
        name="p",
        table="t",
        model=SageMakerSpec("e", feature_columns=("text", "n")),
        key_columns=("id",),
        batching=BatchingSpec(**batching),  # type: ignore[arg-type]
    )


def insert(i: int, text: str, seq: int) -> RowChange:
    return RowChange(Op.INSERT, "t", (i,), {"id": i, "text": text, "n": i}, Gtid(0, 1, seq), AT)


def commit(seq: int) -> Commit:
    return Commit(MariadbGtidPosition("s", (Gtid(0, 1, seq),)), AT, Gtid(0, 1, seq))


def batches_of(spec: PipelineSpec, items: list[SourceItem]) -> list[Batch]:
    async def run() -> list[Batch]:
        inbox: asyncio.Queue[tuple[SourceItem, ...] | None] = asyncio.Queue()
        outbox: asyncio.Queue[Batch | None] = asyncio.Queue()
        batcher = Batcher(spec, ("id",), Checkpoint(None), inbox, outbox)
        inbox.put_nowait(tuple(items))
        inbox.put_nowait(None)
        await batcher.run()
        out: list[Batch] = []
        while (batch := outbox.get_nowait()) is not None:
            out.append(batch)
        return out

    return asyncio.run(run())


def test_long_text_cuts_a_batch_by_bytes() -> None:
    row_bytes = 2 * (NUMBER_BYTES + 1) + 1000
    spec = pipeline(max_rows=100, max_bytes=5 * row_bytes)
    items: list[SourceItem] = [insert(i, "x" * 1000, i) for i in range(12)]
    sizes = [len(b.upserts) for b in batches_of(spec, [*items, commit(11)])]
    # Full at 5 rows; a full batch is cut when the next item comes.
    assert sizes == [5, 5, 2]


def test_short_rows_cut_by_rows_not_bytes() -> None:
    spec = pipeline(max_rows=4, max_bytes=1_000_000)
    items: list[SourceItem] = [insert(i, "short", i) for i in range(10)]
    sizes = [len(b.upserts) for b in batches_of(spec, [*items, commit(9)])]
    assert sizes == [4, 4, 2]


def test_unchanged_inputs_skipped_and_key_change_is_delete_plus_insert() -> None:
    spec = pipeline(max_rows=100)
    before = {"id": 1, "text": "a", "n": 1, "other": 0}
    same = RowChange(Op.UPDATE, "t", (1,), {**before, "other": 1}, Gtid(0, 1, 1), AT, before)
    moved = RowChange(Op.UPDATE, "t", (2,), {**before, "id": 2}, Gtid(0, 1, 2), AT, before)
    (batch,) = batches_of(spec, [same, commit(1), moved, commit(2)])
    assert batch.rows_skipped == {"unchanged_inputs": 1}
    assert [c.key for c in batch.deletes] == [(1,)]
    assert [c.key for c in batch.upserts] == [(2,)]
    assert batch.checkpoint.position == commit(2).position
