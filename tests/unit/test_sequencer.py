"""The sequencer: results in sequence order — the stream's passing a re-score chunk's —, what it
counts as in flight, when it is idle."""

from __future__ import annotations

import asyncio

from cdc_scorer.core.records import BARRIER, CHUNK, STREAM, Lane
from cdc_scorer.core.sequencer import Sequencer


async def work(value: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return value


def test_results_in_order_and_idle_after_the_last_is_released() -> None:
    async def run() -> tuple[list[int], list[int], list[int]]:
        idle_at: list[int] = []
        counts: list[int] = []
        sequencer: Sequencer[int] = Sequencer(3, on_idle=lambda: idle_at.append(len(out)))
        out: list[int] = []

        async with asyncio.TaskGroup() as group:

            async def submit() -> None:
                for value, delay in ((1, 0.05), (2, 0.0), (3, 0.01)):
                    await sequencer.submit(group, work(value, delay), value - 1, STREAM)
                counts.append(sequencer.in_flight())
                await sequencer.close()

            group.create_task(submit())
            async for _, _, result in sequencer.released():
                # Still counted while its consumer holds it (a batch being written).
                counts.append(sequencer.in_flight())
                out.append(result)
        return out, idle_at, counts

    out, idle_at, counts = asyncio.run(run())
    assert out == [1, 2, 3]
    assert idle_at == [3]  # once, after the third was released
    assert counts == [3, 3, 2, 1]


def released(plan: list[tuple[Lane, float]], max_in_flight: int = 4) -> list[int]:
    """The order the sequences of ``plan`` (lane, seconds of work; sequence = index) are
    released in."""

    async def run() -> list[int]:
        sequencer: Sequencer[int] = Sequencer(max_in_flight)
        order: list[int] = []
        async with asyncio.TaskGroup() as group:

            async def submit() -> None:
                for sequence, (lane, delay) in enumerate(plan):
                    await sequencer.submit(group, work(sequence, delay), sequence, lane)
                await sequencer.close()

            group.create_task(submit())
            async for sequence, _, result in sequencer.released():
                assert sequence == result
                order.append(sequence)
        return order

    return asyncio.run(run())


def test_the_stream_passes_a_slow_chunk_batch_and_keeps_its_own_order() -> None:
    plan: list[tuple[Lane, float]] = [
        (STREAM, 0.0),
        (CHUNK, 0.2),  # a slow chunk batch
        (STREAM, 0.05),
        (STREAM, 0.0),  # done first, released after the stream batch before it
    ]
    assert released(plan) == [0, 2, 3, 1]


def test_nothing_passes_a_barrier_and_a_barrier_passes_nothing() -> None:
    plan: list[tuple[Lane, float]] = [
        (CHUNK, 0.1),
        (BARRIER, 0.0),  # a truncate: after the chunk's rows
        (STREAM, 0.0),  # after the barrier
    ]
    assert released(plan) == [0, 1, 2]


def test_chunks_keep_their_order_and_leave_the_stream_a_slot() -> None:
    async def run() -> tuple[bool, bool]:
        sequencer: Sequencer[int] = Sequencer(2)
        async with asyncio.TaskGroup() as group:
            await sequencer.submit(group, work(0, 0.05), 0, CHUNK)
            chunk_room, stream_room = sequencer.room(CHUNK), sequencer.room(STREAM)
            await sequencer.submit(group, work(1, 0.0), 1, STREAM)
            await sequencer.close()
            async for _ in sequencer.released():
                pass
        return chunk_room, stream_room

    chunk_room, stream_room = asyncio.run(run())
    assert not chunk_room and stream_room
    assert released([(CHUNK, 0.05), (CHUNK, 0.0), (STREAM, 0.1)], max_in_flight=3) == [0, 1, 2]
