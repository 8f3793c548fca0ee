"""A per-minute budget of requests and tokens, as Bedrock enforces its quotas per model and
region: every call reserves a request and its estimated tokens before it is sent, and the
answer's ``usage`` corrects the estimate.

The limit is held over every sliding minute (what the service counts), and also over every
sliding tenth of a minute at a tenth of it, so a backlog spreads its calls over the minute
instead of spending the minute's quota in its first second and leaving the stream to wait.
Calls for rows of the stream (``urgent``) go first and may use the whole budget; calls for a
re-score wait while a stream call waits and use at most ``rescore_share`` of it, so the stream
finds room when it needs it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# (window, part of the per-minute limit allowed in it)
_WINDOWS = ((60.0, 1.0), (6.0, 0.1))


@dataclass
class _Spend:
    """One call in the window: when it was granted and the tokens it is counted at."""

    at: float
    tokens: int


@dataclass
class BudgetStats:
    """What the budget has granted, for metrics: calls, tokens as settled, time waited."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    wait_s: dict[str, float] = field(default_factory=lambda: {"stream": 0.0, "rescore": 0.0})


class CallBudget:
    """``requests_per_minute`` and ``tokens_per_minute`` (None: that one is not limited)."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        *,
        rescore_share: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._share = rescore_share
        self._clock = clock
        self._spent: deque[_Spend] = deque()
        self._urgent_waiting = 0
        self._changed = asyncio.Event()
        self.stats = BudgetStats()

    async def acquire(self, tokens: int, urgent: bool) -> _Grant:
        started = self._clock()
        if urgent:
            self._urgent_waiting += 1
        try:
            while True:
                now = self._clock()
                wait = self._wait_s(now, tokens, urgent)
                if wait <= 0:
                    break
                self._changed.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                except TimeoutError:
                    pass
        finally:
            if urgent:
                self._urgent_waiting -= 1
        spend = _Spend(now, tokens)
        self._spent.append(spend)
        self.stats.requests += 1
        self.stats.wait_s["stream" if urgent else "rescore"] += now - started
        self._changed.set()  # a waiting re-score looks again once no stream call waits
        return _Grant(self, spend)

    def _wait_s(self, now: float, tokens: int, urgent: bool) -> float:
        """0 when a call of ``tokens`` fits now, else how long until something expires (or a
        short look again while a stream call is ahead of a re-score)."""
        spent = self._spent
        while spent and spent[0].at <= now - _WINDOWS[0][0]:
            spent.popleft()
        if not urgent and self._urgent_waiting:
            return 0.05
        share = 1.0 if urgent else self._share
        wait = 0.0
        for window, part in _WINDOWS:
            inside = [s for s in spent if s.at > now - window]
            for limit, used, cost, counts_tokens in (
                (self._rpm, len(inside), 1, False),
                (self._tpm, sum(s.tokens for s in inside), tokens, True),
            ):
                if limit is None:
                    continue
                allowed = max(1, math.floor(limit * part * share))
                if used == 0 or used + cost <= allowed:
                    continue  # a call bigger than the window's limit runs alone
                # Until enough of the oldest calls of this window have left it.
                excess = used + cost - allowed
                freed = 0
                for s in inside:
                    freed += s.tokens if counts_tokens else 1
                    if freed >= excess:
                        wait = max(wait, s.at + window - now)
                        break
                else:
                    wait = max(wait, inside[-1].at + window - now)
        return wait

    def _settle(self, spend: _Spend, used: tuple[int, int] | None) -> None:
        if used is not None:
            spend.tokens = used[0] + used[1]
            self.stats.input_tokens += used[0]
            self.stats.output_tokens += used[1]
        self._changed.set()


@dataclass
class _Grant:
    _budget: CallBudget
    _spend: _Spend

    def settle(self, used: tuple[int, int] | None) -> None:
        """(input, output) tokens the answer reported (None: the estimate stands)."""
        self._budget._settle(self._spend, used)
