"""The pipeline's linger and the stream first: a snapshot's or re-score's chunk in flight is no
reason for the change log's rows to wait for the linger; the stream's own batches in flight
are. The batches are written in their order all the same.

The scorer and the sink here are plug-point implementations that hold each batch until the
test lets it go, so what is in flight is the test's to say."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from cdc_scorer.core.pipeline import PipelineRunner
from cdc_scorer.core.records import (
    END,
    Batch,
    Checkpoint,
    Commit,
    Op,
    Prediction,
    RowChange,
    ScoredBatch,
)
from cdc_scorer.core.spec import BatchingSpec, PipelineSpec
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.services.sagemaker import SageMakerSpec
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition

AT = datetime(2026, 12, 7, 12, 0, 0)
LINGER_S = 30.0  # longer than the test: a batch that waited for it would time the test out
PIPELINE = PipelineSpec(
    name="p",
    table="t",
    model=SageMakerSpec("e", feature_columns=("n",)),
    key_columns=("id",),
    batching=BatchingSpec(max_rows=100, linger_ms=LINGER_S * 1000, max_in_flight=4),
)


def row(op: Op, i: int, seq: int | None) -> RowChange:
    tx = None if seq is None else Gtid(0, 1, seq)
    return RowChange(op, "t", (i,), {"id": i, "n": i}, tx, None if seq is None else AT)


def commit(seq: int) -> Commit:
    return Commit(MariadbGtidPosition("s", (Gtid(0, 1, seq),)), AT, Gtid(0, 1, seq))


class HeldScorer:
    """Scores each batch once the test releases its sequence; records what it was given."""

    def __init__(self) -> None:
        self.given: asyncio.Queue[Batch] = asyncio.Queue()
        self._release: dict[int, asyncio.Event] = {}

    def release(self, sequence: int) -> None:
        self._release.setdefault(sequence, asyncio.Event()).set()

    async def score(self, batch: Batch) -> ScoredBatch:
        if batch.upserts or batch.deletes:  # (a checkpoint-only batch at the end goes by)
            self.given.put_nowait(batch)
            await self._release.setdefault(batch.sequence, asyncio.Event()).wait()
        predictions = tuple(
            Prediction(c.key, {"label": "x"}, None, None, c.committed_at) for c in batch.upserts
        )
        return ScoredBatch(batch.sequence, predictions, (), (), batch.checkpoint)


class ListSink:
    def __init__(self) -> None:
        self.written: list[int] = []

    async def write(self, batches: Sequence[ScoredBatch]) -> None:
        self.written += [b.sequence for b in batches]

    def stopped(self, reason: str) -> None:
        raise AssertionError(reason)

    def close(self) -> None:
        pass


def test_a_chunk_in_flight_does_not_hold_the_streams_rows_but_the_streams_own_batch_does() -> None:
    async def run() -> list[int]:
        scorer, sink = HeldScorer(), ListSink()
        runner = PipelineRunner(PIPELINE, ("id",), Checkpoint(None), scorer, sink, Telemetry())
        task = asyncio.create_task(runner.run())
        # A chunk's rows (snapshot rows, merged at a watermark's commit): batch 0, held.
        runner.inbox.put_nowait((row(Op.SNAPSHOT, 1, None), commit(1)))
        chunk = await asyncio.wait_for(scorer.given.get(), 5)
        assert chunk.sequence == 0 and not chunk.from_stream()
        # A change-log row while the chunk is in flight: it goes at once (before, it waited
        # for the linger or for the chunk to be written).
        runner.inbox.put_nowait((row(Op.INSERT, 2, 2), commit(2)))
        stream = await asyncio.wait_for(scorer.given.get(), 5)
        assert stream.sequence == 1 and stream.from_stream()
        assert [c.key for c in stream.upserts] == [(2,)]
        # With the stream's own batch in flight, the next rows wait to fill a batch.
        runner.inbox.put_nowait((row(Op.INSERT, 3, 3), commit(3)))
        await asyncio.sleep(0.3)
        assert scorer.given.empty()
        # The stream's batch scored before the chunk: written after it, in order.
        scorer.release(1)
        await asyncio.sleep(0.1)
        assert sink.written == []
        scorer.release(0)
        # Its batch written, the stream's held row goes without the linger.
        held = await asyncio.wait_for(scorer.given.get(), 5)
        assert [c.key for c in held.upserts] == [(3,)]
        scorer.release(held.sequence)
        runner.inbox.put_nowait(END)
        await asyncio.wait_for(task, 5)
        return sink.written

    written = asyncio.run(run())
    assert written[:3] == [0, 1, 2] and written == sorted(written)
