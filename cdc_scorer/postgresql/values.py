"""PostgreSQL values as the model sees them, the same from the stream and from a SELECT.

The stream (pgoutput) carries each value in its type's text output; a snapshot chunk is read
by psycopg2. Both go through the same rule, so a row scored from the log and from a chunk has
identical inputs (and keys): scalars become the Python value psycopg2 gives (int, Decimal,
float, bool, str, date/time/datetime, timedelta; uuid, enums and other types as their text),
bytea becomes ``bytes``, and JSON, jsonb, arrays and intervals stay the text the server writes
(``{"a": 1}``, ``{1,2,3}``, ``1 day 02:00:00``) — what a CSV of them would hold; a Python dict
or list would not go into a CSV field at all.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extensions

from cdc_scorer.postgresql.connection import Connection

BYTEA = 17
JSON = 114
JSONB = 3802
Caster = Callable[[str], Any]

# psycopg2's casters, by name, kept as the server's text instead: JSON and arrays parse into
# containers no CSV field holds; an interval as a timedelta would print as Python does.
_AS_TEXT_NAMES = ("JSON", "JSONB", "INTERVAL")


def _as_text_oids() -> frozenset[int]:
    oids = {JSON, JSONB}
    for oid, caster in psycopg2.extensions.string_types.items():
        name = getattr(caster, "name", "")
        if name.endswith("ARRAY") or name in _AS_TEXT_NAMES:
            oids.add(oid)
    return frozenset(oids)


AS_TEXT = _as_text_oids()


def _text(value: str) -> str:
    return value


_decoded: Callable[[bytes], str] = bytes.decode  # UTF-8, as the sessions' client_encoding


def _boolean(data: bytes) -> bool:
    return data == b"t"


def _numeric(data: bytes) -> Decimal:
    return Decimal(data.decode("ascii"))


# Types whose text output Python reads straight from the bytes, as psycopg2 would from the
# string (int('12'), float('0.1'), Decimal('12.50'), 't'/'f'): the stream's hot path, one call
# per value instead of a decode and a caster call.
_FROM_BYTES: dict[int, Callable[[bytes], Any]] = {
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    26: int,  # oid
    700: float,  # float4 ('Infinity', 'NaN' read as float does)
    701: float,  # float8
    1700: _numeric,
    16: _boolean,
    25: _decoded,  # text
    1043: _decoded,  # varchar
    1042: _decoded,  # char(n), padded as stored
    19: _decoded,  # name
}


def _bytea(cursor: Any) -> Caster:
    binary = psycopg2.extensions.string_types[BYTEA]

    def cast(value: str) -> bytes:
        return bytes(binary(value, cursor))

    return cast


class TextCasters:
    """Text output → Python value, by type OID (the stream's side of the rule)."""

    def __init__(self) -> None:
        # psycopg2's casters read a cursor for some types (time zones; None crashes them): any
        # cursor does, even one of a closed connection — nothing is sent through it.
        self._cursor: Any = None
        self._cache: dict[int, Caster] = {}

    def bind(self, conn: Connection) -> None:
        """Take a cursor of ``conn`` for the casters that read one."""
        self._cursor = conn.cursor()
        self._cache.clear()

    def bytes_caster(self, type_oid: int) -> Callable[[bytes], Any]:
        """The value of a column of type ``type_oid`` from its text output's bytes."""
        fast = _FROM_BYTES.get(type_oid)
        if fast is not None:
            return fast
        cast = self.caster(type_oid)

        def from_bytes(data: bytes) -> Any:
            return cast(data.decode("utf-8"))

        return from_bytes

    def caster(self, type_oid: int) -> Caster:
        cast = self._cache.get(type_oid)
        if cast is None:
            cast = self._cache[type_oid] = self._make(type_oid)
        return cast

    def _make(self, type_oid: int) -> Caster:
        if type_oid in AS_TEXT:
            return _text
        if type_oid == BYTEA:
            return _bytea(self._cursor)
        found = psycopg2.extensions.string_types.get(type_oid)
        if found is None:
            return _text  # uuid, enums, domains, geometric types…: their text
        cursor = self._cursor

        def cast(value: str) -> Any:
            return found(value, cursor)

        return cast


def read_as_the_stream(conn: Connection) -> None:
    """Make ``conn``'s SELECTs give what the stream gives (the chunks' side of the rule)."""
    as_text = psycopg2.extensions.new_type(tuple(AS_TEXT), "CDC_SCORER_TEXT", lambda v, _c: v)
    psycopg2.extensions.register_type(as_text, conn)
    binary = psycopg2.extensions.string_types[BYTEA]

    def bytea(value: str | bytes | None, cursor: Any) -> bytes | None:
        return None if value is None else bytes(binary(value, cursor))

    psycopg2.extensions.register_type(
        psycopg2.extensions.new_type((BYTEA,), "CDC_SCORER_BYTEA", bytea), conn
    )
