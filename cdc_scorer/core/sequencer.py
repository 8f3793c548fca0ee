"""Concurrent work, results released in submission order (Vector's ordered finalizer).

Batches of one pipeline are scored concurrently, but their predictions and checkpoints must
commit in source order: a later batch's checkpoint covers the earlier batches' rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Sequencer(Generic[T]):
    """Up to ``max_in_flight`` pieces of work run at once; :meth:`released_runs` yields their
    results in the order they were submitted (and raises what one of them raised).
    ``on_idle`` is called when the last unreleased result is released (its consumer done with
    it): nothing is in flight any more."""

    def __init__(self, max_in_flight: int, on_idle: Callable[[], None] | None = None) -> None:
        # A slot is taken before a task is made and given back when its result is released:
        # never more than max_in_flight tasks exist (a task made before waiting for room, as
        # a bounded queue of tasks does, is one more running). The queue keeps their order.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: asyncio.Queue[asyncio.Task[T] | None] = asyncio.Queue()
        self._unreleased = 0
        self._on_idle = on_idle

    async def close(self) -> None:
        """No more work: :meth:`released_runs` ends after the last result."""
        await self._in_flight.put(None)

    async def submit(self, group: asyncio.TaskGroup, work: Coroutine[Any, Any, T]) -> None:
        """Start ``work`` in ``group``; waits while ``max_in_flight`` are unreleased."""
        try:
            await self._slots.acquire()
        except BaseException:
            work.close()  # never started: no "coroutine was never awaited" warning
            raise
        self._unreleased += 1
        self._in_flight.put_nowait(group.create_task(work))  # unbounded: never waits

    async def released_runs(self) -> AsyncIterator[list[T]]:
        """The results in submission order, in runs: the next result (waited for) and those
        after it that are already done, so their consumer can take several at once (a sink:
        in one transaction). A failed result ends the run before it and is raised in its
        turn. Each stays counted in flight until its consumer is done with its run."""
        ahead: list[asyncio.Task[T] | None] = []  # taken from the queue, not yet in a run
        while True:
            task = ahead.pop() if ahead else await self._in_flight.get()
            if task is None:
                return
            run = [task]
            try:
                results = [await task]
                while not self._in_flight.empty():
                    following = self._in_flight.get_nowait()
                    if (
                        following is None
                        or not following.done()
                        or following.cancelled()
                        or following.exception() is not None
                    ):
                        ahead.append(following)  # next: waited for, raised, or the end
                        break
                    run.append(following)
                    results.append(following.result())
                yield results
            finally:
                for _ in run:
                    self._slots.release()
                    self._unreleased -= 1
                if self._unreleased == 0 and self._on_idle is not None:
                    self._on_idle()

    def in_flight(self) -> int:
        """Work submitted and not yet released: running, done and waiting for its turn, or
        with its consumer."""
        return self._unreleased
