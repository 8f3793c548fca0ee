"""A faster decoder of rows events: one decoding plan per table map, compiled to Python.

python-mysql-replication decodes every column of every row through one generic function
(``__read_values_name``: a chain of type tests, a method call and a ``struct.unpack`` per
value), which holds the reader to ~7k update rows/s of churn rows (docs/architecture.md). Here,
once per table map, the column types and metadata become the source of one straight-line
function per row image: runs of fixed-width columns are read with one precompiled ``struct``
format, strings are sliced and decoded with their charset's codec, columns no pipeline reads
are skipped without being decoded, and rows without NULLs take a path with no NULL tests.

The values are exactly those of the stock decoder (random rows of every column type, compared
value by value: ``tests/integration/test_decoder_equivalence.py``). A table with a column type
this module does not know (JSON, GEOMETRY, the pre-5.6 temporal formats) is decoded by the
stock decoder, with one log line. The library still does everything else: connection, protocol,
GTIDs, table maps.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pymysql.charset import charset_by_name
from pymysqlreplication.constants import BINLOG, FIELD_TYPE

log = structlog.get_logger("cdc_scorer.decoder")

# One row image: (values of the wanted columns by name, position after the image).
ImageDecoder = Callable[[bytes, int], tuple[dict[str, Any], int]]

_FIXED = {  # type → (struct code signed, struct code unsigned)
    FIELD_TYPE.TINY: ("b", "B"),
    FIELD_TYPE.SHORT: ("h", "H"),
    FIELD_TYPE.LONG: ("i", "I"),
    FIELD_TYPE.LONGLONG: ("q", "Q"),
    FIELD_TYPE.FLOAT: ("f", "f"),
    FIELD_TYPE.DOUBLE: ("d", "d"),
}
_STRINGS = (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING)
_HELPED = (
    FIELD_TYPE.INT24,
    FIELD_TYPE.NEWDECIMAL,
    FIELD_TYPE.DATE,
    FIELD_TYPE.DATETIME2,
    FIELD_TYPE.TIMESTAMP2,
    FIELD_TYPE.TIME2,
    FIELD_TYPE.YEAR,
    FIELD_TYPE.ENUM,
    FIELD_TYPE.SET,
    FIELD_TYPE.BIT,
)
_SUPPORTED = frozenset({*_FIXED, *_STRINGS, FIELD_TYPE.BLOB, *_HELPED})
_UPDATE_TYPES = (BINLOG.UPDATE_ROWS_EVENT_V1, BINLOG.UPDATE_ROWS_EVENT_V2)
_ROWS_TYPES = (
    *_UPDATE_TYPES,
    BINLOG.WRITE_ROWS_EVENT_V1,
    BINLOG.WRITE_ROWS_EVENT_V2,
    BINLOG.DELETE_ROWS_EVENT_V1,
    BINLOG.DELETE_ROWS_EVENT_V2,
)


class Unsupported(Exception):
    """A table this decoder leaves to the stock one (the reason is the message)."""


@dataclass(frozen=True)
class TablePlan:
    """How to decode the row images of one table map."""

    table: str
    columns: int
    image: ImageDecoder  # its generated code: ``image.sources`` (per NULL pattern)

    def full(self, present: bytes) -> bool:
        """Whether a columns-present bitmap names every column (a FULL image). Only the bits
        of real columns count: MySQL sets the unused bits of the last byte, MariaDB does not
        (4 columns: ``0xff`` against ``0x0f``)."""
        mask = (1 << self.columns) - 1
        return int.from_bytes(present, "little") & mask == mask


class FastRowsDecoder:
    """Rows event → list of row images (dicts), with a plan per table map, cached."""

    def __init__(self, wanted: Mapping[str, frozenset[str] | None]) -> None:
        # Per table, the columns the pipelines read (None: all of them).
        self._wanted = wanted
        self._plans: dict[int, tuple[Any, TablePlan | None]] = {}
        self._told: set[str] = set()
        # Rows events decoded here, and those left to the stock decoder by reason: tests and
        # benchmarks show which path did the work.
        self.fast_events = 0
        self.stock_events: Counter[str] = Counter()

    def plan(self, table_obj: Any) -> TablePlan | None:
        """The table map's plan, or None when the stock decoder must do it."""
        cached = self._plans.get(id(table_obj))
        if cached is not None and cached[0] is table_obj:
            return cached[1]
        try:
            plan: TablePlan | None = compile_plan(
                table_obj.table, table_obj.columns, self._wanted.get(table_obj.table)
            )
        except Unsupported as exc:
            plan = None
            if table_obj.table not in self._told:
                self._told.add(table_obj.table)
                log.info("stock decoder for table", table=table_obj.table, reason=str(exc))
        # Keyed by identity, holding the object so the id is not reused while cached.
        self._plans[id(table_obj)] = (table_obj, plan)
        if len(self._plans) > 1024:
            self._plans.clear()
        return plan

    def images(self, event: Any) -> list[tuple[dict[str, Any] | None, dict[str, Any]]] | None:
        """(before, after) images of a rows event (before None unless an update), or None
        when this event is left to the stock decoder."""
        if event.event_type not in _ROWS_TYPES or not getattr(event, "complete", True):
            self.stock_events["event type"] += 1
            return None
        plan = self.plan(event.table_map[event.table_id])
        if plan is None:
            self.stock_events["table"] += 1
            return None
        update = event.event_type in _UPDATE_TYPES
        if not plan.full(event.columns_present_bitmap) or (
            update and not plan.full(event.columns_present_bitmap2)
        ):
            self.stock_events["partial image"] += 1
            return None  # a MINIMAL/NOBLOB image: only FULL images have a fast path
        self.fast_events += 1
        packet = event.packet
        data = packet.read(event.event_size - packet.read_bytes)
        end = len(data)
        image = plan.image
        pos = 0
        rows: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
        if update:
            while pos < end:
                before, pos = image(data, pos)
                after, pos = image(data, pos)
                rows.append((before, after))
        else:
            while pos < end:
                values, pos = image(data, pos)
                rows.append((None, values))
        return rows


def compile_plan(table: str, columns: list[Any], wanted: frozenset[str] | None) -> TablePlan:
    """Generate, compile and return the row-image decoder of one table map."""
    for index, column in enumerate(columns):
        if not column.name:
            raise Unsupported(f"column {index} has no name (binlog_row_metadata is not FULL)")
        if column.type not in _SUPPORTED:
            raise Unsupported(f"column {column.name} has type {column.type}")
    return TablePlan(table, len(columns), _VariantCache(table, columns, wanted))


_MAX_VARIANTS = 64  # NULL patterns compiled per table; rarer patterns take the generic path
_Variant = Callable[[bytes, int], tuple[dict[str, Any], int]]
_Generic = Callable[[bytes, int, bytes], tuple[dict[str, Any], int]]


class _VariantCache:
    """A row image decoder per NULL pattern, compiled on first sight.

    Rows of one table mostly share a few NULL patterns (none, or the same optional columns),
    and for a known pattern the code needs no NULL test and reads runs of fixed-width columns
    in one go. Past ``_MAX_VARIANTS`` patterns, rows take one generic variant that tests each
    column's NULL bit.
    """

    def __init__(self, table: str, columns: list[Any], wanted: frozenset[str] | None) -> None:
        self._table = table
        self._columns = columns
        self._wanted = wanted
        self._null_bytes = (len(columns) + 7) // 8
        self._variants: dict[bytes, _Variant] = {}
        self.sources: dict[bytes | None, str] = {}  # generated code per NULL pattern
        self._generic: _Generic
        self._generic, self.sources[None] = self._compile(None)

    def __call__(self, buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        end = pos + self._null_bytes
        nulls = buf[pos:end]
        variant = self._variants.get(nulls)
        if variant is None:
            variant = self._add(nulls)
        return variant(buf, end)

    def _add(self, nulls: bytes) -> _Variant:
        if len(self._variants) >= _MAX_VARIANTS:
            generic = self._generic
            return lambda buf, pos: generic(buf, pos, nulls)
        null_columns = frozenset(
            i for i in range(len(self._columns)) if nulls[i >> 3] & (1 << (i & 7))
        )
        variant: _Variant
        variant, self.sources[nulls] = self._compile(null_columns)
        self._variants[nulls] = variant
        return variant

    def _compile(self, null_columns: frozenset[int] | None) -> tuple[Any, str]:
        """The decoder of images with exactly these NULL columns (None: any, tested per column;
        that variant takes the NULL bitmap as a third argument)."""
        namespace: dict[str, Any] = {}
        head = "def image(buf, pos):" if null_columns is not None else "def image(buf, pos, nulls):"
        lines = [head]
        lines += _body(self._columns, self._wanted, namespace, null_columns, indent="    ")
        wanted = self._wanted
        kept = [(i, c) for i, c in enumerate(self._columns) if wanted is None or c.name in wanted]
        values = ", ".join(f"{c.name!r}: v{i}" for i, c in kept)
        lines.append(f"    return {{{values}}}, pos")
        source = "\n".join(lines)
        # Column names enter the code only as repr() literals; values never do.
        exec(compile(source, f"<rows plan {self._table}>", "exec"), namespace)
        return namespace["image"], source


def _body(
    columns: list[Any],
    wanted: frozenset[str] | None,
    namespace: dict[str, Any],
    null_columns: frozenset[int] | None,
    *,
    indent: str,
) -> list[str]:
    """Statements decoding one image: with ``null_columns`` known, straight-line code; with
    None, a NULL-bit test per column (the bitmap is in ``nulls``)."""
    nullable = null_columns is None
    lines: list[str] = []
    run: list[tuple[int, str, bool]] = []  # a run of fixed-width columns: (index, code, kept)

    def end_run() -> None:
        if not run:
            return
        fmt = "<" + "".join(code if kept else f"{struct.calcsize(code)}x" for _, code, kept in run)
        size = struct.calcsize(fmt)
        targets = [f"v{i}" for i, _, kept in run if kept]
        if targets:
            name = f"S{len(namespace)}"
            namespace[name] = struct.Struct(fmt).unpack_from
            lines.append(f"{indent}{', '.join(targets)}, = {name}(buf, pos)")
        lines.append(f"{indent}pos += {size}")
        run.clear()

    for index, column in enumerate(columns):
        kept = wanted is None or column.name in wanted
        if null_columns is not None and index in null_columns:
            if kept:
                lines.append(f"{indent}v{index} = None")
            continue  # a NULL takes no bytes
        fixed = _FIXED.get(column.type)
        if fixed is not None and not nullable:
            run.append((index, fixed[1] if column.unsigned else fixed[0], kept))
            continue
        width = _helper_width(column) if column.type in _HELPED else None
        if width is not None and not kept and not nullable:
            run.append((index, f"{width}x", False))  # skipped undecoded, in the run
            continue
        end_run()
        target = f"v{index}" if kept else "_"
        step: list[str] = []
        if fixed is not None:
            code = fixed[1] if column.unsigned else fixed[0]
            name = f"S{len(namespace)}"
            namespace[name] = struct.Struct("<" + code).unpack_from
            if kept:
                step.append(f"{target}, = {name}(buf, pos)")
            step.append(f"pos += {struct.calcsize(code)}")
        elif column.type in _STRINGS or column.type == FIELD_TYPE.BLOB:
            width = (
                column.length_size
                if column.type == FIELD_TYPE.BLOB
                else (2 if column.max_length > 255 else 1)
            )
            step.append(f"n = {_little_endian('buf', 'pos', width)}")
            step.append(f"pos += {width}")
            if kept:
                encoding = _encoding(column)
                if encoding is None:
                    # The stock decoder's bytes.decode("binary") gives '' for empty values
                    # (an empty input never looks the codec up) and bytes otherwise: same here.
                    step.append(f"{target} = buf[pos:pos + n] if n else ''")
                else:
                    step.append(f"{target} = buf[pos:pos + n].decode({encoding!r})")
            step.append("pos += n")
        elif not kept and width is not None:
            step.append(f"pos += {width}")
        else:
            name = f"H{len(namespace)}"
            namespace[name] = _helper(column)
            step.append(f"{target}, pos = {name}(buf, pos)")
        if nullable:
            byte, bit = divmod(index, 8)
            lines.append(f"{indent}if nulls[{byte}] & {1 << bit}:")
            if kept:
                lines.append(f"{indent}    v{index} = None")
            else:
                lines.append(f"{indent}    pass")
            lines.append(f"{indent}else:")
            lines += [f"{indent}    {s}" for s in step]
        else:
            lines += [f"{indent}{s}" for s in step]
    end_run()
    return lines


def _little_endian(buf: str, pos: str, width: int) -> str:
    if width == 1:
        return f"{buf}[{pos}]"
    if width == 2:
        return f"{buf}[{pos}] | {buf}[{pos} + 1] << 8"
    return f"int.from_bytes({buf}[{pos}:{pos} + {width}], 'little')"


def _encoding(column: Any) -> str | None:
    """The codec the stock decoder uses for this string column, or None for raw bytes."""
    name = column.character_set_name
    if name is None:
        return "utf-8"  # the stock decoder's default when the server sent no charset
    charset = charset_by_name(name)
    encoding = charset.encoding if charset else name
    try:
        codecs.lookup(encoding)  # not b"".decode(): empty input never looks the codec up
    except LookupError:
        return None  # e.g. binary: the stock decoder keeps the bytes
    return str(encoding)


# ------------------------------------------------------------------ the less common types
# Each helper reads one value at ``pos`` and returns (value, new position), exactly as the
# stock decoder's branch for that type does.

_EPOCH = datetime.datetime(1970, 1, 1)


def _helper_width(column: Any) -> int | None:
    """Bytes a value of this column takes (all the helper types are fixed-width)."""
    kind = column.type
    if kind in (FIELD_TYPE.INT24, FIELD_TYPE.DATE):
        return 3
    if kind == FIELD_TYPE.YEAR:
        return 1
    if kind == FIELD_TYPE.NEWDECIMAL:
        integral = column.precision - column.decimals
        return int(
            _COMPRESSED_BYTES[integral % 9]
            + 4 * (integral // 9 + column.decimals // 9)
            + _COMPRESSED_BYTES[column.decimals % 9]
        )
    fsp_bytes = (getattr(column, "fsp", 0) + 1) // 2
    if kind == FIELD_TYPE.DATETIME2:
        return 5 + fsp_bytes
    if kind == FIELD_TYPE.TIMESTAMP2:
        return 4 + fsp_bytes
    if kind == FIELD_TYPE.TIME2:
        return 3 + fsp_bytes
    if kind in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
        return int(column.size)
    if kind == FIELD_TYPE.BIT:
        return int(column.bytes)
    return None


_COMPRESSED_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _helper(column: Any) -> Callable[[bytes, int], tuple[Any, int]]:
    kind = column.type
    if kind == FIELD_TYPE.INT24:
        signed = not column.unsigned

        def int24(buf: bytes, pos: int) -> tuple[Any, int]:
            return int.from_bytes(buf[pos : pos + 3], "little", signed=signed), pos + 3

        return int24
    if kind == FIELD_TYPE.YEAR:

        def year(buf: bytes, pos: int) -> tuple[Any, int]:
            return buf[pos] + 1900, pos + 1

        return year
    if kind == FIELD_TYPE.DATE:
        return _date
    if kind == FIELD_TYPE.NEWDECIMAL:
        return _decimal_reader(column.precision, column.decimals)
    if kind in (FIELD_TYPE.DATETIME2, FIELD_TYPE.TIMESTAMP2, FIELD_TYPE.TIME2):
        return _temporal_reader(kind, column.fsp)
    if kind in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
        return _enum_set_reader(kind, column.size, column.enum_values, column.set_values)
    if kind == FIELD_TYPE.BIT:
        return _bit_reader(column.bits, column.bytes)
    raise Unsupported(f"column {column.name} has type {kind}")


def _date(buf: bytes, pos: int) -> tuple[Any, int]:
    value = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
    year, month, day = value >> 9 & 0x7FFF, value >> 5 & 0xF, value & 0x1F
    if year == 0 or month == 0 or day == 0:  # 0000-00-00 and partial zero dates
        return None, pos + 3
    return datetime.date(year, month, day), pos + 3


def _fsp(buf: bytes, pos: int, fsp: int) -> tuple[int, int]:
    """Microseconds of a fractional-seconds part of precision ``fsp``, and its size."""
    size = (fsp + 1) // 2
    if size == 0:
        return 0, 0
    value = int.from_bytes(buf[pos : pos + size], "big", signed=True)
    if fsp % 2:
        value = int(value / 10)
    return value * 10 ** (6 - fsp), size


def _temporal_reader(kind: int, fsp: int) -> Callable[[bytes, int], tuple[Any, int]]:
    if kind == FIELD_TYPE.DATETIME2:

        def datetime2(buf: bytes, pos: int) -> tuple[Any, int]:
            data = int.from_bytes(buf[pos : pos + 5], "big")
            micro, size = _fsp(buf, pos + 5, fsp)
            year_month = data >> 22 & 0x1FFFF
            try:
                value = datetime.datetime(
                    int(year_month / 13),
                    year_month % 13,
                    data >> 17 & 0x1F,
                    data >> 12 & 0x1F,
                    data >> 6 & 0x3F,
                    data & 0x3F,
                )
            except ValueError:
                return None, pos + 5 + size
            if micro > 0:
                value = value.replace(microsecond=micro)
            return value, pos + 5 + size

        return datetime2
    if kind == FIELD_TYPE.TIMESTAMP2:

        def timestamp2(buf: bytes, pos: int) -> tuple[Any, int]:
            seconds = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
            micro, size = _fsp(buf, pos + 4, fsp)
            value = _EPOCH + datetime.timedelta(seconds=seconds)
            if micro > 0:
                value = value.replace(microsecond=micro)
            return value, pos + 4 + size

        return timestamp2

    def time2(buf: bytes, pos: int) -> tuple[Any, int]:
        data = int.from_bytes(buf[pos : pos + 3], "big", signed=True)
        micro, size = _fsp(buf, pos + 3, fsp)
        sign = 1 if data >> 23 & 1 else -1
        if sign == -1:
            data = ~data + 1  # the stock decoder's two's complement step
        value = (
            datetime.timedelta(
                hours=data >> 12 & 0x3FF,
                minutes=data >> 6 & 0x3F,
                seconds=data & 0x3F,
                microseconds=micro,
            )
            * sign
        )
        return value, pos + 3 + size

    return time2


def _decimal_reader(precision: int, decimals: int) -> Callable[[bytes, int], tuple[Any, int]]:
    integral = precision - decimals
    uncomp_integral, comp_integral = divmod(integral, 9)
    uncomp_fractional, comp_fractional = divmod(decimals, 9)
    head = _COMPRESSED_BYTES[comp_integral]
    tail = _COMPRESSED_BYTES[comp_fractional]
    total = head + 4 * (uncomp_integral + uncomp_fractional) + tail

    def read_decimal(buf: bytes, pos: int) -> tuple[Any, int]:
        data = bytearray(buf[pos : pos + total])
        if data[0] & 0x80:
            text, mask = "", 0
        else:
            text, mask = "-", -1
        data[0] ^= 0x80
        at = 0
        if head:
            text += str(int.from_bytes(data[:head], "big", signed=True) ^ mask)
            at = head
        for _ in range(uncomp_integral):
            text += f"{int.from_bytes(data[at : at + 4], 'big', signed=True) ^ mask:09d}"
            at += 4
        text += "."
        for _ in range(uncomp_fractional):
            text += f"{int.from_bytes(data[at : at + 4], 'big', signed=True) ^ mask:09d}"
            at += 4
        if tail:
            value = int.from_bytes(data[at : at + tail], "big", signed=True) ^ mask
            text += f"{value:0{comp_fractional}d}"
        return decimal.Decimal(text), pos + total

    return read_decimal


def _enum_set_reader(
    kind: int, size: int, enum_values: Any, set_values: Any
) -> Callable[[bytes, int], tuple[Any, int]]:
    if kind == FIELD_TYPE.ENUM:

        def read_enum(buf: bytes, pos: int) -> tuple[Any, int]:
            index = int.from_bytes(buf[pos : pos + size], "little")
            return (enum_values[index] if enum_values else None), pos + size

        return read_enum

    def read_set(buf: bytes, pos: int) -> tuple[Any, int]:
        mask = int.from_bytes(buf[pos : pos + size], "little")
        if not set_values:
            return None, pos + size
        members = {v for i, v in enumerate(set_values) if mask & (1 << i)}
        return (members or None), pos + size

    return read_set


def _bit_reader(bits: int, size: int) -> Callable[[bytes, int], tuple[Any, int]]:
    def read_bit(buf: bytes, pos: int) -> tuple[Any, int]:
        text = ""
        for index in range(size):
            byte = buf[pos + index]
            end = (bits if size == 1 else bits % 8 or 8) if index == 0 else 8
            text += "".join("1" if byte & (1 << b) else "0" for b in range(end))[::-1]
        return text, pos + size

    return read_bit
