"""The binlog source: BinLogStreamReader in a dedicated thread feeding a bounded asyncio queue.

Rows events are decoded in the reader thread and handed over whole, a transaction at a time
(per-row handover costs ~20 %, ARCHITECTURE §7; a hand-over that waited for the event loop on
every event held the reader to ~2k rows/s). Positions are emitted only at transaction
boundaries (XID / COMMIT / DDL); the reader reconnects itself from the last boundary it saw.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import structlog
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.json_binary import JsonDiff
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc_scorer.db import connection_settings, mysql_errors, opener
from cdc_scorer.errors import FatalError, RetriableError
from cdc_scorer.positions import BinlogCoordinate, FilePosition, Gtid, MysqlGtid, Position, TxId
from cdc_scorer.records import ColumnsGone, Commit, Op, RowChange, SourceItem, TableTruncated
from cdc_scorer.retry import backoff_s
from cdc_scorer.source.decoder import FastRowsDecoder
from cdc_scorer.source.payload import TRANSACTION_PAYLOAD_EVENT, PayloadError, PayloadReader
from cdc_scorer.spec import RetrySpec, SourceSpec

log = structlog.get_logger("cdc_scorer.source")

SourceBatch = tuple[SourceItem, ...]  # one rows event's changes, or one Commit

_TRUNCATE = re.compile(
    r"\s*TRUNCATE\s+(?:TABLE\s+)?(?:`?([^`.\s]+)`?\.)?`?([^`.\s;]+)`?\s*;?\s*$", re.IGNORECASE
)
# Statements inside an XA transaction that neither begin nor end it in the binlog's terms.
_XA_INSIDE = re.compile(r"\s*XA\s+(START|BEGIN|END)\b", re.IGNORECASE)
ANONYMOUS_GTID_EVENT = 34  # MySQL with gtid_mode=OFF: the start of a transaction
# Events python-mysql-replication does not parse that never carry row data.
ROWLESS_EVENTS = {
    28: "IGNORABLE_LOG_EVENT",
    36: "TRANSACTION_CONTEXT_EVENT",  # group replication
    37: "VIEW_CHANGE_EVENT",  # group replication
    41: "HEARTBEAT_LOG_EVENT_V2",
}
EVENT_NAMES = {
    **ROWLESS_EVENTS,
    20: "PRE_GA_WRITE_ROWS_EVENT",
    21: "PRE_GA_UPDATE_ROWS_EVENT",
    22: "PRE_GA_DELETE_ROWS_EVENT",
    26: "INCIDENT_EVENT",
    42: "GTID_TAGGED_LOG_EVENT",
    165: "QUERY_COMPRESSED_EVENT",
    166: "WRITE_ROWS_COMPRESSED_EVENT_V1",
    167: "UPDATE_ROWS_COMPRESSED_EVENT_V1",
    168: "DELETE_ROWS_COMPRESSED_EVENT_V1",
    169: "WRITE_ROWS_COMPRESSED_EVENT",
    170: "UPDATE_ROWS_COMPRESSED_EVENT",
    171: "DELETE_ROWS_COMPRESSED_EVENT",
}
_COMPRESSED_ROWS_FIX = (
    "MariaDB writes these with log_bin_compress=ON; set log_bin_compress=OFF, or start the "
    "pipelines over from a snapshot past this point"
)
_UNREADABLE_FIX = {
    26: "the source logged an incident (events may be missing): check the server's error log, "
    "then start the pipelines over from a snapshot",
    42: "transactions with tagged GTIDs (MySQL 8.3+) are not supported: commit without a tag",
    **dict.fromkeys(range(165, 172), _COMPRESSED_ROWS_FIX),
}
_UNKNOWN_FIX = "report it with the server version; the stream stops rather than skip it"
# Unparsed events whose body starts, as a rows event's does, with the id of the table they
# change (so those of tables nobody captures can be passed over).
_ROWS_OF_ONE_TABLE = frozenset({20, 21, 22, *range(166, 172)})


def _table_id(event: Any) -> int:
    """The table id of a rows-like event the library left unparsed (its raw packet: the OK
    byte, the 19-byte header, then the 6-byte table id)."""
    raw = event.packet.packet.get_all_data()
    return int.from_bytes(raw[20:26], "little")


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


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: tables with their key columns (the heartbeat table has a key too)."""

    key_columns: dict[str, tuple[str, ...]]
    # The columns read downstream, per table (None or missing: all); the others stay undecoded.
    read_columns: dict[str, frozenset[str] | None] | None = None


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)


class BinlogSource:
    """Reads from ``start`` and puts tuples of items into ``queue`` until stopped."""

    def __init__(
        self,
        source: SourceSpec,
        capture: CaptureSpec,
        start: Position,
        handover: Handover,
        *,
        retry: RetrySpec,
        on_disconnect: Callable[[], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_rows: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._source = source
        self._capture = capture
        self._position = start
        self._handover = handover
        self._retry = retry
        self._decoder = (
            FastRowsDecoder(capture.read_columns or {}) if source.decoder == "fast" else None
        )
        self._tx: TxId | None = None  # the transaction being read
        self._tx_rows = False  # whether it changed a captured table
        self._gone: dict[int, tuple[Any, frozenset[str]]] = {}  # per table map
        self._payloads: PayloadReader | None = None
        self._part: list[SourceBatch] = []
        self._part_rows = 0
        self._stop = threading.Event()  # stop at the next transaction boundary
        self._abort = threading.Event()  # stop now (the task was cancelled)
        self._on_disconnect = on_disconnect
        self._on_connect = on_connect
        self._on_rows = on_rows

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
            pymysql_wrapper=opener(self._source),
            server_id=self._source.server_id,
            blocking=True,
            resume_stream=True,
            **self._position.reader_start(),
            # A table map repeats before every statement; parse each table id once (the
            # library clears its table map at each rotation, where a restarted server may reuse
            # ids; _read clears it at every rotate event too).
            freeze_schema=True,
            only_schemas=[self._source.database],  # only_tables matches bare names (§7)
            only_tables=list(self._capture.key_columns),
            # only_events matches exact classes: PartialUpdateRowsEvent must be named, and
            # NotImplementedEvent lets every event the library cannot parse reach _unparsed
            # (a compressed transaction among them) instead of vanishing.
            only_events=[
                MariadbGtidEvent,
                GtidEvent,
                XidEvent,
                QueryEvent,
                RotateEvent,
                HeartbeatLogEvent,
                WriteRowsEvent,
                UpdateRowsEvent,
                PartialUpdateRowsEvent,
                DeleteRowsEvent,
                XAPrepareEvent,
                NotImplementedEvent,
            ],
            filter_non_implemented_events=False,
            # A heartbeat every 0.5 s lets the loop notice the stop flag (close() would hang).
            slave_heartbeat=_STOP_POLL_S,
        )

    def _read_forever(self) -> None:
        attempt = 0
        while not self._stop.is_set():
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
        self._tx, self._tx_rows = None, False
        self._payloads = PayloadReader(stream)
        connected = False
        # A stop lets the current transaction finish: a clean stop then commits a checkpoint
        # that covers every row it scored.
        while not self._abort.is_set() and not (self._stop.is_set() and self._tx is None):
            event = stream.fetchone()
            if event is None:  # the server closed the stream (shutdown): reconnect
                raise RetriableError("binlog stream ended", code="stream_ended")
            if not connected:
                connected = True
                if self._on_connect is not None:
                    self._on_connect()
            packet = event.packet
            self._handle(stream, event, packet.log_pos - packet.event_size, packet.log_pos)
        self._flush()

    def _handle(self, stream: BinLogStreamReader, event: Any, start: int, end: int) -> None:
        """One event; ``start``/``end``: where it starts and ends in the current binlog file
        (for the events inside a compressed transaction: where the payload does)."""
        if isinstance(event, RotateEvent):
            stream.table_map.clear()
            if self._tx is not None:
                # The library reconnected by itself in the middle of a transaction, where
                # the table maps are behind it: start again from our last commit.
                raise RetriableError(
                    "binlog reconnected mid-transaction", code="mid_transaction_reconnect"
                )
        elif isinstance(event, NotImplementedEvent):
            self._unparsed(stream, event, start, end)
        elif isinstance(event, QueryEvent) and _XA_INSIDE.match(event.query):
            pass  # XA START / XA END: the transaction goes on (to its XA PREPARE)
        elif self._tx is None and (
            isinstance(event, MariadbGtidEvent | GtidEvent)
            or (isinstance(event, QueryEvent) and event.query == "BEGIN")
        ):
            if isinstance(self._position, FilePosition):
                self._tx = BinlogCoordinate(stream.log_file, start)
            elif isinstance(event, MariadbGtidEvent):
                self._tx = Gtid(event.domain_id, event.server_id, event.gtid_seq_no)
            elif isinstance(event, GtidEvent):
                uuid, _, seq = str(event.gtid).rpartition(":")
                self._tx = MysqlGtid(uuid.lower(), int(seq))
        elif isinstance(event, XAPrepareEvent) and not event.one_phase and self._tx_rows:
            raise FatalError(
                f"an XA transaction prepared at {stream.log_file}:{start} changed captured "
                "tables: its rows commit later (XA COMMIT) or never (XA ROLLBACK), which "
                "cdc-scorer does not follow — use ordinary transactions on captured tables"
            )
        elif isinstance(event, XidEvent | XAPrepareEvent) or (
            isinstance(event, QueryEvent) and event.query != "BEGIN"
        ):
            tx, self._tx = self._tx, None
            self._tx_rows = False
            if tx is not None:
                truncated = self._truncated(event) if isinstance(event, QueryEvent) else None
                if truncated is not None:
                    self._put((TableTruncated(truncated, tx),))
                self._position = self._commit(stream, tx, BinlogCoordinate(stream.log_file, end))
                self._put((Commit(self._position, _utc(event.timestamp), tx),))
                self._flush()
        elif isinstance(event, HeartbeatLogEvent):
            self._flush()
        elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            key_columns = self._capture.key_columns.get(event.table)
            if key_columns is None:
                return
            gone = self._gone_columns(event)
            if gone:  # the pipelines that read them stop; the others go on
                self._put((ColumnsGone(event.table, gone, self._tx),))
            changes = row_changes(event, key_columns, self._tx, self._decoder)
            self._tx_rows = self._tx_rows or bool(changes)
            if self._on_rows is not None and changes:
                self._on_rows(event.table, changes[0].op.value, len(changes))
            self._put(tuple(changes))

    def _gone_columns(self, event: Any) -> frozenset[str]:
        """Columns read downstream that this event's table map does not have (asked once per
        table map: they repeat before every statement)."""
        table_map = event.table_map[event.table_id]
        cached = self._gone.get(id(table_map))
        if cached is not None and cached[0] is table_map:
            return cached[1]
        wanted = (self._capture.read_columns or {}).get(event.table) or frozenset()
        present = {column.name for column in table_map.columns}
        gone = frozenset(wanted - present) if all(present) else frozenset()
        if len(self._gone) > 1024:
            self._gone.clear()
        self._gone[id(table_map)] = (table_map, gone)
        return gone

    def _truncated(self, event: Any) -> str | None:
        """The captured table a TRUNCATE statement empties, if it is one (it writes no rows)."""
        match = _TRUNCATE.match(event.query)
        if match is None:
            return None
        schema, table = match.group(1), match.group(2)
        if schema is None:
            default = event.schema
            schema = default.decode() if isinstance(default, bytes) else str(default or "")
        if schema == self._source.database and table in self._capture.key_columns:
            return str(table)
        return None

    def _unparsed(self, stream: BinLogStreamReader, event: Any, start: int, end: int) -> None:
        """An event the library does not parse: opened (a compressed transaction), known to
        carry no rows, or the end of the stream with one line naming it — never skipped."""
        kind = event.event_type
        if kind == TRANSACTION_PAYLOAD_EVENT:
            assert self._payloads is not None
            try:
                for inner_event in self._payloads.events(event):
                    self._handle(stream, inner_event, start, end)
            except PayloadError as exc:
                raise FatalError(
                    f"compressed transaction at {stream.log_file}:{start} cannot be read: {exc}"
                ) from exc
        elif kind == ANONYMOUS_GTID_EVENT:
            if not isinstance(self._position, FilePosition):
                raise FatalError(
                    f"a transaction without a GTID at {stream.log_file}:{start} while positions "
                    "are GTID sets: set gtid_mode=ON for every transaction, or read by "
                    'file:pos (source.positions = "file")'
                )
            if self._tx is None:
                self._tx = BinlogCoordinate(stream.log_file, start)
        elif kind in _ROWS_OF_ONE_TABLE and _table_id(event) not in stream.table_map:
            return  # rows of a table no pipeline captures (only captured tables are mapped)
        elif kind not in ROWLESS_EVENTS:
            name = EVENT_NAMES.get(kind, "unknown")
            fix = _UNREADABLE_FIX.get(kind, _UNKNOWN_FIX)
            raise FatalError(
                f"binlog event type {kind} ({name}) at {stream.log_file}:{start} cannot be read "
                f"by cdc-scorer, and it may change captured tables: {fix}"
            )

    def _commit(self, stream: BinLogStreamReader, tx: TxId, end: BinlogCoordinate) -> Position:
        """The position after ``tx`` commits; the library's own reconnect must resume there
        (its ``auto_position`` never advances by itself: ARCHITECTURE §7)."""
        position = self._position.after(tx, end)
        if position.auto_position is not None:
            stream.auto_position = position.auto_position
        return position

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


def _key_getter(key_columns: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The key of a decoded row as a tuple (itemgetter gives a bare value for one column)."""
    if len(key_columns) == 1:
        (only,) = key_columns
        return lambda row: (row[only],)
    return itemgetter(*key_columns)


def row_changes(
    event: Any,
    key_columns: tuple[str, ...],
    tx: TxId | None,
    decoder: FastRowsDecoder | None = None,
) -> list[RowChange]:
    table = event.table
    committed_at = _utc(event.timestamp)
    images = decoder.images(event) if decoder is not None else None
    if images is not None:
        key_of = _key_getter(key_columns)
        if isinstance(event, UpdateRowsEvent):
            return [
                RowChange(Op.UPDATE, table, key_of(after), after, tx, committed_at, before)
                for before, after in images
            ]
        op = Op.INSERT if isinstance(event, WriteRowsEvent) else Op.DELETE
        return [
            RowChange(op, table, key_of(values), values, tx, committed_at) for _, values in images
        ]
    changes: list[RowChange] = []
    if isinstance(event, UpdateRowsEvent):
        partial = isinstance(event, PartialUpdateRowsEvent)
        for row in event.rows:
            before, after = row["before_values"], row["after_values"]
            changes.append(
                RowChange(
                    Op.UPDATE,
                    table,
                    tuple(after[c] for c in key_columns),
                    after,
                    tx,
                    committed_at,
                    before=before,
                    incomplete=_json_diffs(after) if partial else frozenset(),
                )
            )
        return changes
    op = Op.INSERT if isinstance(event, WriteRowsEvent) else Op.DELETE
    for row in event.rows:
        values = row["values"]
        changes.append(
            RowChange(op, table, tuple(values[c] for c in key_columns), values, tx, committed_at)
        )
    return changes


def _json_diffs(values: dict[str, Any]) -> frozenset[str]:
    """Columns of a partial update's after image that hold a JSON diff, not a value."""
    return frozenset(name for name, value in values.items() if isinstance(value, JsonDiff))


def probe_replication(source: SourceSpec, start: Position) -> None:
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
