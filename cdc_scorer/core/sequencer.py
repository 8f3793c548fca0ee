"""Concurrent work, results released in submission order (Vector's ordered finalizer).

Batches of one pipeline are scored concurrently, but their predictions and checkpoints must
commit in source order: a later batch's checkpoint covers the earlier batches' rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Sequencer(Generic[T]):
    """Up to ``max_in_flight`` pieces of work run at once; :meth:`released` yields their
    results in the order they were submitted (and raises what one of them raised)."""

    def __init__(self, max_in_flight: int) -> None:
        # A slot is taken before a task is made and given back when its result is released:
        # never more than max_in_flight tasks exist (a task made before waiting for room, as
        # a bounded queue of tasks does, is one more running). The queue keeps their order.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: asyncio.Queue[asyncio.Task[T] | None] = asyncio.Queue()

    async def close(self) -> None:
        """No more work: :meth:`released` ends after the last result."""
        await self._in_flight.put(None)

    async def submit(self, group: asyncio.TaskGroup, work: Coroutine[Any, Any, T]) -> None:
        """Start ``work`` in ``group``; waits while ``max_in_flight`` are unreleased."""
        try:
            await self._slots.acquire()
        except BaseException:
            work.close()  # never started: no "coroutine was never awaited" warning
            raise
        await self._in_flight.put(group.create_task(work))

    async def released(self) -> AsyncIterator[T]:
        while (task := await self._in_flight.get()) is not None:
            try:
                yield await task
            finally:
                self._slots.release()

    def in_flight(self) -> int:
        return self._in_flight.qsize()
