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


def test_with_nothing_in_flight_a_committed_row_goes_at_once() -> None:
    """The linger buys batching only while batches are in flight: an idle pipeline's rows go
    when their transaction commits and the inbox has nothing more; a transaction not yet
    committed waits; rows that wait while a batch is in flight go when the pipeline says it
    is idle again (the empty tuple), long before the linger."""
    spec = pipeline(max_rows=100, linger_ms=60_000)

    async def run() -> None:
        inbox: asyncio.Queue[tuple[SourceItem, ...] | None] = asyncio.Queue()
        outbox: asyncio.Queue[Batch | None] = asyncio.Queue()
        busy = [False]
        batcher = Batcher(spec, ("id",), Checkpoint(None), inbox, outbox, idle=lambda: not busy[0])
        task = asyncio.create_task(batcher.run())
        inbox.put_nowait((insert(1, "a", 1),))  # its commit has not come
        await asyncio.sleep(0.05)
        assert outbox.empty()
        inbox.put_nowait((commit(1),))
        first = await asyncio.wait_for(outbox.get(), 1)
        assert first is not None and [c.key for c in first.upserts] == [(1,)]
        busy[0] = True  # that batch is now in flight: the next rows wait to batch
        inbox.put_nowait((insert(2, "b", 2), commit(2), insert(3, "c", 3), commit(3)))
        await asyncio.sleep(0.05)
        assert outbox.empty()
        busy[0] = False
        inbox.put_nowait(())  # the pipeline's wake-up: its last batch is written
        second = await asyncio.wait_for(outbox.get(), 1)
        assert second is not None and [c.key for c in second.upserts] == [(2,), (3,)]
        inbox.put_nowait(None)
        await task

    asyncio.run(run())


def test_without_an_idle_signal_rows_wait_for_the_linger() -> None:
    spec = pipeline(max_rows=100, linger_ms=150)

    async def run() -> float:
        inbox: asyncio.Queue[tuple[SourceItem, ...] | None] = asyncio.Queue()
        outbox: asyncio.Queue[Batch | None] = asyncio.Queue()
        batcher = Batcher(spec, ("id",), Checkpoint(None), inbox, outbox, idle=lambda: False)
        task = asyncio.create_task(batcher.run())
        started = asyncio.get_running_loop().time()
        inbox.put_nowait((insert(1, "a", 1), commit(1)))
        batch = await asyncio.wait_for(outbox.get(), 5)
        waited = asyncio.get_running_loop().time() - started
        assert batch is not None and len(batch.upserts) == 1
        inbox.put_nowait(None)
        await task
        return waited

    assert asyncio.run(run()) >= 0.14
