"""Binlog events → source items, at transaction boundaries: the reader thread's logic.

``TransactionReader`` knows where each transaction starts and commits (GTID events, BEGIN,
XID, DDL, XA), turns rows events of captured tables into ``RowChange``s, opens compressed
transactions, and turns what no row event says — a TRUNCATE, a model input gone from a table
map, an event it cannot read — into an item or one clear error. Never a silent skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
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

from cdc_scorer.core.errors import FatalError, RetriableError
from cdc_scorer.core.positions import TxId
from cdc_scorer.core.records import (
    ColumnsGone,
    Commit,
    Gap,
    Op,
    RowChange,
    SourceItem,
    TableAltered,
    TableGone,
    TableTruncated,
)
from cdc_scorer.mysql.json_text import mysql_json_text
from cdc_scorer.sources.binlog.decoder import FastRowsDecoder
from cdc_scorer.sources.binlog.payload import TRANSACTION_PAYLOAD_EVENT, PayloadError, PayloadReader
from cdc_scorer.sources.binlog.positions import (
    BinlogCoordinate,
    BinlogPosition,
    FilePosition,
    Gtid,
    MysqlGtid,
)

# A MySQL partial JSON update carries a diff, not the value (the dead letter's words).
PARTIAL_JSON = Gap(
    "partial_json_update",
    "arrived as a partial JSON update (binlog_row_value_options=PARTIAL_JSON): set "
    "binlog_row_value_options='' so the binlog carries whole JSON values",
)

SourceBatch = tuple[SourceItem, ...]  # one rows event's changes, or one Commit
# The events TransactionReader handles: the reader asks the library for exactly these.
# only_events matches exact classes: PartialUpdateRowsEvent must be named, and
# NotImplementedEvent lets every event the library cannot parse reach _unparsed (a compressed
# transaction among them) instead of vanishing.
READ_EVENTS = (
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
)

_TRUNCATE = re.compile(
    r"\s*TRUNCATE\s+(?:TABLE\s+)?(?:`?([^`.\s]+)`?\.)?`?([^`.\s;]+)`?\s*;?\s*$", re.IGNORECASE
)
_ALTER = re.compile(
    r"\s*ALTER\s+(?:ONLINE\s+|OFFLINE\s+|IGNORE\s+)*TABLE\s+(?:IF\s+EXISTS\s+)?"
    r"(?:`?([^`.\s]+)`?\.)?`?([^`.\s]+)`?(?:\s|$)",
    re.IGNORECASE,
)
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_NAME = re.compile(r"\s*(?:`?([^`.\s,;]+)`?\.)?`?([^`.\s,;]+)`?\s*$")
_DROP = re.compile(
    r"\s*DROP\s+TABLES?\s+(?:IF\s+EXISTS\s+)?(.*?)(?:\s+(?:RESTRICT|CASCADE))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_RENAME = re.compile(r"\s*RENAME\s+TABLES?\s+(.*?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_TO = re.compile(r"\s+TO\s+", re.IGNORECASE)
_ALTER_RENAME = re.compile(
    _ALTER.pattern + r".*?\bRENAME\s+(?!COLUMN\b|INDEX\b|KEY\b)", re.IGNORECASE | re.DOTALL
)


_DROP_DATABASE = re.compile(
    r"\s*DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?`?([^`\s;]+)`?\s*;?\s*$",
    re.IGNORECASE,
)
EVERY_TABLE = "*"  # a dropped database takes all its tables


def gone_tables(query: str) -> list[tuple[str | None, str]]:
    """(schema or None, table) of each table a DROP TABLE, RENAME TABLE or ALTER TABLE …
    RENAME statement takes away under its name (DROP TEMPORARY TABLE takes none); for DROP
    DATABASE, (the database, EVERY_TABLE)."""
    query = _COMMENT.sub(" ", query)
    if match := _DROP_DATABASE.match(query):
        return [(match.group(1), EVERY_TABLE)]
    if match := _DROP.match(query):
        names = match.group(1).split(",")
    elif match := _RENAME.match(query):
        names = [_TO.split(pair, maxsplit=1)[0] for pair in match.group(1).split(",")]
    elif match := _ALTER_RENAME.match(query):
        return [(match.group(1), match.group(2))]
    else:
        return []
    found = (_NAME.match(name) for name in names)
    return [(m.group(1), m.group(2)) for m in found if m is not None]


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


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)


class TransactionReader:
    """The state of the stream between transaction boundaries, for one reader thread.

    ``emit`` takes each source batch in order; ``flush`` hands what was emitted over (at a
    commit, or at a heartbeat while idle).
    """

    def __init__(
        self,
        database: str,
        key_columns: Mapping[str, tuple[str, ...]],
        read_columns: Mapping[str, frozenset[str] | None],
        start: BinlogPosition,
        decoder: FastRowsDecoder | None,
        emit: Callable[[SourceBatch], None],
        flush: Callable[[], None],
        on_rows: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._database = database
        self._key_columns = key_columns
        self._read_columns = read_columns
        self.position = start  # the last commit read
        self._decoder = decoder
        self._emit = emit
        self._flush = flush
        self._on_rows = on_rows
        self.tx: TxId | None = None  # the transaction being read
        self._rows_in_tx = False  # whether it changed a captured table
        self._gone: dict[int, tuple[Any, frozenset[str]]] = {}  # per table map
        self._payloads: PayloadReader | None = None
        self._payload_server: int | None = None  # while reading a compressed transaction

    def begin(self, stream: BinLogStreamReader) -> None:
        """A new connection: nothing is half-read (it starts at the last commit)."""
        self.tx, self._rows_in_tx = None, False
        self._payloads = PayloadReader(stream)

    def handle(self, stream: BinLogStreamReader, event: Any, start: int, end: int) -> None:
        """One event; ``start``/``end``: where it starts and ends in the current binlog file
        (for the events inside a compressed transaction: where the payload does)."""
        if isinstance(event, RotateEvent):
            stream.table_map.clear()
            if self.tx is not None:
                # The library reconnected by itself in the middle of a transaction, where
                # the table maps are behind it: start again from our last commit.
                raise RetriableError(
                    "binlog reconnected mid-transaction", code="mid_transaction_reconnect"
                )
        elif isinstance(event, NotImplementedEvent):
            self._unparsed(stream, event, start, end)
        elif isinstance(event, QueryEvent) and _XA_INSIDE.match(event.query):
            pass  # XA START / XA END: the transaction goes on (to its XA PREPARE)
        elif self.tx is None and (
            isinstance(event, MariadbGtidEvent | GtidEvent)
            or (isinstance(event, QueryEvent) and event.query == "BEGIN")
        ):
            if isinstance(self.position, FilePosition):
                self.tx = BinlogCoordinate(stream.log_file, start)
            elif isinstance(event, MariadbGtidEvent):
                self.tx = Gtid(event.domain_id, event.server_id, event.gtid_seq_no)
            elif isinstance(event, GtidEvent):
                uuid, _, seq = str(event.gtid).rpartition(":")
                self.tx = MysqlGtid(uuid.lower(), int(seq))
        elif isinstance(event, XAPrepareEvent) and not event.one_phase and self._rows_in_tx:
            raise FatalError(
                f"an XA transaction prepared at {stream.log_file}:{start} changed captured "
                "tables: its rows commit later (XA COMMIT) or never (XA ROLLBACK), which "
                "cdc-scorer does not follow — use ordinary transactions on captured tables"
            )
        elif isinstance(event, XidEvent | XAPrepareEvent) or (
            isinstance(event, QueryEvent) and event.query != "BEGIN"
        ):
            tx, self.tx = self.tx, None
            self._rows_in_tx = False
            if tx is not None:
                if isinstance(event, QueryEvent):
                    for table in self._taken_away(event):
                        self._emit((TableGone(table, tx, event.query[:300]),))
                    truncated = self._captured(_TRUNCATE, event)
                    if truncated is not None:
                        self._emit((TableTruncated(truncated, tx),))
                    altered = self._captured(_ALTER, event)
                    if altered is not None:
                        self._emit((TableAltered(altered, tx),))
                self.position = self._commit(
                    stream,
                    tx,
                    BinlogCoordinate(stream.log_file, end),
                    self._fingerprint(event, start),
                )
                self._emit((Commit(self.position, _utc(event.timestamp), tx),))
                self._flush()
        elif isinstance(event, HeartbeatLogEvent):
            self._flush()
        elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            key_columns = self._key_columns.get(event.table)
            if key_columns is None:
                return
            gone = self._gone_columns(event)
            if gone:  # the pipelines that read them stop; the others go on
                self._emit((ColumnsGone(event.table, gone, self.tx),))
            changes = row_changes(event, key_columns, self.tx, self._decoder)
            self._rows_in_tx = self._rows_in_tx or bool(changes)
            if self._on_rows is not None and changes:
                self._on_rows(event.table, changes[0].op.value, len(changes))
            self._emit(tuple(changes))

    def _gone_columns(self, event: Any) -> frozenset[str]:
        """Columns read downstream that this event's table map does not have (asked once per
        table map: they repeat before every statement)."""
        table_map = event.table_map[event.table_id]
        cached = self._gone.get(id(table_map))
        if cached is not None and cached[0] is table_map:
            return cached[1]
        wanted = self._read_columns.get(event.table) or frozenset()
        present = {column.name for column in table_map.columns}
        gone = frozenset(wanted - present) if all(present) else frozenset()
        if len(self._gone) > 1024:
            self._gone.clear()
        self._gone[id(table_map)] = (table_map, gone)
        return gone

    def _captured(self, statement: re.Pattern[str], event: Any) -> str | None:
        """The captured table a TRUNCATE or ALTER TABLE statement changes, if it is one (they
        write no rows)."""
        match = statement.match(event.query)
        if match is None:
            return None
        return self._captured_name(event, match.group(1), match.group(2))

    def _taken_away(self, event: Any) -> list[str]:
        """The captured tables a DROP or RENAME statement takes away."""
        gone = []
        for schema, table in gone_tables(event.query):
            if table == EVERY_TABLE:
                if schema == self._database:
                    gone += list(self._key_columns)
            elif (name := self._captured_name(event, schema, table)) is not None:
                gone.append(name)
        return gone

    def _captured_name(self, event: Any, schema: str | None, table: str) -> str | None:
        if schema is None:
            default = event.schema
            schema = default.decode() if isinstance(default, bytes) else str(default or "")
        if schema == self._database and table in self._key_columns:
            return str(table)
        return None

    def _unparsed(self, stream: BinLogStreamReader, event: Any, start: int, end: int) -> None:
        """An event the library does not parse: opened (a compressed transaction), known to
        carry no rows, or the end of the stream with one line naming it — never skipped."""
        kind = event.event_type
        if kind == TRANSACTION_PAYLOAD_EVENT:
            assert self._payloads is not None
            self._payload_server = _server_id(event)
            try:
                for inner_event in self._payloads.events(event):
                    self.handle(stream, inner_event, start, end)
            except PayloadError as exc:
                raise FatalError(
                    f"compressed transaction at {stream.log_file}:{start} cannot be read: {exc}"
                ) from exc
            finally:
                self._payload_server = None
        elif kind == ANONYMOUS_GTID_EVENT:
            if not isinstance(self.position, FilePosition):
                raise FatalError(
                    f"a transaction without a GTID at {stream.log_file}:{start} while positions "
                    "are GTID sets: set gtid_mode=ON for every transaction, or read by "
                    'file:pos (source.binlog.positions = "file")'
                )
            if self.tx is None:
                self.tx = BinlogCoordinate(stream.log_file, start)
        elif kind in _ROWS_OF_ONE_TABLE and _table_id(event) not in stream.table_map:
            return  # rows of a table no pipeline captures (only captured tables are mapped)
        elif kind not in ROWLESS_EVENTS:
            name = EVENT_NAMES.get(kind, "unknown")
            fix = _UNREADABLE_FIX.get(kind, _UNKNOWN_FIX)
            raise FatalError(
                f"binlog event type {kind} ({name}) at {stream.log_file}:{start} cannot be read "
                f"by cdc-scorer, and it may change captured tables: {fix}"
            )

    def _fingerprint(self, event: Any, start: int) -> str:
        """The commit event as ``SHOW BINLOG EVENTS`` shows it — where it starts, the server
        that wrote it, its XID — kept by file:pos positions only (``FilePosition.commit``).
        Inside a compressed transaction: the payload event."""
        if not isinstance(self.position, FilePosition):
            return ""
        if self._payload_server is not None:
            return f"{start}/{self._payload_server}/"
        xid = event.xid if isinstance(event, XidEvent) else ""
        return f"{start}/{_server_id(event)}/{xid}"

    def _commit(
        self, stream: BinLogStreamReader, tx: TxId, end: BinlogCoordinate, commit: str
    ) -> BinlogPosition:
        """The position after ``tx`` commits; the library's own reconnect must resume there
        (its ``auto_position`` never advances by itself: docs/architecture.md, library traps)."""
        position = self.position.after(tx, end, commit)
        if position.auto_position is not None:
            stream.auto_position = position.auto_position
        return position


def _server_id(event: Any) -> int:
    """The id of the server that wrote an event (its header's)."""
    return int(event.packet.server_id)


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
    as_text = _json_text_of(event)
    if isinstance(event, UpdateRowsEvent):
        partial = isinstance(event, PartialUpdateRowsEvent)
        for row in event.rows:
            before, after = as_text(row["before_values"]), as_text(row["after_values"])
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
                    gap=PARTIAL_JSON if partial else None,
                )
            )
        return changes
    op = Op.INSERT if isinstance(event, WriteRowsEvent) else Op.DELETE
    for row in event.rows:
        values = as_text(row["values"])
        changes.append(
            RowChange(op, table, tuple(values[c] for c in key_columns), values, tx, committed_at)
        )
    return changes


def _json_text_of(event: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What turns a row image's MySQL JSON values (the decoder's dicts with bytes keys) into
    the text MySQL writes for them — a snapshot's SELECT gives that text, and a model reads
    text. A partial update's diff stays as it is (the row is dead-lettered)."""
    names = [c.name for c in getattr(event, "columns", ()) if c.type == FIELD_TYPE.JSON]
    if not names:
        return _unchanged

    def as_text(values: dict[str, Any]) -> dict[str, Any]:
        for name in names:
            value = values.get(name)
            if value is not None and not isinstance(value, JsonDiff):
                values[name] = mysql_json_text(value)
        return values

    return as_text


def _unchanged(values: dict[str, Any]) -> dict[str, Any]:
    return values


def _json_diffs(values: dict[str, Any]) -> frozenset[str]:
    """Columns of a partial update's after image that hold a JSON diff, not a value."""
    return frozenset(name for name, value in values.items() if isinstance(value, JsonDiff))
