"""The sequencer: results in submission order, what it counts as in flight, when it is idle."""

from __future__ import annotations

import asyncio

from cdc_scorer.core.sequencer import Sequencer


def test_results_in_order_and_idle_after_the_last_is_released() -> None:
    async def run() -> tuple[list[int], list[int], list[int]]:
        idle_at: list[int] = []
        counts: list[int] = []
        sequencer: Sequencer[int] = Sequencer(3, on_idle=lambda: idle_at.append(len(out)))
        out: list[int] = []

        async def work(value: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return value

        async with asyncio.TaskGroup() as group:

            async def submit() -> None:
                for value, delay in ((1, 0.05), (2, 0.0), (3, 0.01)):
                    await sequencer.submit(group, work(value, delay))
                counts.append(sequencer.in_flight())
                await sequencer.close()

            group.create_task(submit())
            async for result in sequencer.released():
                # Still counted while its consumer holds it (a batch being written).
                counts.append(sequencer.in_flight())
                out.append(result)
        return out, idle_at, counts

    out, idle_at, counts = asyncio.run(run())
    assert out == [1, 2, 3]
    assert idle_at == [3]  # once, after the third was released
    assert counts == [3, 3, 2, 1]
