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
from operator import itemgetter
from typing import Any

from cdc_scorer.records import (
    Batch,
    Checkpoint,
    Commit,
    Gtid,
    Op,
    Position,
    RowChange,
    SnapshotProgress,
    SourceItem,
    TxId,
)
from cdc_scorer.spec import PipelineSpec

CHECKPOINT_ONLY_INTERVAL_S = 1.0
NUMBER_BYTES = 20  # a number or a date as request text, about (a double is ≤ 24 characters)
END = None


class Batcher:
    def __init__(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        checkpoint: Checkpoint,
        inbox: asyncio.Queue[tuple[SourceItem, ...] | None],
        outbox: asyncio.Queue[Batch | None],
        *,
        applied: Position | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._inputs = pipeline.input_columns
        self._key_columns = key_columns
        self._checkpoint = checkpoint
        # Transactions at or before the pipeline's own checkpoint were applied already (the
        # shared reader starts at the oldest checkpoint of all pipelines).
        self._applied = applied if applied is not None else checkpoint.position
        self._inbox = inbox
        self._outbox = outbox
        self._last_tx: TxId | None = None
        self._last_tx_applied = False
        # The model's inputs of a row, as a tuple (one C call; missing columns are None).
        self._pick_inputs: Callable[[dict[str, Any]], tuple[Any, ...]] = _picker(self._inputs)
        self._pending: dict[tuple[object, ...], RowChange] = {}
        self._pending_bytes = 0
        self._fixed_bytes = len(self._inputs) * (NUMBER_BYTES + 1)
        self._first_at = 0.0
        self._skipped: Counter[str] = Counter()
        self._sequence = 0
        self._emitted_checkpoint = checkpoint
        self._last_emit = time.monotonic()

    async def run(self) -> None:
        linger = self._pipeline.batching.linger_s
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, self._first_at + linger - time.monotonic())
            try:
                items = await asyncio.wait_for(self._inbox.get(), timeout)
            except TimeoutError:
                await self._flush()
                continue
            if items is END:
                await self._flush(force_checkpoint=True)
                await self._outbox.put(END)
                return
            for item in items:
                await self._accept(item)

    def _was_applied(self, tx: TxId | None) -> bool:
        """Whether transaction ``tx`` is covered by this pipeline's checkpoint (asked once per
        transaction: its rows arrive together and share the id object)."""
        if tx is not self._last_tx:
            self._last_tx = tx
            self._last_tx_applied = (
                tx is not None and self._applied is not None and self._applied.includes(tx)
            )
        return self._last_tx_applied

    async def _accept(self, item: SourceItem) -> None:
        if isinstance(item, RowChange):
            if self._was_applied(item.gtid):
                return
            # A full batch waits for one more item: when that is the commit of the transaction
            # it ends in, the batch carries that boundary and nothing is replayed after a stop.
            # Only a transaction larger than the batch is cut inside.
            if self._full():
                await self._flush()
            self._add(item)
        elif isinstance(item, Commit):
            if self._was_applied(item.gtid):
                return
            self._checkpoint = replace(self._checkpoint, position=item.position)
            if self._full():
                await self._flush()
            elif (
                not self._pending
                and time.monotonic() - self._last_emit >= CHECKPOINT_ONLY_INTERVAL_S
            ):
                await self._flush(force_checkpoint=True)
        elif isinstance(item, SnapshotProgress):
            if item.done:
                self._checkpoint = Checkpoint(
                    position=self._checkpoint.snapshot_position,
                    snapshot_state="done",
                    snapshot_cursor=item.cursor,
                    snapshot_position=self._checkpoint.snapshot_position,
                )
            else:
                self._checkpoint = replace(self._checkpoint, snapshot_cursor=item.cursor)
            await self._flush(force_checkpoint=True)

    def _full(self) -> bool:
        batching = self._pipeline.batching
        return len(self._pending) >= batching.max_rows or self._pending_bytes >= batching.max_bytes

    def _add(self, change: RowChange) -> None:
        inputs = self._pick_inputs(change.values)
        if change.op is Op.UPDATE and change.before is not None:
            old_key = tuple(map(change.before.get, self._key_columns))
            if old_key != change.key:
                # A key change is a delete of the old key and an insert of the new one.
                self._put(
                    RowChange(
                        Op.DELETE,
                        change.table,
                        old_key,
                        change.before,
                        change.gtid,
                        change.committed_at,
                    )
                )
            elif self._pick_inputs(change.before) == inputs:
                self._skipped["unchanged_inputs"] += 1
                return
        self._put(change, inputs)

    def _put(self, change: RowChange, inputs: tuple[Any, ...] | None = None) -> None:
        """Add ``change``; ``inputs``: its model inputs when the caller picked them already."""
        if not self._pending:
            self._first_at = time.monotonic()
        previous = self._pending.pop(change.key, None)
        if previous is not None:
            self._skipped["superseded"] += 1  # last version wins within a batch
        self._pending[change.key] = change
        self._pending_bytes += self._size(
            self._pick_inputs(change.values) if inputs is None else inputs
        )

    def _size(self, inputs: tuple[Any, ...]) -> int:
        """Approximate request bytes of a row: NUMBER_BYTES + 1 per input value, plus the
        length of each text or binary value. Cheap on purpose: formatting every value to
        measure it cost as much as formatting the request, and only long values make a batch
        big."""
        size = self._fixed_bytes
        for value in inputs:
            if value.__class__ is str or value.__class__ is bytes:
                size += len(value)
        return size

    async def _flush(self, force_checkpoint: bool = False) -> None:
        if not self._pending and not (
            force_checkpoint and self._checkpoint != self._emitted_checkpoint
        ):
            return
        changes = list(self._pending.values())
        batch = Batch(
            sequence=self._sequence,
            upserts=tuple(c for c in changes if c.op is not Op.DELETE),
            deletes=tuple(c for c in changes if c.op is Op.DELETE),
            checkpoint=self._checkpoint,
            rows_skipped=dict(self._skipped),
        )
        self._sequence += 1
        self._pending = {}
        self._pending_bytes = 0
        self._skipped = Counter()
        self._emitted_checkpoint = self._checkpoint
        self._last_emit = time.monotonic()
        await self._outbox.put(batch)


def _picker(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """``tuple(row.get(c) for c in columns)``, through itemgetter when every column is there
    (FULL row images: always)."""
    if len(columns) == 1:
        only = columns[0]
        return lambda row: (row.get(only),)
    get = itemgetter(*columns)

    def pick(row: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return get(row)  # type: ignore[no-any-return]
        except KeyError:
            return tuple(map(row.get, columns))

    return pick


def start_position(checkpoints: list[Checkpoint], fallback: Position) -> Position:
    """The oldest position any pipeline still needs (per GTID domain)."""
    positions = [c.position for c in checkpoints if c.position is not None]
    if not positions:
        return fallback
    if any(p.log_file is not None for p in positions):
        return min(positions, key=lambda p: (p.log_file or "", p.log_pos or 0))
    if any(p.gtid_set is not None for p in positions):
        # Each pipeline's set is a prefix of the same history: the smallest is the oldest.
        return min(positions, key=lambda p: p.gtid_set.transactions() if p.gtid_set else 0)
    seen_by: Counter[int] = Counter()
    lowest: dict[int, Gtid] = {}
    for position in positions:
        for gtid in position.gtids:
            seen_by[gtid.domain] += 1
            if gtid.domain not in lowest or gtid.seq < lowest[gtid.domain].seq:
                lowest[gtid.domain] = gtid
    # A domain some pipeline has not seen yet must be read from its start: leave it out.
    kept = tuple(g for d, g in lowest.items() if seen_by[d] == len(positions))
    return Position(positions[0].server_identity, tuple(sorted(kept)))
