"""Debezium's encodings of column values, read back into exactly the values the log sources
give (``sources/binlog`` for MySQL, ``sources/pgoutput`` for PostgreSQL), so that a row scored
through Debezium sends the model the same request as the row scored from the database's log.

A column's reader is chosen by its Connect schema — the field's type, its logical name
(``org.apache.kafka.connect.data.Decimal``, ``io.debezium.time.*``, ``io.debezium.data.*``) and
parameters — together with the column's type in the database (the store reads it at start):
the same Debezium encoding means another value on each engine (``MicroTime`` is a MySQL TIME,
a ``timedelta``, and a PostgreSQL ``time``). Without schemas (``schemas.enable=false``) the
database's type alone decides, as Debezium's defaults encode it; a DECIMAL then has lost its
scale, and such a column is refused with the fix (``decimal.handling.mode=string``).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cdc_scorer.mysql.json_text import mysql_json_text

MYSQL = "mysql"
POSTGRESQL = "postgresql"

Reader = Callable[[Any], Any]

_EPOCH = datetime.datetime(1970, 1, 1)
_EPOCH_DATE = datetime.date(1970, 1, 1)
_UTC = datetime.UTC
_FLOAT32 = struct.Struct("<f")
_BINARY_TYPES = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bytea")


class UnreadableColumn(Exception):
    """A column's encoding the scorer cannot turn into the log path's value; the message
    names the column, the encoding and the connector setting that fixes it."""


@dataclass(frozen=True)
class FieldSchema:
    """A Connect field schema as the JSON converter writes it (or as the database's type
    implies it, without schemas)."""

    type: str  # int8 … int64, float, double, boolean, string, bytes, struct, array, map
    name: str | None = None  # the logical type
    parameters: Mapping[str, str] | None = None

    @classmethod
    def of(cls, field: Mapping[str, Any]) -> FieldSchema:
        return cls(str(field.get("type")), field.get("name"), field.get("parameters"))


def _digits(unscaled: int, scale: int) -> Decimal:
    """The decimal of an unscaled integer with its scale, written as the server writes it
    (``0.000``, not ``0E-3``: the request body is the value's text)."""
    if scale <= 0:
        return Decimal(unscaled * 10 ** (-scale))
    sign = "-" if unscaled < 0 else ""
    text = str(abs(unscaled)).rjust(scale + 1, "0")
    return Decimal(f"{sign}{text[:-scale]}.{text[-scale:]}")


def _unscaled(value: str) -> int:
    return int.from_bytes(base64.b64decode(value), "big", signed=True)


def _bits_text(length: int) -> Reader:
    def read(value: str) -> str:
        number = int.from_bytes(base64.b64decode(value), "little")
        return format(number, f"0{length}b")

    return read


def _mysql_bytes(padded: bool) -> Reader:
    """MySQL binary values as the binlog gives them: a BINARY(n) without its trailing zero
    bytes (the binlog strips the padding Debezium puts back), and an empty value as ``""``
    (the binlog decoder's text of zero bytes) — the same CSV field either way."""

    def read(value: str) -> bytes | str:
        data = base64.b64decode(value)
        if padded:
            data = data.rstrip(b"\x00")
        return data if data else ""

    return read


def _json_number(text: str) -> int | float:
    # Debezium writes a double with an integral value in plain digits (1e20 as
    # 100000000000000000000); MySQL's JSON integers are 64-bit: past them it was a double.
    number = int(text)
    return number if -(2**63) <= number < 2**64 else float(number)


def _mysql_json(value: str) -> str:
    return mysql_json_text(json.loads(value, parse_int=_json_number))


def _set_members(value: str) -> set[str] | None:
    return set(value.split(",")) if value else None  # the binlog's empty SET is NULL


def _float32(value: float) -> float:
    # The binlog gives the 32-bit float widened; the JSON converter writes its shortest text.
    result: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    return result


def _naive_utc(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value).astimezone(_UTC).replace(tzinfo=None)


def _aware_utc(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value).astimezone(_UTC)


def _time_of_day(micros: int) -> datetime.time:
    moment = _EPOCH + datetime.timedelta(microseconds=micros)
    return moment.time()


def _unsigned_long(value: int | str) -> int:
    if isinstance(value, str):  # bigint.unsigned.handling.mode=precise: a DECIMAL of scale 0
        return _unscaled(value)
    return value + 2**64 if value < 0 else value  # mode long: the 64 bits, read as signed


def _fsp(db_type: str) -> int:
    match = re.search(r"\((\d+)\)", db_type)
    return int(match.group(1)) if match else 0


def reader_for(column: str, schema: FieldSchema, db_type: str, engine: str) -> Reader:
    """How to read ``column``'s value (never None: callers keep NULLs as they are)."""
    db = db_type.lower()
    name = schema.name or ""
    params = schema.parameters or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        scale = int(params.get("scale", "0"))
        if db.startswith("bigint") and "unsigned" in db:
            return _unsigned_long
        return lambda v: _digits(_unscaled(v), scale)
    if name == "io.debezium.data.VariableScaleDecimal":
        return lambda v: _digits(_unscaled(v["value"]), int(v["scale"]))
    if name == "io.debezium.time.Date":
        return lambda v: _EPOCH_DATE + datetime.timedelta(days=v)
    if name in ("io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"):
        return lambda v: _EPOCH + datetime.timedelta(milliseconds=v)
    if name == "io.debezium.time.MicroTimestamp":
        return lambda v: _EPOCH + datetime.timedelta(microseconds=v)
    if name == "io.debezium.time.NanoTimestamp":
        return lambda v: _EPOCH + datetime.timedelta(microseconds=v // 1000)
    if name == "io.debezium.time.ZonedTimestamp":
        return _aware_utc if engine == POSTGRESQL else _naive_utc
    if name in ("io.debezium.time.MicroTime", "io.debezium.time.Time", "io.debezium.time.NanoTime"):
        per_micro = {"io.debezium.time.Time": 1000, "io.debezium.time.MicroTime": 1}.get(name)
        if engine == POSTGRESQL:
            if per_micro is None:
                return lambda v: _time_of_day(v // 1000)
            return lambda v: _time_of_day(v * per_micro)
        if per_micro is None:
            return lambda v: datetime.timedelta(microseconds=v // 1000)
        return lambda v: datetime.timedelta(microseconds=v * per_micro)
    if name == "io.debezium.time.Year":
        return int
    if name == "io.debezium.data.Bits":
        return _bits_text(int(params.get("length", "1")))
    if name == "io.debezium.data.EnumSet":
        return _set_members if engine == MYSQL else str
    if name == "io.debezium.data.Json":
        # MySQL: the text MySQL writes (Debezium writes its own compact one); PostgreSQL:
        # pgoutput's text, which Debezium passes on.
        return _mysql_json if engine == MYSQL else str
    if name in ("io.debezium.data.Enum", "io.debezium.data.Uuid"):
        return str
    if name == "io.debezium.data.Xml":
        return str
    if name:
        raise UnreadableColumn(
            f"column {column}: Debezium's encoding {name} ({db_type}) is not read by the "
            "scorer (the model input would differ from the database's value)"
        )
    kind = schema.type
    if kind == "boolean":
        if db.startswith("bit"):
            return lambda v: "1" if v else "0"  # BIT(1), as the binlog gives it
        return bool
    if kind in ("int8", "int16", "int32"):
        return int
    if kind == "int64":
        if db.startswith("bigint") and "unsigned" in db:
            return _unsigned_long
        return int
    if kind == "float":
        return _float32 if engine == MYSQL else float
    if kind == "double":
        if db.startswith(("decimal", "numeric")):
            raise UnreadableColumn(
                f"column {column} ({db_type}) arrives as a double "
                "(decimal.handling.mode=double loses digits): set decimal.handling.mode to "
                "precise or string on the connector"
            )
        return float
    if kind == "bytes" or (kind == "string" and db.startswith(_BINARY_TYPES)):
        if engine == MYSQL:
            return _mysql_bytes(padded=db.startswith("binary"))
        return base64.b64decode
    if kind == "string":
        if db.startswith(("decimal", "numeric")):
            return Decimal  # decimal.handling.mode=string: the server's digits
        return str
    raise UnreadableColumn(
        f"column {column}: Debezium's {kind} ({db_type}) is not read by the scorer (arrays, "
        "maps and structs have no model-input form here)"
    )


def implied_schema(
    column: str, db_type: str, engine: str, *, decimal_strings: bool = False
) -> FieldSchema:
    """The field schema Debezium's default encodings give ``db_type`` (no schemas in the
    messages). A DECIMAL is read only when the connector writes it as text
    (``decimal_strings``: ``decimal.handling.mode=string``); in the default encoding its scale
    went with the schema, and it is refused with the fix."""
    db = db_type.lower()
    if db.startswith(("decimal", "numeric")):
        if not decimal_strings:
            raise UnreadableColumn(
                f"column {column} ({db_type}) arrives without a schema: in Debezium's default "
                "encoding (base64 bytes) its scale is unknown. Set decimal.handling.mode=string "
                'on the connector (and source.debezium.decimal_handling_mode = "string"), or turn '
                "value.converter.schemas.enable on"
            )
        return FieldSchema("string")
    if engine == MYSQL:
        return _mysql_implied(db)
    return _postgres_implied(db)


def _mysql_implied(db: str) -> FieldSchema:
    if db.startswith(("tinyint", "smallint", "mediumint", "int", "bigint", "year")):
        return FieldSchema("int64")
    if db.startswith("float"):
        return FieldSchema("float")
    if db.startswith(("double", "real")):
        return FieldSchema("double")
    if db == "date":
        return FieldSchema("int32", "io.debezium.time.Date")
    if db.startswith("datetime"):
        name = "io.debezium.time.Timestamp" if _fsp(db) <= 3 else "io.debezium.time.MicroTimestamp"
        return FieldSchema("int64", name)
    if db.startswith("timestamp"):
        return FieldSchema("string", "io.debezium.time.ZonedTimestamp")
    if db.startswith("time"):
        return FieldSchema("int64", "io.debezium.time.MicroTime")
    if db.startswith("bit"):
        bits = _fsp(db) or 1
        if bits == 1:
            return FieldSchema("boolean")
        return FieldSchema("bytes", "io.debezium.data.Bits", {"length": str(bits)})
    if db == "json":
        return FieldSchema("string", "io.debezium.data.Json")
    if db.startswith("set("):
        return FieldSchema("string", "io.debezium.data.EnumSet")
    if db.startswith(("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob")):
        return FieldSchema("bytes")
    return FieldSchema("string")  # text types, ENUM, JSON


def _postgres_implied(db: str) -> FieldSchema:
    if db in ("smallint", "integer", "bigint"):
        return FieldSchema("int64")
    if db == "real":
        return FieldSchema("float")
    if db == "double precision":
        return FieldSchema("double")
    if db == "boolean":
        return FieldSchema("boolean")
    if db == "date":
        return FieldSchema("int32", "io.debezium.time.Date")
    if db.startswith("timestamp") and "with time zone" in db:
        return FieldSchema("string", "io.debezium.time.ZonedTimestamp")
    if db.startswith("timestamp"):
        precise = 0 < _fsp(db) <= 3
        return FieldSchema(
            "int64", "io.debezium.time.Timestamp" if precise else "io.debezium.time.MicroTimestamp"
        )
    if db.startswith("time") and "with time zone" not in db:
        return FieldSchema("int64", "io.debezium.time.MicroTime")
    if db == "bytea":
        return FieldSchema("bytes")
    if db.startswith(("interval", "time with time zone")) or db.endswith("[]"):
        return FieldSchema("unsupported")
    return FieldSchema("string")  # text, varchar, char, uuid, json, jsonb, enums
