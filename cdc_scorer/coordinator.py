"""Snapshot, then stream: the one task that feeds the pipelines (Debezium's
``ChangeEventSourceCoordinator``).

Pipelines whose snapshot is running read their table's existing rows first; then one change
source streams from the oldest position any pipeline still needs. Whatever ends the feed, every
pipeline is told so and flushes what it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

import structlog

from cdc_scorer.db import close_quietly, connect
from cdc_scorer.metrics import Telemetry
from cdc_scorer.pipeline import PipelineRunner
from cdc_scorer.records import SourceItem
from cdc_scorer.router import Router
from cdc_scorer.schema import TableInfo
from cdc_scorer.source.snapshot import snapshot_rows
from cdc_scorer.spec import SourceSpec

log = structlog.get_logger("cdc_scorer.coordinator")


class ChangeSource(Protocol):
    """Source batches in source order (``source.binlog.BinlogSource``; a list in tests)."""

    def changes(self) -> AsyncGenerator[tuple[SourceItem, ...], None]: ...

    def stop(self) -> None:
        """Stop at the next transaction boundary; :meth:`changes` then ends."""


class Coordinator:
    def __init__(
        self,
        source: SourceSpec,
        runners: Sequence[PipelineRunner],
        tables: dict[str, TableInfo],
        router: Router,
        open_stream: Callable[[], ChangeSource],
        telemetry: Telemetry,
    ) -> None:
        self._source = source
        self._runners = runners
        self._tables = tables
        self._router = router
        self._open_stream = open_stream
        self._telemetry = telemetry
        self._stop = asyncio.Event()
        self._stream: ChangeSource | None = None

    def stop(self) -> None:
        """Stop intake; what was read is still routed, then the pipelines end."""
        self._stop.set()
        if self._stream is not None:
            self._stream.stop()

    async def run(self) -> None:
        try:
            await self._snapshots()
            if not self._stop.is_set():
                await self._streaming()
        finally:
            await self._router.end()

    async def _snapshots(self) -> None:
        pending = [r for r in self._runners if r.checkpoint.snapshot_state == "running"]
        if not pending:
            return
        conn = await asyncio.to_thread(connect, self._source)
        try:
            for runner in pending:
                pipeline = runner.pipeline
                log.info(
                    "snapshot starting",
                    pipeline=pipeline.name,
                    resuming=runner.checkpoint.snapshot_cursor is not None,  # keys stay out
                )
                chunks = snapshot_rows(
                    conn, pipeline, self._tables[pipeline.table], runner.checkpoint.snapshot_cursor
                )
                async for items in chunks:
                    self._telemetry.on_snapshot_rows(pipeline.name, len(items) - 1)
                    await runner.inbox.put(items)
                    if self._stop.is_set():
                        return
        finally:
            close_quietly(conn)

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
