"""Per-pipeline accumulator: max rows / max bytes / linger, dedupe by key, skip no-op updates.

Consumes source items in order and emits :class:`Batch`es in order. A batch's checkpoint is the
last transaction boundary seen when it was cut: every row before that boundary is in this batch
or an earlier one, so committing it with the batch is exactly right even when a large
transaction spans many batches (the partial transaction is replayed after a crash, and
re-applying a prediction is idempotent). A full batch is cut at the next item, so a batch that
fills on the last row of a transaction still carries that transaction's commit.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cdc_scorer.core.errors import inputs_gone, table_gone
from cdc_scorer.core.own_tables import WINDOW_CLOSE, WINDOW_OPEN
from cdc_scorer.core.positions import Position, TxId
from cdc_scorer.core.records import (
    END,
    Batch,
    Checkpoint,
    ColumnsGone,
    Commit,
    Op,
    Rescores,
    RowChange,
    Signal,
    SourceItem,
    TableGone,
    TableTruncated,
    row_picker,
)
from cdc_scorer.core.rescoring import (
    Chunk,
    ChunkExchange,
    advance,
    on_alter,
    on_request,
    snapshot_state,
)
from cdc_scorer.core.spec import PipelineSpec

CHECKPOINT_ONLY_INTERVAL_S = 1.0
NUMBER_BYTES = 20  # a number or a date as request text, about (a double is ≤ 24 characters)


class AppliedBefore:
    """Whether a transaction is covered by a checkpoint's position — asked once per
    transaction: its rows arrive together and share the id object."""

    def __init__(self, position: Position | None) -> None:
        self._position = position
        self._last_tx: TxId | None = None
        self._last_answer = False

    def __call__(self, tx: TxId | None) -> bool:
        if tx is not self._last_tx:
            self._last_tx = tx
            self._last_answer = (
                tx is not None and self._position is not None and self._position.includes(tx)
            )
        return self._last_answer


def request_bytes(inputs: tuple[Any, ...], fixed_bytes: int) -> int:
    """Approximate request bytes of a row: ``fixed_bytes`` (NUMBER_BYTES + 1 per input value)
    plus the length of each text or binary value. Cheap on purpose: formatting every value to
    measure it cost as much as formatting the request, and only long values make a batch big."""
    size = fixed_bytes
    for value in inputs:
        if value.__class__ is str or value.__class__ is bytes:
            size += len(value)
    return size


def chunk_changes(
    chunk: Chunk,
    touched: frozenset[tuple[Any, ...]],
    tx: TxId | None,
    table: str,
    key_columns: tuple[str, ...],
) -> tuple[list[RowChange], int]:
    """A chunk's changes to merge, and how many it read: its rows (a sweep's orphans, as
    deletes) the stream did not write inside the chunk's window, as of the high watermark's
    transaction ``tx``."""
    if chunk.orphans is None:
        kept = [replace(row, tx=tx) for row in chunk.rows if row.key not in touched]
        return kept, len(chunk.rows)
    deletes = [
        RowChange(Op.DELETE, table, key, dict(zip(key_columns, key, strict=True)), tx, None)
        for key in chunk.orphans
        if key not in touched
    ]
    return deletes, len(chunk.orphans)


class Accumulator:
    """The batch data structure, without asyncio: items in, batches out, in order.

    ``clock`` (seconds, monotonic) is the only outside input, so tests drive it by hand.
    """

    def __init__(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        checkpoint: Checkpoint,
        *,
        exchange: ChunkExchange | None = None,
        on_chunk: Callable[[int, int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipeline = pipeline
        self._exchange = exchange if exchange is not None else ChunkExchange()
        # Per chunk: (rows merged, rows or orphans dropped as conflicts, orphans removed).
        self._on_chunk = on_chunk
        self._inputs = pipeline.input_columns
        self._key_columns = key_columns
        self._needed = frozenset((*self._inputs, *key_columns))  # never read as a NULL
        self._checkpoint = checkpoint
        # Transactions at or before the pipeline's own checkpoint were applied already (the
        # shared reader starts at the oldest checkpoint of all pipelines).
        self._was_applied = AppliedBefore(checkpoint.position)
        self._clock = clock
        self._max_rows = pipeline.max_batch_rows
        # The model's inputs of a row, as a tuple (one C call; missing columns are None).
        self._pick_inputs: Callable[[dict[str, Any]], tuple[Any, ...]] = row_picker(self._inputs)
        self._pending: dict[tuple[object, ...], RowChange] = {}
        self._pending_bytes = 0
        self._fixed_bytes = len(self._inputs) * (NUMBER_BYTES + 1)
        self._first_at = 0.0
        self._skipped: Counter[str] = Counter()
        self._truncate = False  # the next batch deletes every prediction first
        self._columns_changed = False  # the next batch makes the view again first
        self._sequence = 0
        self._emitted_checkpoint = checkpoint
        self._last_emit = clock()
        self._in_transaction = False  # rows seen since the last commit
        self._merged = False  # a chunk was merged since the last batch

    def at_commit(self) -> bool:
        """Rows wait and the last item was their transaction's commit: a batch cut now loses
        nothing to batching that the linger could still buy when nothing else is in flight."""
        return bool(self._pending) and not self._in_transaction

    def linger_left_s(self) -> float | None:
        """Seconds until the pending rows must go, or a checkpoint that moved without rows
        (None: nothing waits). The last commits' checkpoint is written even when no commit
        follows: a source that keeps changes until told (a replication slot) is told soon."""
        if not self._pending:
            if self._checkpoint is self._emitted_checkpoint:
                return None
            return max(0.0, self._last_emit + CHECKPOINT_ONLY_INTERVAL_S - self._clock())
        linger = self._pipeline.batching.linger_s
        return max(0.0, self._first_at + linger - self._clock())

    def accept(self, item: SourceItem) -> Batch | list[Batch] | None:
        """Take one item; the batch it completes, if any (a chunk's rows may complete
        several)."""
        if isinstance(item, RowChange):
            if self._was_applied(item.tx):
                return None
            self._in_transaction = True
            # A full batch waits for one more item: when that is the commit of the transaction
            # it ends in, the batch carries that boundary and nothing is replayed after a stop.
            # Only a transaction larger than the batch is cut inside.
            batch = self.flush() if self._full() else None
            self._add(item)
            return batch
        if isinstance(item, ColumnsGone):
            gone = sorted(item.columns & self._needed)
            if gone and not self._was_applied(item.tx):
                raise inputs_gone(self._pipeline.name, item.table, gone)
            return None
        if isinstance(item, TableTruncated):
            if self._was_applied(item.tx):
                return None
            # The rows waiting are gone from the table: no model call for them.
            if self._exchange.window_open:
                self._exchange.emptied()  # nor for the rows of a chunk read before
            self._skipped["truncated"] += len(self._pending)
            self._pending, self._pending_bytes = {}, 0
            self._truncate = True
            return None
        if isinstance(item, Commit):
            if self._was_applied(item.tx):
                return None
            self._in_transaction = False
            self._checkpoint = replace(self._checkpoint, position=item.position)
            if self._merged:  # the chunk's rows and cursor go now (the snapshotter waits)
                return self.flush(force_checkpoint=True)
            if self._full() or self._truncate or self._columns_changed:
                return self.flush()
            if not self._pending and self._clock() - self._last_emit >= CHECKPOINT_ONLY_INTERVAL_S:
                return self.flush(force_checkpoint=True)
            return None
        if self._was_applied(item.tx):
            return None
        self._in_transaction = True  # a signal or a change of the table: its commit follows
        if isinstance(item, Signal):
            return self._signal(item)
        if isinstance(item, TableGone):
            raise table_gone(self._pipeline.name, item.table, item.statement)
        # A TableAltered: the view follows the table's columns; a model input may have
        # changed type, and every row's value with it.
        self._columns_changed = True
        if self._pipeline.rescore_on_alter:
            rescores = self._checkpoint.rescores
            self._set_rescores(on_alter(rescores, item.tx, self._pipeline.model_version))
        return None

    # ---------------------------------------------------------------- re-scores (DBLog)
    def _signal(self, item: Signal) -> list[Batch] | None:
        if item.kind == WINDOW_OPEN:
            self._exchange.open(item.id)
        elif item.kind == WINDOW_CLOSE:
            closed = self._exchange.close(item.id)
            if closed is not None:
                return self._merge(*closed, item.tx)
        else:  # a request
            rescores = self._checkpoint.rescores
            self._set_rescores(on_request(rescores, item, self._pipeline.model_version))
        return None

    def _merge(
        self, chunk: Chunk, touched: frozenset[tuple[Any, ...]], tx: TxId | None
    ) -> list[Batch]:
        """The chunk's rows the stream did not change in its window join the pending rows; the
        job's cursor moves with the last of them (earlier batches keep the old cursor).

        A row the stream did not change between the watermarks is the version it had at the
        high watermark: its prediction names that transaction (``tx``) as its source. A sweep
        chunk's orphans join as deletes the same way: a key the stream wrote in the window
        keeps what the stream made of it."""
        rescores = self._checkpoint.rescores
        if rescores.running is None or rescores.running.id != chunk.job_id:
            return []  # the job was cancelled meanwhile
        changes, read = chunk_changes(chunk, touched, tx, self._pipeline.table, self._key_columns)
        batches = []
        for change in changes:
            if self._full():
                batch = self.flush()
                if batch is not None:
                    batches.append(batch)
            self._put(change)
        kept = len(changes)
        conflicts = read - kept
        if conflicts:
            self._skipped["rescore_conflict"] += conflicts
        if self._on_chunk is not None:
            removed = 0 if chunk.orphans is None else kept
            self._on_chunk(kept - removed, conflicts, removed)
        self._set_rescores(advance(rescores, chunk, kept))
        self._merged = True
        # The batch flushed at the watermark's commit carries the chunk's last rows and its
        # cursor: that batch's sequence is the next one.
        self._exchange.merged(self._sequence)
        return batches

    def _set_rescores(self, rescores: Rescores) -> None:
        state = snapshot_state(self._checkpoint.snapshot_state, rescores)
        self._checkpoint = replace(self._checkpoint, rescores=rescores, snapshot_state=state)
        self._exchange.job_changed(rescores.running)

    def _full(self) -> bool:
        batching = self._pipeline.batching
        return len(self._pending) >= self._max_rows or self._pending_bytes >= batching.max_bytes

    def _add(self, change: RowChange) -> None:
        # No old image, but the log says these columns kept their values: when they are all
        # the model reads, the prediction stands.
        if (
            change.unchanged
            and change.op is Op.UPDATE
            and change.before is None
            and all(c in change.unchanged for c in self._inputs)
        ):
            self._skipped["unchanged_inputs"] += 1
            return
        inputs = self._pick_inputs(change.values)
        if change.op is Op.UPDATE and change.before is not None:
            old_key = tuple(map(change.before.get, self._key_columns))
            if old_key != change.key:
                # A key change is a delete of the old key and an insert of the new one.
                before, tx, at = change.before, change.tx, change.committed_at
                self._put(RowChange(Op.DELETE, change.table, old_key, before, tx, at))
            elif self._pick_inputs(change.before) == inputs:
                self._skipped["unchanged_inputs"] += 1
                return
        self._put(change, inputs)

    def _put(self, change: RowChange, inputs: tuple[Any, ...] | None = None) -> None:
        """Add ``change``; ``inputs``: its model inputs when the caller picked them already."""
        if self._exchange.window_open:
            # Inside a chunk's window the stream's version of this row is the newer one. (An
            # update skipped for unchanged inputs never gets here: the chunk's row has the
            # same inputs, and its prediction is the one to keep — with the model running now.)
            self._exchange.touched(change.key)
        if not self._pending:
            self._first_at = self._clock()
        previous = self._pending.pop(change.key, None)
        if previous is not None:
            self._skipped["superseded"] += 1  # last version wins within a batch
        self._pending[change.key] = change
        self._pending_bytes += request_bytes(
            self._pick_inputs(change.values) if inputs is None else inputs, self._fixed_bytes
        )

    def flush(self, force_checkpoint: bool = False) -> Batch | None:
        """The pending rows as a batch; with ``force_checkpoint`` also a batch of no rows when
        the checkpoint moved since the last one (None: nothing to emit)."""
        if (
            not self._pending
            and not self._truncate
            and not self._columns_changed
            and not (force_checkpoint and self._checkpoint != self._emitted_checkpoint)
        ):
            return None
        changes = list(self._pending.values())
        batch = Batch(
            sequence=self._sequence,
            upserts=tuple(c for c in changes if c.op is not Op.DELETE),
            deletes=tuple(c for c in changes if c.op is Op.DELETE),
            checkpoint=self._checkpoint,
            rows_skipped=dict(self._skipped),
            truncate=self._truncate,
            columns_changed=self._columns_changed,
        )
        self._truncate = False
        self._columns_changed = False
        self._merged = False
        self._sequence += 1
        self._pending = {}
        self._pending_bytes = 0
        self._skipped = Counter()
        self._emitted_checkpoint = self._checkpoint
        self._last_emit = self._clock()
        return batch


class Batcher:
    """The accumulator's task: source items from ``inbox``, batches to ``outbox`` (bounded:
    a slow model slows the batcher, and through the inboxes the reader).

    The linger buys batching only while earlier batches are in flight: with ``idle`` saying
    the pipeline has none (nothing queued, scoring or being written), rows that end at a
    commit go at once when the inbox has nothing more (Nagle's algorithm). An empty tuple in
    the inbox only wakes the batcher: the pipeline sends one when its last batch is written.
    ``on_emit`` sees each batch before it is queued (the pipeline counts the stream's)."""

    def __init__(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        checkpoint: Checkpoint,
        inbox: asyncio.Queue[tuple[SourceItem, ...] | None],
        outbox: asyncio.Queue[Batch | None],
        *,
        exchange: ChunkExchange | None = None,
        on_chunk: Callable[[int, int, int], None] | None = None,
        idle: Callable[[], bool] | None = None,
        on_emit: Callable[[Batch], None] | None = None,
    ) -> None:
        self._on_emit = on_emit
        self._accumulator = Accumulator(
            pipeline, key_columns, checkpoint, exchange=exchange, on_chunk=on_chunk
        )
        self._inbox = inbox
        self._outbox = outbox
        self._idle = idle

    async def run(self) -> None:
        accumulator = self._accumulator
        while True:
            try:
                # Not asyncio.wait_for: on 3.11 it returns the item when a cancellation and
                # the item arrive together, and the cancelled task then blocks for ever.
                async with asyncio.timeout(accumulator.linger_left_s()):
                    items = await self._inbox.get()
            except TimeoutError:
                await self._emit(accumulator.flush(force_checkpoint=True))
                continue
            if items is END:
                await self._emit(accumulator.flush(force_checkpoint=True))
                await self._outbox.put(END)
                return
            for item in items:
                batch = accumulator.accept(item)
                if batch is None:
                    continue
                if isinstance(batch, list):  # a chunk's rows
                    for each in batch:
                        await self._emit(each)
                else:
                    await self._emit(batch)
            if (
                self._idle is not None
                and accumulator.at_commit()
                and self._inbox.empty()
                and self._idle()
            ):
                await self._emit(accumulator.flush())

    async def _emit(self, batch: Batch | None) -> None:
        if batch is not None:
            if self._on_emit is not None:
                self._on_emit(batch)
            await self._outbox.put(batch)
