"""One pipeline: batcher → concurrent scoring (bounded in flight) → ordered commit, the stream's
batches ahead of a re-score's chunks (for the model and for the sink)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import structlog

from cdc_scorer.core.batcher import Batcher
from cdc_scorer.core.errors import CdcScorerError, PipelineStopped
from cdc_scorer.core.models import Scorer
from cdc_scorer.core.observer import Observer, PipelineState
from cdc_scorer.core.records import (
    BARRIER,
    CHUNK,
    END,
    STREAM,
    Batch,
    Checkpoint,
    Lane,
    ScoredBatch,
    SourceItem,
)
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.sequencer import Sequencer
from cdc_scorer.core.spec import PipelineSpec

Inbox = asyncio.Queue[tuple[SourceItem, ...] | None]
log = structlog.get_logger("cdc_scorer.core.pipeline")


class BatchSink(Protocol):
    """Where scored batches go, in order: predictions and the checkpoint that covers them in
    one durable step (``sink.Sink``: one database transaction)."""

    async def write(self, batch: ScoredBatch) -> None: ...

    def stopped(self, reason: str) -> None:
        """Record why the pipeline stopped (blocking: run it in a thread)."""

    def close(self) -> None: ...


class ChunkReader(Protocol):
    """Reads re-score chunks as the pipeline's jobs ask (``snapshotter.Snapshotter``)."""

    async def run(self) -> None: ...


class BatchLanes:
    """The batcher's batches on their way to the model: the stream's (and barriers) in a queue
    of ``max_stream`` (a slow model slows the batcher, and through the inboxes the reader), a
    re-score's chunk batches beside it. Those never make the batcher wait — the stream's rows
    behind them would — and hold at most CHUNKS_AHEAD chunks' rows (the snapshotter reads the
    next chunk only while fewer merged ones wait for their commit: ``ChunkExchange.durable``). The dispatcher takes the
    stream's first."""

    def __init__(self, max_stream: int) -> None:
        self._stream: collections.deque[Batch] = collections.deque()
        self._chunks: collections.deque[Batch] = collections.deque()
        self._max_stream = max_stream
        self._changed = asyncio.Event()
        self._ended = False

    async def put(self, item: Batch | None, /) -> None:
        if item is None:
            self._ended = True
        elif item.lane == CHUNK:
            self._chunks.append(item)
        else:
            while len(self._stream) >= self._max_stream:
                self._changed.clear()
                await self._changed.wait()
            self._stream.append(item)
        self._changed.set()

    def poke(self) -> None:
        """Room for work may have come (a result was released)."""
        self._changed.set()

    def stream_empty(self) -> bool:
        """No batch of the stream's order waits (a chunk's may: the stream passes those)."""
        return not self._stream

    async def get(self, room: Callable[[Lane], bool]) -> Batch | None:
        """The next batch: the stream's if one waits, else a chunk's once ``room`` says one
        would start at once (None: the end)."""
        while True:
            # A barrier waits for every batch before it, so it takes a slot only once the
            # chunk's batches before it have theirs (else they could wait for its slot).
            if self._stream and not (self._stream[0].lane == BARRIER and self._chunks):
                batch = self._stream.popleft()
                self._changed.set()  # room in the stream's queue
                return batch
            if self._chunks and room(CHUNK):
                return self._chunks.popleft()
            if self._ended and not self._chunks:
                return None
            self._changed.clear()
            await self._changed.wait()


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
        self._batches = BatchLanes(in_flight)
        self._sequencer: Sequencer[ScoredBatch] = Sequencer(
            in_flight, on_idle=self._wake, on_release=self._batches.poke
        )
        self._last_written = -1  # the highest sequence written
        self._exchange = exchange if exchange is not None else ChunkExchange()
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
        """No batch of this pipeline's stream queued, scoring or being written (a re-score's
        chunk batches may be: the stream's next batch passes them)."""
        return self._batches.stream_empty() and self._sequencer.in_order() == 0

    def _wake(self) -> None:
        """The stream's last batch in flight is written: rows the batcher holds may go now. (A full
        inbox needs no wake-up: its items wake the batcher.)"""
        if not self.inbox.full():
            self.inbox.put_nowait(())

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        while (batch := await self._batches.get(self._sequencer.room)) is not None:
            work = self._scorer.score(batch)
            await self._sequencer.submit(group, work, batch.sequence, batch.lane)
        await self._sequencer.close()

    async def _commit_in_order(self) -> None:
        name = self.pipeline.name
        async for sequence, lane, result in self._sequencer.released():
            scored = self._composed(sequence, lane, result)
            started = time.monotonic()
            await self._sink.write(scored)
            self._telemetry.on_sink_write(name, time.monotonic() - started)
            self.checkpoint = scored.checkpoint
            self._last_written = max(self._last_written, sequence)
            self._exchange.committed(sequence)
            self._telemetry.on_commit(name, scored)
            if self._on_committed is not None:
                self._on_committed()

    def _composed(self, sequence: int, lane: Lane, scored: ScoredBatch) -> ScoredBatch:
        """What a batch writes when it did not come in sequence order. The stream's batch
        passing a chunk's: the checkpoint's re-scores are the committed ones (the chunk's
        cursor moves when the chunk commits; after a crash it is read again). A chunk's batch
        after later stream batches: the committed position (it never goes back), and not the
        keys the stream wrote after the merge (theirs are newer)."""
        committed = self.checkpoint
        if lane == STREAM and self._sequencer.released_through() < sequence - 1:
            checkpoint = replace(
                scored.checkpoint,
                rescores=committed.rescores,
                snapshot_state=committed.snapshot_state,
            )
            return replace(scored, checkpoint=checkpoint)
        if lane != CHUNK:
            return scored
        keys = [p.key for p in scored.upserts] + list(scored.deletes)
        keys += [d.key for d in scored.dead_letters]
        passed = self._exchange.unguard(sequence, keys)
        if self._last_written > sequence:
            scored = replace(
                scored, checkpoint=replace(scored.checkpoint, position=committed.position)
            )
        if not passed:
            return scored
        skipped = dict(scored.rows_skipped)
        skipped["rescore_conflict"] = skipped.get("rescore_conflict", 0) + len(passed)
        return replace(
            scored,
            upserts=tuple(p for p in scored.upserts if p.key not in passed),
            deletes=tuple(k for k in scored.deletes if k not in passed),
            dead_letters=tuple(d for d in scored.dead_letters if d.key not in passed),
            rows_skipped=skipped,
        )
