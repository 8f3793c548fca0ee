"""A per-minute budget of requests and tokens, as Bedrock enforces its quotas per model and
region: every call reserves a request and its estimated tokens before it is sent, and the
answer's ``usage`` corrects the estimate.

The limit is held over every sliding minute (what the service counts), and also over every
sliding tenth of a minute at a tenth of it, so a backlog spreads its calls over the minute
instead of spending the minute's quota in its first second and leaving the stream to wait.
Calls for rows of the stream (``urgent``) go first and may use the whole budget; calls for a
re-score wait while a stream call waits, and while the stream has called within the minute
they use at most ``rescore_share`` of it (counted from the stream's first call after a quiet
minute), so the stream finds room when it needs it (a re-score of a quiet table, the first
snapshot, may use all of it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# A call is counted this part of a minute longer than the minute: the service counts it when
# it arrives, a little after it is granted, so a call granted as the oldest leaves the window
# could otherwise arrive inside the service's minute (seen at the local endpoint: 128 in a
# minute of 120 without it). It costs 1/61 of the budget.
_MARGIN = 1 / 60
# (part of the minute, part of the per-minute limit allowed in it, whether tokens are held to
# it too): the minute itself (and its margin); a tenth of it at a tenth, and for requests a
# sixtieth at twice the average rate, which spread a backlog's calls over the minute (these
# only smooth, the minute holds the quota: no margin). A second is too short for tokens: one
# call's reservation (Converse's max_tokens) can be more than a second's share.
_WINDOWS = ((1.0 + _MARGIN, 1.0, True), (0.1, 0.1, True), (1 / 60, 2 / 60, False))


@dataclass
class _Spend:
    """One call in the window: when it was granted and the tokens it is counted at."""

    at: float
    tokens: int
    urgent: bool = True


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
        minute_s: float = 60.0,  # shorter in tests
    ) -> None:
        self._windows = [(minute_s * length, part, tokens) for length, part, tokens in _WINDOWS]
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._share = rescore_share
        self._clock = clock
        self._spent: deque[_Spend] = deque()
        self._urgent_waiting = 0
        self._last_urgent: float | None = None
        # When the stream called first after a quiet minute: a re-score's share is counted
        # from then, not over calls it made while it had the whole budget (those would block
        # it for a minute, and the stream's rows queued behind its batches with it).
        self._stream_since = 0.0
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
        spend = _Spend(now, tokens, urgent)
        self._spent.append(spend)
        if urgent:
            if self.stream_quiet():
                self._stream_since = now
            self._last_urgent = now
        self.stats.requests += 1
        self.stats.wait_s["stream" if urgent else "rescore"] += now - started
        self._changed.set()  # a waiting re-score looks again once no stream call waits
        return _Grant(self, spend)

    def _wait_s(self, now: float, tokens: int, urgent: bool) -> float:
        """0 when a call of ``tokens`` fits now, else how long until something expires (or a
        short look again while a stream call is ahead of a re-score)."""
        spent = self._spent
        while spent and spent[0].at <= now - self._windows[0][0]:
            spent.popleft()
        if not urgent and self._urgent_waiting:
            return 0.05
        quiet = self._last_urgent is None or self._last_urgent <= now - self._windows[0][0]
        # (as stream_quiet(), at ``now``)
        wait = 0.0
        for window, part, with_tokens in self._windows:
            inside = [s for s in spent if s.at > now - window]
            # Every call counts against the whole budget; a re-score's also against its share
            # (while the stream is recent): the share is the re-score's, the rest the stream's.
            groups = [(inside, 1.0)]
            if not urgent and not quiet:
                since = self._stream_since
                rescores = [s for s in inside if not s.urgent and s.at >= since]
                groups.append((rescores, self._share))
            for calls, share in groups:
                wait = max(
                    wait, self._wait_in(calls, now, window, part * share, tokens, with_tokens)
                )
        return wait

    def _wait_in(
        self,
        calls: list[_Spend],
        now: float,
        window: float,
        part: float,
        tokens: int,
        with_tokens: bool,
    ) -> float:
        """How long until a call of ``tokens`` fits among ``calls`` of one window, allowed
        ``part`` of the per-minute limits."""
        wait = 0.0
        for limit, used, cost, counts_tokens in (
            (self._rpm, len(calls), 1, False),
            (self._tpm, sum(s.tokens for s in calls), tokens, True),
        ):
            if limit is None or (counts_tokens and not with_tokens):
                continue
            allowed = max(1, math.floor(limit * part + 1e-9))  # 0.1 * 0.5 * 300 is 15
            if used == 0 or used + cost <= allowed:
                continue  # a call bigger than the window's limit runs alone
            # Until enough of the oldest calls of this window have left it.
            excess = used + cost - allowed
            freed = 0
            for s in calls:
                freed += s.tokens if counts_tokens else 1
                if freed >= excess:
                    wait = max(wait, s.at + window - now)
                    break
            else:
                wait = max(wait, calls[-1].at + window - now)
        return wait

    def stream_quiet(self) -> bool:
        last = self._last_urgent
        return last is None or last <= self._clock() - self._windows[0][0]

    def spending(self) -> dict[str, float]:
        stats = self.stats
        return {
            "requests": float(stats.requests),
            "input_tokens": float(stats.input_tokens),
            "output_tokens": float(stats.output_tokens),
            "wait_stream_s": stats.wait_s["stream"],
            "wait_rescore_s": stats.wait_s["rescore"],
        }

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
