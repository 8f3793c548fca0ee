"""The sequencer: results in submission order, in runs of what is already done, what it counts
as in flight, when it is idle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from cdc_scorer.core.sequencer import Sequencer


async def _work(value: int, delay: float) -> int:
    await asyncio.sleep(delay)
    if value < 0:
        raise ValueError(f"work {value} failed")
    return value


def test_results_in_order_in_runs_and_idle_after_the_last_is_released() -> None:
    async def run() -> tuple[list[list[int]], list[int], list[int]]:
        idle_at: list[int] = []
        counts: list[int] = []
        sequencer: Sequencer[int] = Sequencer(3, on_idle=lambda: idle_at.append(len(runs)))
        runs: list[list[int]] = []

        async with asyncio.TaskGroup() as group:

            async def submit() -> None:
                # 2 and 3 are done before 1: they come with it. 4 is submitted once a slot
                # is free and finishes later: a run of its own.
                for value, delay in ((1, 0.05), (2, 0.0), (3, 0.01), (4, 0.1)):
                    await sequencer.submit(group, _work(value, delay))
                await sequencer.close()

            group.create_task(submit())
            async for results in sequencer.released_runs():
                # Still counted while its consumer holds them (batches being written).
                counts.append(sequencer.in_flight())
                runs.append(results)
                await asyncio.sleep(0.01)
        return runs, idle_at, counts

    runs, idle_at, counts = asyncio.run(run())
    assert runs == [[1, 2, 3], [4]]
    # 4 waited for a slot: it was submitted once the run of three was released.
    assert counts == [3, 1]
    assert idle_at == [1, 2]  # after each run: nothing was in flight then


class _Loose:
    """Tasks outside a TaskGroup: a failure does not cancel the consumer, so the sequencer's
    own handling of a failed result shows."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[int]] = []

    def create_task(self, work: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
        self.tasks.append(asyncio.get_running_loop().create_task(work))
        return self.tasks[-1]


def test_a_failed_result_ends_the_run_before_it_and_is_raised_in_its_turn() -> None:
    async def run() -> list[list[int]]:
        sequencer: Sequencer[int] = Sequencer(4)
        loose = _Loose()
        runs: list[list[int]] = []
        for value, delay in ((1, 0.05), (2, 0.0), (-3, 0.0), (4, 0.0)):
            await sequencer.submit(cast(asyncio.TaskGroup, loose), _work(value, delay))
        await sequencer.close()
        with pytest.raises(ValueError, match="work -3 failed"):
            async for results in sequencer.released_runs():
                runs.append(results)
        await asyncio.gather(*loose.tasks, return_exceptions=True)
        return runs

    assert asyncio.run(run()) == [[1, 2]]
