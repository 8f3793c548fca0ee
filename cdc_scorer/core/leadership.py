"""Leadership: a process scores a pipeline only while it holds the pipeline's leader lock (the
store's, held on the connection its sink commits through); a standby waits here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("cdc_scorer.core.leadership")


class Contender(Protocol):
    """Something that holds a leader lock on its own connection (the pipeline's sink)."""

    lock: str

    def try_lead(self, wait_s: float) -> bool: ...


async def lead(
    contenders: Sequence[Contender], stopping: asyncio.Event, poll_s: float = 1.0
) -> bool:
    """Take every lock, in lock-name order (two instances cannot deadlock), each re-asked every
    ``poll_s``: a standby waits here until the leader dies or stops. False if ``stopping`` is
    set first."""
    waiting_logged = False
    for contender in sorted(contenders, key=lambda c: c.lock):
        while not await asyncio.to_thread(contender.try_lead, poll_s):
            if stopping.is_set():
                return False
            if not waiting_logged:
                log.info("standby: another instance holds the leader lock", lock=contender.lock)
                waiting_logged = True
        if stopping.is_set():
            return False
    log.info("leader", locks=sorted(c.lock for c in contenders))
    return True
