"""The binlog stream: BinLogStreamReader in a dedicated thread feeding a bounded asyncio queue.

Rows events are decoded in the reader thread and handed over whole, a transaction at a time
(per-row handover costs ~20 %, docs/architecture.md; a hand-over that waited for the event loop on
every event held the reader to ~2k rows/s). Positions are emitted only at transaction
boundaries (XID / COMMIT / DDL); the reader reconnects itself from the last boundary it saw.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

import structlog
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import RotateEvent

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.retry import backoff_s
from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.mysql.connection import Connection, connection_settings, mysql_errors, opener
from cdc_scorer.sources import Capture, StreamHooks
from cdc_scorer.sources.binlog.decoder import FastRowsDecoder
from cdc_scorer.sources.binlog.events import READ_EVENTS, SourceBatch, TransactionReader
from cdc_scorer.sources.binlog.positions import BinlogPosition

log = structlog.get_logger("cdc_scorer.source")

_STOP_POLL_S = 0.5
# A large transaction is handed over in parts of about this many row changes.
_HANDOVER_PART_ROWS = 200


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


class BinlogStream:
    """Reads from ``start`` and hands tuples of items over to :meth:`changes` until stopped
    (the ``ChangeStream`` of the binlog source)."""

    def __init__(
        self,
        source: SourceSpec,
        capture: Capture,
        start: BinlogPosition,
        *,
        retry: RetrySpec,
        hooks: StreamHooks | None = None,
        verify: Callable[[BinlogPosition], None] | None = None,
    ) -> None:
        hooks = hooks or StreamHooks()
        self._source = source
        self._capture = capture
        self._handover = Handover(source.queue_max_rows)
        self._retry = retry
        decoder = FastRowsDecoder(capture.read_columns) if source.decoder == "fast" else None
        self._events = TransactionReader(
            source.database,
            capture.key_columns,
            capture.read_columns,
            start,
            decoder,
            self._put,
            self._flush,
            hooks.on_rows,
        )
        self._part: list[SourceBatch] = []
        self._part_rows = 0
        self._stop = threading.Event()  # stop at the next transaction boundary
        self._abort = threading.Event()  # stop now (the task was cancelled)
        self._on_disconnect = hooks.on_disconnect
        self._on_connect = hooks.on_connect
        # Before every reconnect: the server the name reaches now must have our position (a
        # failover may have moved the name to another server).
        self._verify = verify

    def queue_depth(self) -> int:
        """Row changes read and not yet taken."""
        return self._handover.qsize()

    @property
    def _position(self) -> BinlogPosition:
        """The last commit read: where a new connection starts."""
        return self._events.position

    def stop(self) -> None:
        """Stop reading once the transaction being read has ended (nothing half-read)."""
        self._stop.set()

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
        """The source batches in binlog order, until stopped (what was read before the stop
        is still yielded); raises what stopped the reader. Close it with ``aclosing``."""
        handover = self._handover
        reader = asyncio.create_task(self.run(), name="binlog-reader")
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

    # ------------------------------------------------------------------ reader thread
    def _stream(self) -> BinLogStreamReader:
        return BinLogStreamReader(
            # The same settings, TLS included, as every other connection of the scorer.
            connection_settings=connection_settings(self._source),
            pymysql_wrapper=_one_binlog_connection(opener(self._source)),
            server_id=self._source.server_id,
            blocking=True,
            resume_stream=True,
            **self._position.reader_start(),
            # A table map repeats before every statement; parse each table id once (the
            # library clears its table map at each rotation, where a restarted server may reuse
            # ids; _read clears it at every rotate event too).
            freeze_schema=True,
            # only_tables matches bare names: without only_schemas, any database's table.
            only_schemas=[self._source.database],
            only_tables=list(self._capture.key_columns),
            only_events=list(READ_EVENTS),
            filter_non_implemented_events=False,
            # A heartbeat every 0.5 s lets the loop notice the stop flag (close() would hang).
            slave_heartbeat=_STOP_POLL_S,
        )

    def _read_forever(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            if not first and self._verify is not None:
                self._verify(self._position)  # PositionLost: one line, the process stops
                log.info(
                    "binlog position checked before reconnecting", position=str(self._position)
                )
            first = False
            stream = self._stream()
            try:
                with mysql_errors(f"binlog position {self._position} cannot be read"):
                    self._read(stream)
                attempt = 0 if self._stop.is_set() else attempt
            except RetriableError as exc:
                # The reconnect replays the transaction that was being read: drop its start.
                self._part, self._part_rows = [], 0
                if self._on_disconnect is not None:
                    self._on_disconnect()
                delay = backoff_s(self._retry, attempt)
                log.warning(
                    "binlog disconnected",
                    code=exc.code,
                    retry_in_s=round(delay, 2),
                    position=str(self._position),
                )
                attempt += 1
                self._stop.wait(delay)
            finally:
                stream.close()

    def _read(self, stream: BinLogStreamReader) -> None:
        events = self._events
        events.begin(stream)
        connected = False
        # A stop lets the current transaction finish: a clean stop then commits a checkpoint
        # that covers every row it scored.
        while not self._abort.is_set() and not (self._stop.is_set() and events.tx is None):
            event = stream.fetchone()
            if event is None:  # the server closed the stream (shutdown): reconnect
                raise RetriableError("binlog stream ended", code="stream_ended")
            if not connected:
                connected = True
                if self._on_connect is not None:
                    self._on_connect()
            packet = event.packet
            events.handle(stream, event, packet.log_pos - packet.event_size, packet.log_pos)
        self._flush()

    def _put(self, items: SourceBatch) -> None:
        self._part.append(items)
        self._part_rows += len(items)
        if self._part_rows >= _HANDOVER_PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Hand what was read to the loop; blocks while the hand-over is full (backpressure)."""
        if self._part:
            part, rows = self._part, self._part_rows
            self._part, self._part_rows = [], 0
            self._handover.put(part, rows, self._abort)


def _one_binlog_connection(connect: Callable[..., Connection]) -> Callable[..., Connection]:
    """The library's connect function, refusing the library's own reconnects of the binlog
    connection: it reconnects by itself at the position it last read, to whatever server the
    host name reaches then (after a failover, another one). Refused, the reconnect goes
    through :meth:`BinlogStream._read_forever`, which checks the position first. (The control
    connection names ``information_schema``; the binlog connection names no database.)"""
    opened = 0

    def connect_once(**settings: Any) -> Connection:
        nonlocal opened
        if settings.get("db") is None and settings.get("database") is None:
            opened += 1
            if opened > 1:
                raise RetriableError("the binlog connection was lost", code="binlog_reconnect")
        connection: Connection = connect(**settings)
        return connection

    return connect_once


def probe_replication(source: SourceSpec, start: BinlogPosition) -> None:
    """Open a binlog stream at ``start`` and read what is there (proves the replication grant)."""
    stream = BinLogStreamReader(
        connection_settings=connection_settings(source),
        pymysql_wrapper=opener(source),
        server_id=source.server_id,
        blocking=False,
        resume_stream=True,
        only_events=[RotateEvent],
        **start.reader_start(),
    )
    try:
        with mysql_errors("reading the binlog"):
            while stream.fetchone() is not None:
                pass
    finally:
        stream.close()
