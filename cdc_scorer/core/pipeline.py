"""One pipeline: batcher → concurrent scoring (bounded in flight) → ordered commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from cdc_scorer.core.batcher import Batcher
from cdc_scorer.core.errors import CdcScorerError, PipelineStopped
from cdc_scorer.core.models import Scorer
from cdc_scorer.core.observer import Observer, PipelineState
from cdc_scorer.core.records import END, Batch, Checkpoint, ScoredBatch, SourceItem
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.sequencer import Sequencer
from cdc_scorer.core.spec import PipelineSpec

Inbox = asyncio.Queue[tuple[SourceItem, ...] | None]
log = structlog.get_logger("cdc_scorer.core.pipeline")


class BatchSink(Protocol):
    """Where scored batches go, in order: predictions and the checkpoint that covers them in
    one durable step (``sink.Sink``: one database transaction)."""

    async def write(self, batches: Sequence[ScoredBatch]) -> None:
        """The batches in order, each with its checkpoint (several may share a transaction:
        a later checkpoint covers the earlier batches)."""

    def stopped(self, reason: str) -> None:
        """Record why the pipeline stopped (blocking: run it in a thread)."""

    def close(self) -> None: ...


class ChunkReader(Protocol):
    """Reads re-score chunks as the pipeline's jobs ask (``snapshotter.Snapshotter``)."""

    async def run(self) -> None: ...


class PipelineRunner:
    """Items from :attr:`inbox` (``None`` ends the run) → batches → scores → the sink; and
    the pipeline's re-score chunks, read by ``snapshotter`` and merged through ``exchange``."""

    def __init__(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        checkpoint: Checkpoint,
        scorer: Scorer,
        sink: BatchSink,
        telemetry: Observer,
        *,
        exchange: ChunkExchange | None = None,
        snapshotter: ChunkReader | None = None,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._on_committed = on_committed  # after each durable write: the checkpoint moved
        self.checkpoint = checkpoint
        self.inbox: Inbox = asyncio.Queue(maxsize=64)
        in_flight = pipeline.batching.max_in_flight
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=in_flight)
        self._sequencer: Sequencer[ScoredBatch] = Sequencer(in_flight, on_idle=self._wake)
        self._exchange = exchange if exchange is not None else ChunkExchange()
        # The sequences of the batches with change-log rows, from the batcher until written.
        self._stream_batches: set[int] = set()
        self._snapshotter = snapshotter
        # The batcher skips transactions the pipeline applied already.
        self._batcher = Batcher(
            pipeline,
            key_columns,
            checkpoint,
            self.inbox,
            self._batches,
            exchange=self._exchange,
            on_chunk=lambda rows, conflicts, orphans: telemetry.on_chunk(
                pipeline.name, rows, conflicts, orphans
            ),
            idle=self._idle,
            on_emit=self._emitted,
        )
        self._scorer = scorer
        self._sink = sink
        self._telemetry = telemetry
        telemetry.pipelines[pipeline.name] = PipelineState(
            snapshot_state=checkpoint.snapshot_state,
            rescores=checkpoint.rescores,
            inbox_depth=self.inbox.qsize,
            in_flight=self._sequencer.in_flight,
        )

    async def run(self) -> None:
        name = self.pipeline.name
        stopped: str | None = None
        try:
            async with asyncio.TaskGroup() as group:
                chunks = None
                if self._snapshotter is not None:
                    chunks = group.create_task(self._snapshotter.run(), name=f"{name}-chunks")
                self._exchange.job_changed(self.checkpoint.rescores.running)
                group.create_task(self._batcher.run(), name=f"{name}-batcher")
                group.create_task(self._dispatch(group), name=f"{name}-dispatch")
                await self._commit_in_order()
                if chunks is not None:  # the stream ended: no chunk can be merged any more
                    chunks.cancel()
        except* PipelineStopped as exc:
            # This pipeline alone stops: what it committed stands, its checkpoint stays before
            # the change that stopped it, and the others go on.
            stopped = str(exc.exceptions[0])
            log.error("pipeline stopped", pipeline=name, reason=stopped)
            self._telemetry.on_pipeline_stopped(name, stopped)
            try:
                await asyncio.to_thread(self._sink.stopped, stopped)
            except CdcScorerError as error:  # status will not show it; the log line does
                log.warning("could not record the stop", pipeline=name, error=str(error))
        finally:
            self._sink.close()  # and its leader lock with it
        if stopped is not None:
            while await self.inbox.get() is not END:
                pass  # what the source still routes here is dropped, never blocking it

    def _idle(self) -> bool:
        """No batch of this pipeline's stream queued, scoring or being written. A snapshot's
        or re-score's chunk in flight does not count: the stream's rows do not wait for it
        to fill a batch (they are written after it all the same, in order)."""
        return not self._stream_batches

    def _emitted(self, batch: Batch) -> None:
        if batch.from_stream():
            self._stream_batches.add(batch.sequence)

    def _wake(self) -> None:
        """The stream's last batch in flight is written (or the last batch of all: the
        sequencer's call, which comes after): rows the batcher holds may go now. (A full
        inbox needs no wake-up: its items wake the batcher.)"""
        if not self.inbox.full():
            self.inbox.put_nowait(())

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while (batch := await self._batches.get()) is not None:
            await self._sequencer.submit(group, self._scorer.score(batch))
        await self._sequencer.close()

    async def _commit_in_order(self) -> None:
        name = self.pipeline.name
        # Batches scored while the one before them was being written go together: one
        # transaction for several batches costs less than one each when the writer is busy.
        async for run in self._sequencer.released_runs():
            started = time.monotonic()
            await self._sink.write(run)
            self._telemetry.on_sink_write(name, time.monotonic() - started)
            stream_batches = self._stream_batches
            for scored in run:
                self.checkpoint = scored.checkpoint
                self._exchange.committed(scored.sequence)
                self._telemetry.on_commit(name, scored)
                if scored.sequence in stream_batches:
                    stream_batches.discard(scored.sequence)
                    if not stream_batches:
                        self._wake()  # the stream's rows the batcher holds may go now
            if self._on_committed is not None:
                self._on_committed()
