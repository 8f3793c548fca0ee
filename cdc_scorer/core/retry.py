"""The one retry helper: exponential backoff with full jitter, capped, never giving up.

Retriable errors are retried for as long as it takes (the stream pauses behind them: nothing is
dropped); anything else is raised at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.spec import RetrySpec

T = TypeVar("T")
log = structlog.get_logger("cdc_scorer.core.retry")
_RNG = random.Random()


def backoff_s(spec: RetrySpec, attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return (rng or _RNG).uniform(0, min(spec.cap_s, spec.base_s * (2 ** min(attempt, 30))))


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    spec: RetrySpec,
    stage: str,
    on_retry: Callable[[str, RetriableError], None] | None = None,
) -> T:
    attempt = 0
    while True:
        try:
            return await operation()
        except RetriableError as exc:
            if on_retry is not None:
                on_retry(stage, exc)
            delay = backoff_s(spec, attempt)
            if attempt in (0, 5) or attempt % 20 == 0:
                log.warning(
                    "retrying",
                    stage=stage,
                    code=exc.code,
                    error=str(exc),
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                )
            attempt += 1
            await asyncio.sleep(delay)
