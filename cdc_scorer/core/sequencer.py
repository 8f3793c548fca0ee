"""Concurrent work, results released in source order — with the stream first.

Batches of one pipeline are scored concurrently, but their predictions and checkpoints must
commit in source order: a later batch's checkpoint covers the earlier batches' rows. One
exception makes a re-score gentle on the stream: a batch of a re-score's chunk (``CHUNK``)
may be passed by the stream's later batches (``STREAM``), which then neither wait for its
model calls nor for its write. What makes that safe is the pipeline's (``pipeline.py``): the
chunk's keys are guarded until it commits, and each checkpoint is composed of what has
committed. A ``BARRIER`` (a truncate, an ALTER, a re-score's request or cancel) passes nothing
and is passed by nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cdc_scorer.core.records import BARRIER, CHUNK, STREAM, Lane

T = TypeVar("T")


@dataclass
class _Work(Generic[T]):
    sequence: int
    lane: Lane
    task: asyncio.Task[T]


class Sequencer(Generic[T]):
    """Up to ``max_in_flight`` pieces of work run at once (a chunk's at most
    ``max_in_flight - 1`` of them when that is more than 1: a slot stays the stream's);
    :meth:`released` yields their results — ``(sequence, lane, result)`` — in sequence order,
    except that a ``STREAM`` result goes before an earlier ``CHUNK`` one that is not
    released yet (and raises what one of them raised, at its turn). ``on_idle`` is called
    when the last unreleased result of the stream's order is released (its consumer done with
    it): nothing of it is in flight any more (a chunk's may be: the stream passes those). Sequences are consecutive integers from ``first``; the stream's and the
    barriers' are submitted in order, a chunk's in order."""

    def __init__(
        self,
        max_in_flight: int,
        on_idle: Callable[[], None] | None = None,
        first: int = 0,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        # A slot is taken before a task is made and given back when its result is released:
        # never more than max_in_flight tasks exist.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._chunk_slots = asyncio.Semaphore(max(1, max_in_flight - 1))
        self._work: dict[int, _Work[T]] = {}
        self._next = first  # every sequence before it is released
        self._released_ahead: set[int] = set()  # released while an earlier one was not
        self._changed = asyncio.Event()
        self._closed = False
        self._on_idle = on_idle
        self._on_release = on_release  # a slot is free again

    async def close(self) -> None:
        """No more work: :meth:`released` ends after the last result."""
        self._closed = True
        self._changed.set()

    def room(self, lane: Lane) -> bool:
        """Whether work of ``lane`` would start at once."""
        if self._slots.locked():
            return False
        return lane != CHUNK or not self._chunk_slots.locked()

    async def submit(
        self,
        group: asyncio.TaskGroup,
        work: Coroutine[Any, Any, T],
        sequence: int,
        lane: Lane = BARRIER,
    ) -> None:
        """Start ``work`` in ``group``; waits while ``max_in_flight`` are unreleased."""
        try:
            if lane == CHUNK:
                await self._chunk_slots.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                if lane == CHUNK:
                    self._chunk_slots.release()
                raise
        except BaseException:
            work.close()  # never started: no "coroutine was never awaited" warning
            raise
        task = group.create_task(work)
        task.add_done_callback(lambda _: self._changed.set())
        self._work[sequence] = _Work(sequence, lane, task)
        self._changed.set()

    def _releasable(self) -> _Work[T] | None:
        """The next result to release, the stream's first. The stream's and the barriers'
        batches are submitted in order (one queue), so a sequence missing before the first
        of them in ``_work`` is a chunk's batch not taken yet: the stream may pass it."""
        first_in_order = next(
            (self._work[s] for s in sorted(self._work) if self._work[s].lane != CHUNK), None
        )
        if (
            first_in_order is not None
            and first_in_order.lane == STREAM
            and first_in_order.task.done()
        ):
            return first_in_order
        head = self._work.get(self._next)
        return head if head is not None and head.task.done() else None

    async def released(self) -> AsyncIterator[tuple[int, Lane, T]]:
        while True:
            work = self._releasable()
            if work is None:
                if self._closed and not self._work:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                yield work.sequence, work.lane, work.task.result()
            finally:
                del self._work[work.sequence]
                self._advance(work.sequence)
                self._slots.release()
                if work.lane == CHUNK:
                    self._chunk_slots.release()
                if self._on_release is not None:
                    self._on_release()
                if work.lane != CHUNK and self._on_idle is not None and not self.in_order():
                    self._on_idle()

    def _advance(self, sequence: int) -> None:
        if sequence != self._next:
            self._released_ahead.add(sequence)
            return
        following = sequence + 1
        while following in self._released_ahead:
            self._released_ahead.discard(following)
            following += 1
        self._next = following

    def released_through(self) -> int:
        """The last sequence such that it and every one before it is released."""
        return self._next - 1

    def in_order(self) -> int:
        """Work of the stream's order (not a chunk's) submitted and not yet released."""
        return sum(1 for work in self._work.values() if work.lane != CHUNK)

    def in_flight(self) -> int:
        """Work submitted and not yet released: running, done and waiting for its turn, or
        with its consumer."""
        return len(self._work)
