"""Recovery in process, bytewax style: feed a list of source items through the real pipeline
(batcher, sequencer, the SageMaker scorer on the local endpoint over HTTP), "crash" the sink at
its Nth write, run again from the checkpoint it kept, and assert exactly what was replayed.

The source and the sink are the two seams (``sources.ChangeStream``,
``pipeline.BatchSink``); everything between them is the product's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from cdc_scorer.core.coordinator import Coordinator
from cdc_scorer.core.pipeline import PipelineRunner
from cdc_scorer.core.positions import Position, TxId
from cdc_scorer.core.records import (
    Batch,
    Checkpoint,
    Commit,
    Op,
    Prediction,
    RowChange,
    ScoredBatch,
    SourceItem,
)
from cdc_scorer.core.router import Router
from cdc_scorer.core.spec import AwsSpec, BatchingSpec, PipelineSpec, RetrySpec
from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.endpoints import DEFAULT_ENDPOINT, ModelServer
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.services import Scorer
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.services.sagemaker import SageMakerSpec
from cdc_scorer.sources.binlog.positions import (
    BinlogCoordinate,
    BinlogPosition,
    Gtid,
    MariadbGtidPosition,
)

AT = datetime(2026, 11, 25, 12, 0, 0)
SERVER = "mariadb:server_id=1"
PIPELINE = PipelineSpec(
    name="churn",
    table="churn",
    model=SageMakerSpec(DEFAULT_ENDPOINT, feature_columns=FEATURE_COLUMNS),
    key_columns=("phone",),
    snapshot="never",
    # Small batches cut by rows only (a long linger): where batches end is deterministic.
    batching=BatchingSpec(max_rows=4, linger_ms=60_000, max_in_flight=3),
)
TRANSACTIONS = 12
ROWS_PER_TRANSACTION = 3  # batches of 4 rows end inside transactions too


class Crash(Exception):
    """The process dies: the transaction being written is not committed."""


def transactions() -> list[tuple[SourceItem, ...]]:
    """Source batches as the reader hands them over: each transaction's rows, then its commit.
    Every row has its own key, so no batch merges two versions of one row."""
    rows = list(ChurnRowGenerator(seed=11).rows(TRANSACTIONS * ROWS_PER_TRANSACTION))
    position: BinlogPosition = MariadbGtidPosition(SERVER)
    out: list[tuple[SourceItem, ...]] = []
    for seq in range(1, TRANSACTIONS + 1):
        tx = Gtid(0, 1, seq)
        chunk = rows[(seq - 1) * ROWS_PER_TRANSACTION : seq * ROWS_PER_TRANSACTION]
        out.append(tuple(RowChange(Op.INSERT, "churn", (r["phone"],), r, tx, AT) for r in chunk))
        position = position.after(tx, BinlogCoordinate("binlog.000001", seq))
        out.append((Commit(position, AT, tx),))
    return out


class ListSource:
    """A ``ChangeStream`` over a list: what a binlog reader would hand over, in order."""

    def __init__(self, items: list[tuple[SourceItem, ...]]) -> None:
        self._items = items
        self._stopped = False

    async def changes(self) -> AsyncGenerator[tuple[SourceItem, ...], None]:
        for items in self._items:
            if self._stopped:
                return
            yield items

    def stop(self) -> None:
        self._stopped = True

    def queue_depth(self) -> int:
        return 0

    def acknowledge(self, position: Position) -> None:
        pass

    def retained_bytes(self) -> int | None:
        return None


@dataclass
class MemorySink:
    """A ``BatchSink`` whose durable state is two fields: predictions and the checkpoint,
    replaced together per batch (as the real sink's one transaction does)."""

    crash_at_write: int | None = None
    predictions: dict[tuple[Any, ...], Prediction] = field(default_factory=dict)
    checkpoint: Checkpoint = field(default_factory=lambda: Checkpoint(None))
    writes: int = 0

    async def write(self, batches: Sequence[ScoredBatch]) -> None:
        # Each batch as its own transaction (one of the ways the real sink may commit a run).
        for batch in batches:
            self.writes += 1
            if self.writes == self.crash_at_write:
                raise Crash(f"crash at write {self.writes}")
            for prediction in batch.upserts:
                self.predictions[prediction.key] = prediction
            for key in batch.deletes:
                self.predictions.pop(key, None)
            self.checkpoint = batch.checkpoint

    def stopped(self, reason: str) -> None:
        raise AssertionError(f"no pipeline stops here: {reason}")

    def close(self) -> None:
        pass


class RecordingScorer:
    """The real scorer, and a record of which rows it was asked to score."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self.scored: list[RowChange] = []

    async def score(self, batch: Batch) -> ScoredBatch:
        self.scored.extend(batch.upserts)
        return await self._scorer.score(batch)


async def run_pipeline(
    models: ModelServer, items: list[tuple[SourceItem, ...]], sink: MemorySink
) -> RecordingScorer:
    """One process lifetime: from the sink's checkpoint until the list ends (or a crash)."""
    aws = AwsSpec(region="us-east-1", endpoint_url=models.url)
    async with create_client_context("sagemaker-runtime", aws, 4) as client:
        scorer = RecordingScorer(build_scorer(PIPELINE, client, RetrySpec()))
        telemetry = Telemetry()
        runner = PipelineRunner(PIPELINE, ("phone",), sink.checkpoint, scorer, sink, telemetry)
        router = Router({"churn": [runner.inbox]}, heartbeat_table="hb", on_heartbeat=print)
        coordinator = Coordinator(router, lambda: ListSource(items), telemetry)
        async with asyncio.TaskGroup() as group:
            group.create_task(runner.run())
            group.create_task(coordinator.run())
    return scorer


def pairs(items: list[tuple[SourceItem, ...]]) -> list[tuple[tuple[SourceItem, ...], TxId]]:
    """(a transaction's rows, its id) for the list that ``transactions()`` made."""
    out = []
    for rows, (commit,) in zip(items[::2], items[1::2], strict=True):
        assert isinstance(commit, Commit) and commit.tx is not None
        out.append((rows, commit.tx))
    return out


def keys_of(changes: list[RowChange] | list[tuple[SourceItem, ...]]) -> set[tuple[Any, ...]]:
    flat: list[Any] = []
    for item in changes:
        flat.extend(item if isinstance(item, tuple) else (item,))
    return {c.key for c in flat if isinstance(c, RowChange)}


@pytest.mark.parametrize("crash_at_write", [1, 3, 5])
async def test_crash_at_write_n_replays_exactly_the_uncommitted_transactions(
    models: ModelServer, crash_at_write: int
) -> None:
    items = transactions()
    # The oracle: one uninterrupted run.
    clean = MemorySink()
    await run_pipeline(models, items, clean)
    assert len(clean.predictions) == TRANSACTIONS * ROWS_PER_TRANSACTION

    sink = MemorySink(crash_at_write=crash_at_write)
    with pytest.raises(ExceptionGroup) as crashed:
        await run_pipeline(models, items, sink)
    assert crashed.group_contains(Crash)
    committed = sink.checkpoint.position
    applied_before = set(sink.predictions)
    assert sink.writes == crash_at_write

    sink.crash_at_write = None
    second = await run_pipeline(models, items, sink)

    # Exactly the transactions after the committed checkpoint are scored again: not one row
    # of a committed transaction, every row of the others (a batch committed inside a
    # transaction is replayed with it: idempotent upserts).
    after = [
        rows for rows, commit in pairs(items) if not (committed and committed.includes(commit))
    ]
    assert keys_of(second.scored) == keys_of(after)
    assert len(second.scored) == len(keys_of(after))  # each once
    assert not keys_of(second.scored) & (applied_before - keys_of(after))
    # And the end state is the uninterrupted run's.
    assert sink.checkpoint == clean.checkpoint
    assert {k: p.columns for k, p in sink.predictions.items()} == {
        k: p.columns for k, p in clean.predictions.items()
    }
