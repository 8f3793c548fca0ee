"""Compressed transactions: MySQL's TRANSACTION_PAYLOAD event, opened into the events inside.

With ``binlog_transaction_compression=ON`` (MySQL 8.0.20+) a transaction is written as its GTID
event followed by one TRANSACTION_PAYLOAD event holding, zstd-compressed, the transaction's
own events (BEGIN, table maps, rows events, XID). python-mysql-replication 1.0.17 has no class
for it: the rows inside would pass unseen. The payload is a header of fields, each
``type, length, value`` as MySQL packed integers, ending with a 0 type; then the payload. The
inner events carry the usual 19-byte header and no checksum of their own (the outer event's
covers them).

The inner events are parsed by the library's own packet wrapper, with the stream's settings
(the wrapper's arguments are read from the stream: tied to the pinned 1.0.17).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

import zstandard
from pymysql.protocol import MysqlPacket
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import TableMapEvent

TRANSACTION_PAYLOAD_EVENT = 40
_HEADER_END = 0
_PAYLOAD_SIZE = 1
_COMPRESSION_TYPE = 2
_UNCOMPRESSED_SIZE = 3
ZSTD = 0
NO_COMPRESSION = 255
_EVENT_HEADER_BYTES = 19


class PayloadError(Exception):
    """A payload this reader cannot open (the message says what is wrong)."""


def _packed(buf: bytes, pos: int) -> tuple[int, int]:
    """A MySQL packed ("length-encoded") integer at ``pos``: (value, position after it)."""
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None:
        raise PayloadError(f"bad packed integer prefix 0x{first:02x} at byte {pos}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def payload_events(body: bytes) -> Iterator[bytes]:
    """The inner events (each header + body) of a TRANSACTION_PAYLOAD event's body, one at a
    time: a big transaction is decompressed as it is read, never whole in memory."""
    fields: dict[int, int] = {}
    pos = 0
    while True:
        if pos >= len(body):
            raise PayloadError("payload header has no end mark")
        kind, pos = _packed(body, pos)
        if kind == _HEADER_END:
            break
        length, pos = _packed(body, pos)
        if kind in (_PAYLOAD_SIZE, _COMPRESSION_TYPE, _UNCOMPRESSED_SIZE):
            fields[kind], _ = _packed(body, pos)
        pos += length  # fields this reader does not know are skipped by their length
    size = fields.get(_PAYLOAD_SIZE, len(body) - pos)
    payload = body[pos : pos + size]
    compression = fields.get(_COMPRESSION_TYPE, NO_COMPRESSION)
    stream: BinaryIO
    if compression == ZSTD:
        stream = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(payload), read_across_frames=True
        )
    elif compression == NO_COMPRESSION:
        stream = io.BytesIO(payload)
    else:
        raise PayloadError(f"compression type {compression} is not zstd (0) or none (255)")
    try:
        yield from _split(stream)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"zstd: {exc}") from None


def _split(stream: BinaryIO) -> Iterator[bytes]:
    offset = 0
    while header := _read_exactly(stream, _EVENT_HEADER_BYTES, offset):
        size = int.from_bytes(header[9:13], "little")
        if size < _EVENT_HEADER_BYTES:
            raise PayloadError(f"inner event at byte {offset} has a bad size {size}")
        body = _read_exactly(stream, size - _EVENT_HEADER_BYTES, offset)
        if len(body) != size - _EVENT_HEADER_BYTES:
            raise PayloadError(f"inner event at byte {offset} is cut short")
        yield header + body
        offset += size


def _read_exactly(stream: BinaryIO, size: int, offset: int) -> bytes:
    """``size`` bytes (b"" at the clean end of the payload)."""
    chunks = []
    wanted = size
    while wanted:
        chunk = stream.read(wanted)
        if not chunk:
            break
        chunks.append(chunk)
        wanted -= len(chunk)
    data = b"".join(chunks)
    if data and len(data) != size and size == _EVENT_HEADER_BYTES:
        raise PayloadError(f"{len(data)} stray bytes after the inner event at byte {offset}")
    return data


class PayloadReader:
    """Opens TRANSACTION_PAYLOAD events of one ``BinLogStreamReader`` into its event objects."""

    _PRIVATE = "_BinLogStreamReader__"

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def events(self, event: Any) -> Iterator[Any]:
        """The inner events the stream would have returned (the allowed ones, in order); the
        table maps among them are recorded in the stream's table map as it does itself."""
        stream = self._stream
        raw = event.packet.packet.get_all_data()
        body = raw[1 + _EVENT_HEADER_BYTES : 1 + _EVENT_HEADER_BYTES + event.event_size]
        private = self._PRIVATE
        allowed = getattr(stream, private + "allowed_events")
        for inner in payload_events(body):
            wrapper = BinLogPacketWrapper(
                MysqlPacket(b"\x00" + inner, "utf8"),
                stream.table_map,
                stream._ctl_connection,
                stream.mysql_version,
                False,  # inner events carry no checksum
                getattr(stream, private + "allowed_events_in_packet"),
                getattr(stream, private + "only_tables"),
                getattr(stream, private + "ignored_tables"),
                getattr(stream, private + "only_schemas"),
                getattr(stream, private + "ignored_schemas"),
                getattr(stream, private + "freeze_schema"),
                getattr(stream, private + "ignore_decode_errors"),
                False,
                getattr(stream, private + "optional_meta_data"),
                getattr(stream, private + "enable_logging"),
                getattr(stream, private + "use_column_name_cache"),
                getattr(stream, private + "post_header_lengths"),
            )
            inner_event = wrapper.event
            if inner_event is None:
                continue
            if isinstance(inner_event, TableMapEvent):
                stream.table_map[inner_event.table_id] = inner_event.get_table()
            if inner_event.__class__ in allowed:
                yield inner_event
