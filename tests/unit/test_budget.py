"""The per-minute budget (services/budget.py) on a short minute: limits held over every sliding
window, tokens reserved and corrected, the stream ahead of a re-score."""

from __future__ import annotations

import asyncio
import time

from cdc_scorer.services.budget import CallBudget

MINUTE_S = 1.0


def most_in_a_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


async def test_requests_per_minute_hold_over_every_sliding_minute() -> None:
    budget = CallBudget(20, None, minute_s=MINUTE_S)
    granted: list[float] = []

    async def call() -> None:
        grant = await budget.acquire(1, urgent=True)
        granted.append(time.monotonic())
        grant.settle(None)

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(50)))
    assert most_in_a_window(granted, MINUTE_S) <= 20
    # A tenth of the minute holds about a tenth of it (2; one more when a timer fires late on
    # a loaded machine): the calls are spread, not burst.
    assert most_in_a_window(granted, MINUTE_S / 10) <= 3
    # 50 calls at 20 a minute need more than two minutes, and not much more.
    assert 2 * MINUTE_S <= time.monotonic() - started < 3.5 * MINUTE_S
    assert budget.spending()["requests"] == 50


async def test_tokens_are_reserved_then_corrected_by_the_answer() -> None:
    budget = CallBudget(None, 1000, minute_s=MINUTE_S)
    first = await budget.acquire(600, urgent=True)  # reserved at the estimate
    started = time.monotonic()
    waiting = asyncio.create_task(budget.acquire(600, urgent=True))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # 600 + 600 > 1000 within the minute
    first.settle((50, 50))  # the answer used 100: room now
    second = await asyncio.wait_for(waiting, 0.5)
    assert time.monotonic() - started < 0.5
    second.settle((300, 200))
    spent = budget.spending()
    assert (spent["input_tokens"], spent["output_tokens"]) == (350, 250)


async def test_a_call_bigger_than_the_budget_runs_alone() -> None:
    budget = CallBudget(None, 100, minute_s=MINUTE_S)
    grant = await asyncio.wait_for(budget.acquire(5000, urgent=True), 0.5)
    grant.settle(None)


async def test_the_stream_goes_before_a_rescore_which_then_keeps_to_its_share() -> None:
    budget = CallBudget(40, None, rescore_share=0.5, minute_s=MINUTE_S)
    order: list[tuple[str, float]] = []

    async def call(kind: str) -> None:
        grant = await budget.acquire(1, urgent=kind == "stream")
        order.append((kind, time.monotonic()))
        grant.settle(None)

    rescore = [asyncio.create_task(call("rescore")) for _ in range(40)]
    await asyncio.sleep(0.3 * MINUTE_S)
    # Alone (the stream quiet), the re-score may use the whole budget: 4 a tenth of the
    # minute, more than its share's 2.
    assert len(order) > 8
    stream = [asyncio.create_task(call("stream")) for _ in range(10)]
    # One turn of the loop: every stream call is asking now (a re-score call whose wait ended
    # in the same turn may have gone first: it asked before them).
    await asyncio.sleep(0)
    asking = len(order)
    await asyncio.gather(*stream)
    stream_done = time.monotonic()
    # While stream calls wait, no re-score call goes.
    assert all(kind == "stream" for kind, _ in order[asking:])
    assert [kind for kind, _ in order].count("stream") == 10
    await asyncio.gather(*rescore)
    # Then the re-score goes on within its share (20 a minute) while the stream is recent.
    after = [t for kind, t in order if kind == "rescore" and t > stream_done]
    inside = [t for t in after if t < stream_done + MINUTE_S]
    assert len(inside) <= 20
    assert most_in_a_window([t for _, t in order], MINUTE_S) <= 40
    assert budget.spending()["wait_rescore_s"] > budget.spending()["wait_stream_s"]


async def test_the_share_is_counted_from_the_streams_return_not_over_the_quiet_minute() -> None:
    """A re-score that had the whole budget while the stream was quiet is not stopped for the
    rest of the minute when the stream calls again (its stream rows would queue behind its
    batches): from then on it keeps to its share, within the room the minute has."""
    budget = CallBudget(40, None, rescore_share=0.5, minute_s=MINUTE_S)
    order: list[tuple[str, float]] = []

    async def call(kind: str) -> None:
        grant = await budget.acquire(1, urgent=kind == "stream")
        order.append((kind, time.monotonic()))
        grant.settle(None)

    rescore = [asyncio.create_task(call("rescore")) for _ in range(40)]
    await asyncio.sleep(0.6 * MINUTE_S)
    alone = len(order)
    assert alone > 20  # more than its share: the stream was quiet
    await asyncio.gather(*(call("stream") for _ in range(3)))
    stream_done = time.monotonic()
    await asyncio.sleep(0.3 * MINUTE_S)
    after = [t for kind, t in order if kind == "rescore" and t > stream_done]
    # Counted over the whole minute, its share (20) was spent: nothing for ~0.4 of a minute.
    assert after and after[0] - stream_done < 0.2 * MINUTE_S
    for task in rescore:
        task.cancel()
    await asyncio.gather(*rescore, return_exceptions=True)
    assert most_in_a_window([t for _, t in order], MINUTE_S) <= 40


def test_a_budgeted_pipeline_paces_its_rescores_to_their_share() -> None:
    from cdc_scorer.core.spec import PipelineSpec, RescoreSpec
    from cdc_scorer.services.bedrock import BedrockSpec

    def pipeline(**bedrock: object) -> PipelineSpec:
        model = BedrockSpec(
            model_id="amazon.titan-embed-text-v2:0",
            task="embedding",
            text_column="body",
            **bedrock,  # type: ignore[arg-type]
        )
        return PipelineSpec(name="p", table="t", model=model)

    paced = pipeline(requests_per_minute=600, rescore_share=0.5)
    # Four fifths of half of 10 calls a second, a row each; chunks of two seconds of it.
    assert paced.rescore_pace(stream_quiet=False) == 4.0
    assert paced.snapshot_chunk_rows == 8
    # While the stream is quiet: nearly the whole budget (a re-score of a quiet table).
    assert paced.rescore_pace(stream_quiet=True) == 0.95 * 10
    assert pipeline().rescore_pace(stream_quiet=False) is None  # no budget: as fast as it goes
    assert pipeline().snapshot_chunk_rows == 1000
    # The user's cap holds either way.
    capped = PipelineSpec(
        name="p",
        table="t",
        model=paced.model,
        rescore=RescoreSpec(max_rows_per_s=3.0),
    )
    assert capped.rescore_pace(stream_quiet=True) == capped.rescore_pace(False) == 3.0


def test_the_stream_is_quiet_a_minute_after_its_last_call() -> None:
    now = [0.0]
    budget = CallBudget(None, None, clock=lambda: now[0])  # never waits: no limit

    async def calls() -> None:
        assert budget.stream_quiet()
        (await budget.acquire(1, urgent=False)).settle(None)
        assert budget.stream_quiet()  # a re-score's call is not the stream's
        (await budget.acquire(1, urgent=True)).settle(None)
        assert not budget.stream_quiet()
        now[0] = 60.5
        assert not budget.stream_quiet()  # still within the minute (and its margin)
        now[0] = 62.0
        assert budget.stream_quiet()

    asyncio.run(calls())
