"""The router: each source batch to the pipeline of its table; commits to every pipeline.

Every pipeline sees every commit, so its checkpoint moves even while its own table is quiet.
The heartbeat table's rows are not a pipeline's: they only tell how far behind the stream is.
Rows inserted into the signal table (re-score requests, chunk watermarks) go, as ``Signal``s,
to the pipeline they name, in order with its table's changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from cdc_scorer.core.own_tables import SIGNAL_TABLE, signal_of
from cdc_scorer.core.pipeline import Inbox
from cdc_scorer.core.records import END, Commit, Op, RowChange, SourceItem


class Router:
    def __init__(
        self,
        inboxes: Mapping[str, list[Inbox]],
        *,
        heartbeat_table: str,
        on_heartbeat: Callable[[datetime], None],
        pipelines: Mapping[str, Inbox] | None = None,
    ) -> None:
        self._inboxes = dict(inboxes)  # by source table: one per pipeline of the table
        self._pipelines = dict(pipelines or {})  # by pipeline name, for signals
        self._heartbeat_table = heartbeat_table
        self._on_heartbeat = on_heartbeat

    async def route(self, items: tuple[SourceItem, ...]) -> None:
        """One rows event's changes (one table), a snapshot chunk, or one commit."""
        if not items:
            return
        first = items[0]
        if isinstance(first, Commit):
            for inboxes in self._inboxes.values():
                for inbox in inboxes:
                    await inbox.put(items)
            return
        table = getattr(first, "table", "")
        targets = self._inboxes.get(table)
        if targets is not None:
            for target in targets:
                await target.put(items)
        elif table == self._heartbeat_table:
            last = items[-1]
            if isinstance(last, RowChange) and last.values.get("beat_at") is not None:
                self._on_heartbeat(last.values["beat_at"])
        elif table == SIGNAL_TABLE:
            for item in items:
                if isinstance(item, RowChange) and item.op is Op.INSERT:
                    await self._signal(item)

    async def _signal(self, row: RowChange) -> None:
        inbox = self._pipelines.get(_pipeline_of(row))
        if inbox is None:
            return  # another deployment's pipeline (one signal table serves them all)
        signal = signal_of(row)
        if signal is not None:
            await inbox.put((signal,))

    async def end(self) -> None:
        """No more items: each pipeline flushes what it has and ends."""
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                await inbox.put(END)


def _pipeline_of(row: RowChange) -> str:
    name = row.values.get("pipeline")
    return name.decode() if isinstance(name, bytes) else str(name)
