"""The heartbeat: a tiny transaction every few seconds, so positions move on quiet tables and
lag is measured to the millisecond (change-log event times can be whole seconds). Each dialect
adds its statement (``_beat``) and connection (``_close``)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

import structlog

from cdc_scorer.core.errors import RetriableError

log = structlog.get_logger("cdc_scorer.stores.heartbeat")


class HeartbeatWriter(ABC):
    """Writes the heartbeat row of ``instance`` every ``interval_s`` until cancelled.

    A lost connection is retried at the next beat; a fatal error (a missing table, a missing
    grant) is raised: the daemon stops with it instead of beating into a wall forever.
    """

    def __init__(self, instance: str, interval_s: float) -> None:
        self._instance = instance[:64]
        self._interval_s = interval_s

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.to_thread(self._beat)
                except RetriableError as exc:
                    log.warning("heartbeat failed", error=str(exc))
                    self._close()
                await asyncio.sleep(self._interval_s)
        finally:
            self._close()

    @abstractmethod
    def _beat(self) -> None:
        """Write the row once (blocking; opens the connection when there is none)."""

    @abstractmethod
    def _close(self) -> None:
        """Drop the connection (after a failure, and at the end)."""
