"""A change stream read by a thread of its own, and its bounded hand-over to the event loop.

A reader thread (the binlog's, PostgreSQL's replication connection) decodes whole transactions
and hands them over in parts; the loop takes them in order. Counted in row changes, not parts,
so the bound is memory, whatever the parts' sizes. ``ThreadedStream`` is what both sources'
streams share: the thread's life, the stop at a transaction boundary, the parts.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator

from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import SourceItem

SourceBatch = tuple[SourceItem, ...]
_STOP_POLL_S = 0.5  # how soon a reader waiting for room sees an abort
# A large transaction is handed over in parts of about this many row changes.
PART_ROWS = 200


class Handover:
    """The bounded hand-over from the reader thread to the event loop, counted in row changes.

    The reader never waits for the loop while there is room: it schedules the put and goes on
    reading. Once ``max_rows`` row changes are waiting it blocks (backpressure) until the loop
    has taken some; a part larger than the bound is let through alone, so nothing deadlocks.
    """

    def __init__(self, max_rows: int) -> None:
        self._parts: asyncio.Queue[tuple[list[SourceBatch], int]] = asyncio.Queue()
        self._max_rows = max_rows
        self._waiting_rows = 0
        self._room = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, part: list[SourceBatch], rows: int, abort: threading.Event) -> bool:
        """Reader thread: hand ``part`` over; False if aborted while waiting for room."""
        with self._room:
            while self._waiting_rows and self._waiting_rows + rows > self._max_rows:
                self._room.wait(_STOP_POLL_S)
                if abort.is_set():
                    return False
            self._waiting_rows += rows
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._parts.put_nowait, (part, rows))
        return True

    def _taken(self, rows: int) -> None:
        with self._room:
            self._waiting_rows -= rows
            self._room.notify()

    async def get(self) -> list[SourceBatch]:
        part, rows = await self._parts.get()
        self._taken(rows)
        return part

    def get_nowait(self) -> list[SourceBatch]:
        part, rows = self._parts.get_nowait()
        self._taken(rows)
        return part

    def empty(self) -> bool:
        return self._parts.empty()

    def qsize(self) -> int:
        """Row changes waiting (the queue-depth gauge)."""
        return self._waiting_rows


class ThreadedStream(ABC):
    """A ``ChangeStream`` whose reading runs in a thread (:meth:`_read_forever`)."""

    def __init__(self, queue_max_rows: int, name: str) -> None:
        self._handover = Handover(queue_max_rows)
        self._name = name
        self._part: list[SourceBatch] = []
        self._part_rows = 0
        self._stop = threading.Event()  # stop at the next transaction boundary
        self._abort = threading.Event()  # stop now (the task was cancelled)

    @abstractmethod
    def _read_forever(self) -> None:
        """The reader thread: read until stopped (``_stop``, then at a transaction boundary)
        or aborted, handing items over with :meth:`_put` and :meth:`_flush`."""

    def queue_depth(self) -> int:
        """Row changes read and not yet taken."""
        return self._handover.qsize()

    def stop(self) -> None:
        """Stop reading once the transaction being read has ended (nothing half-read)."""
        self._stop.set()

    def retained_bytes(self) -> int | None:
        """None: the server keeps its log by its own retention, not for this reader."""
        return None

    def acknowledge(self, position: Position) -> None:  # noqa: B027 - a default, not abstract
        """Nothing to tell the server (a source whose server keeps changes for it does)."""

    async def run(self) -> None:
        """Run the reader thread; returns when stopped, raises what killed it."""
        self._handover.bind(asyncio.get_running_loop())
        try:
            await asyncio.to_thread(self._read_forever)
        except asyncio.CancelledError:
            # The drain ran out of time: leave now, or interpreter exit waits for the thread.
            self._abort.set()
            self._stop.set()
            raise

    async def changes(self) -> AsyncGenerator[SourceBatch, None]:
        """The source batches in commit order, until stopped (what was read before the stop
        is still yielded); raises what stopped the reader. Close it with ``aclosing``."""
        handover = self._handover
        reader = asyncio.create_task(self.run(), name=self._name)
        try:
            while True:
                get = asyncio.ensure_future(handover.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    await reader  # raises what stopped the reader, or returns when stopped
                    while not handover.empty():
                        for items in handover.get_nowait():
                            yield items
                    return
                for items in get.result():
                    yield items
        finally:
            if not reader.done():
                self.stop()
                await asyncio.gather(reader, return_exceptions=True)

    def _dropped(self) -> None:
        """The connection was lost: the transaction read in part is sent again whole."""
        self._part, self._part_rows = [], 0

    def _put(self, items: SourceBatch) -> None:
        self._part.append(items)
        self._part_rows += len(items)
        if self._part_rows >= PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Hand what was read to the loop; blocks while the hand-over is full (backpressure)."""
        if self._part:
            part, rows = self._part, self._part_rows
            self._part, self._part_rows = [], 0
            self._handover.put(part, rows, self._abort)
