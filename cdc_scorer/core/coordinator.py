"""The one task that feeds the pipelines (Debezium's ``ChangeEventSourceCoordinator``).

One change source streams from the oldest position any pipeline still needs; snapshots and
re-scores run beside it, their chunks merged into the stream at their watermarks
(``snapshotter.py``). Whatever ends the feed, every pipeline is told so and flushes what it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing

from cdc_scorer.core.feeds import ChangeStream
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.positions import Position
from cdc_scorer.core.router import Router


class Coordinator:
    def __init__(
        self,
        router: Router,
        open_stream: Callable[[], ChangeStream],
        telemetry: Observer,
    ) -> None:
        self._router = router
        self._open_stream = open_stream
        self._telemetry = telemetry
        self._stop = asyncio.Event()
        self._stream: ChangeStream | None = None

    def stop(self) -> None:
        """Stop intake; what was read is still routed, then the pipelines end."""
        self._stop.set()
        if self._stream is not None:
            self._stream.stop()

    def acknowledge(self, position: Position) -> None:
        """Every pipeline has durably applied ``position`` (the source may let go of it)."""
        if self._stream is not None:
            self._stream.acknowledge(position)

    async def run(self) -> None:
        try:
            if not self._stop.is_set():
                await self._streaming()
        except asyncio.CancelledError:
            # Everything is being cancelled (a pipeline died): nobody waits for the end, and a
            # dead pipeline's full inbox would hold this task for ever.
            raise
        except BaseException:
            await self._router.end()
            raise
        await self._router.end()

    async def _streaming(self) -> None:
        self._stream = stream = self._open_stream()
        if self._stop.is_set():  # asked to stop while the stream was being set up
            return
        source = self._telemetry.source
        source.streaming = True
        try:
            async with aclosing(stream.changes()) as changes:
                async for items in changes:
                    await self._router.route(items)
        finally:
            source.streaming = False
