"""Debezium's change-event envelope (the JSON converter, with or without schemas) read into
the scorer's row changes.

A message's value holds ``before``, ``after``, ``source`` (the table, the commit time
``ts_ms``) and ``op``: ``c`` create, ``u`` update, ``d`` delete, ``r`` a snapshot read, ``t`` a
truncate; a delete is followed by a tombstone (the key with a null value), which carries
nothing more for the scorer; a primary-key change arrives as a delete of the old key and a
create of the new one. Values are read by ``values.reader_for``: each column as the log
sources give it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdc_scorer.core.records import Op
from cdc_scorer.sources.debezium.values import (
    FieldSchema,
    Reader,
    UnreadableColumn,
    implied_schema,
    reader_for,
)

_SCHEMA_HEAD = b'{"schema":'
_PAYLOAD_KEY = b',"payload":'
_SCHEMAS_KEPT = 64
_OPS = {"c": Op.INSERT, "u": Op.UPDATE, "d": Op.DELETE, "r": Op.SNAPSHOT}


class EnvelopeError(Exception):
    """A message of a captured table the scorer cannot read; the message says what and how
    to fix it (the caller names the topic, partition and offset)."""


@dataclass(frozen=True)
class CapturedTable:
    """What the decoder needs of a captured table: its columns' types in the database, its
    key, and the columns read downstream (None: all)."""

    name: str
    column_types: Mapping[str, str]
    key_columns: tuple[str, ...]
    read_columns: frozenset[str] | None = None

    def decoded(self) -> frozenset[str]:
        if self.read_columns is None:
            return frozenset(self.column_types)
        return self.read_columns | frozenset(self.key_columns)


@dataclass(frozen=True)
class Change:
    """One decoded change event: ``op`` None for a truncate. ``values`` is the newest image
    (the before image for a delete)."""

    table: str
    op: Op | None
    key: tuple[Any, ...]
    values: dict[str, Any]
    before: dict[str, Any] | None
    committed_at: datetime.datetime | None
    source: Mapping[str, Any]  # Debezium's ``source`` block (file/pos/gtid, lsn, snapshot…)


@dataclass(frozen=True)
class Tombstone:
    """The null value after a delete: compaction's marker, nothing to score."""


class EnvelopeDecoder:
    """Reads the messages of the captured tables of one database (``engine`` mysql or
    postgresql); ``database`` is the MySQL database or the PostgreSQL schema."""

    def __init__(
        self,
        engine: str,
        database: str,
        tables: Mapping[str, CapturedTable],
        *,
        decimal_strings: bool = False,
    ) -> None:
        self._engine = engine
        self._database = database
        self._tables = dict(tables)
        self._decimal_strings = decimal_strings
        # The schemas seen, by their bytes, and the readers of a table by its schema object
        # (kept beside them: an id is only unique while its object lives). A table's schema
        # changes with an ALTER: new bytes, a new object, new readers.
        self._schemas: dict[bytes, Any] = {}
        # How the messages were read (the tests count the paths): schemas parsed, and
        # messages parsed whole (without schemas, or not in the converter's layout).
        self.schemas_parsed = 0
        self.whole_parsed = 0
        self._readers: dict[tuple[str, int | None], tuple[Any, dict[str, Reader]]] = {}

    def decode(self, value: bytes | None) -> Change | Tombstone:
        if value is None:
            return Tombstone()
        schema, payload = self._parse(value)
        if payload is None:
            return Tombstone()
        if not isinstance(payload, dict) or "op" not in payload or "source" not in payload:
            raise EnvelopeError(
                "the message is not a Debezium change event (no op and source): the scorer "
                "reads the envelope itself, not a flattened record (drop the "
                "ExtractNewRecordState transform)"
            )
        source = payload["source"]
        table = self._table_of(source)
        op_code = payload["op"]
        committed = _committed_at(source)
        if op_code == "t":
            return Change(table.name, None, (), {}, None, committed, source)
        op = _OPS.get(op_code)
        if op is None:
            raise EnvelopeError(f"unknown operation {op_code!r} in a change event of {table.name}")
        readers = self._readers_for(table, schema)
        after = _image(payload.get("after"), readers)
        before = _image(payload.get("before"), readers)
        values = before if op is Op.DELETE else after
        if values is None:
            side = "before" if op is Op.DELETE else "after"
            raise EnvelopeError(f"a {op.value} event of {table.name} has no {side} image")
        try:
            key = tuple(values[c] for c in table.key_columns)
        except KeyError as exc:
            raise EnvelopeError(
                f"the event of {table.name} lacks key column {exc.args[0]}"
            ) from None
        return Change(table.name, op, key, values, before, committed, source)

    def _table_of(self, source: Mapping[str, Any]) -> CapturedTable:
        name = str(source.get("table", ""))
        where = str(source.get("db" if self._engine == "mysql" else "schema", ""))
        table = self._tables.get(name)
        if table is None or where != self._database:
            raise EnvelopeError(
                f"a change event of {where}.{name}, which no pipeline captures here "
                f"(database {self._database}): subscribe to the captured tables' topics only"
            )
        return table

    def _parse(self, value: bytes) -> tuple[Any, Any]:
        """The message's schema (None without one) and payload. The JSON converter writes
        ``{"schema":S,"payload":P}``, S the same kilobytes in every message of a table: S
        is parsed once and found again by its bytes (parsing and keying it per message was
        most of the Kafka path's CPU, docs/kafka-benchmarks.md)."""
        head = _SCHEMA_HEAD
        if value.startswith(head) and value.endswith(b"}"):
            at = value.find(_PAYLOAD_KEY, len(head))
            if at > 0:
                schema_bytes = value[len(head) : at]
                schema = self._schemas.get(schema_bytes)
                try:
                    if schema is None:
                        # A complete JSON value: a prefix of S would not parse, so S ends here.
                        schema = json.loads(schema_bytes)
                        self.schemas_parsed += 1
                        if len(self._schemas) >= _SCHEMAS_KEPT:
                            self._schemas.clear()  # ALTERs by the dozen: start again
                        self._schemas[schema_bytes] = schema
                    return schema, json.loads(value[at + len(_PAYLOAD_KEY) : -1])
                except ValueError:
                    pass  # not the converter's layout after all: read the whole message
        self.whole_parsed += 1
        try:
            message = json.loads(value)
        except ValueError as exc:
            raise EnvelopeError(
                f"the message is not JSON ({exc}): the scorer reads Debezium's JSON converter "
                "(value.converter=org.apache.kafka.connect.json.JsonConverter)"
            ) from None
        if not isinstance(message, dict):
            raise EnvelopeError("the message is not a Debezium change event (not an object)")
        schema = message.get("schema") if "payload" in message else None
        payload = message["payload"] if "payload" in message and "schema" in message else message
        return schema, payload

    def _readers_for(self, table: CapturedTable, schema: Any) -> dict[str, Reader]:
        # By the schema object itself: one per distinct schema bytes (``_parse``), and None
        # without schemas.
        cache_key = (table.name, id(schema) if schema is not None else None)
        cached = self._readers.get(cache_key)
        if cached is not None and cached[0] is schema:
            return cached[1]
        fields = _image_fields(schema) if schema is not None else None
        readers = self._make_readers(table, fields)
        if len(self._readers) >= _SCHEMAS_KEPT:
            self._readers.clear()
        self._readers[cache_key] = (schema, readers)
        return readers

    def _make_readers(
        self, table: CapturedTable, fields: list[dict[str, Any]] | None
    ) -> dict[str, Reader]:
        by_name = {str(f["field"]): FieldSchema.of(f) for f in fields or []}
        readers: dict[str, Reader] = {}
        for column in sorted(table.decoded()):
            db_type = table.column_types.get(column)
            if db_type is None:
                continue  # a column the table does not have (any more): the image decides
            try:
                if fields is None:
                    schema = implied_schema(
                        column, db_type, self._engine, decimal_strings=self._decimal_strings
                    )
                elif column in by_name:
                    schema = by_name[column]
                else:
                    continue
                readers[column] = reader_for(column, schema, db_type, self._engine)
            except UnreadableColumn as exc:
                raise EnvelopeError(f"table {table.name}: {exc}") from None
        return readers


def _image_fields(schema: Any) -> list[dict[str, Any]] | None:
    """The field schemas of the ``after`` (or ``before``) struct of a value schema."""
    if not isinstance(schema, dict):
        return None
    for part in schema.get("fields", []):
        if part.get("field") in ("after", "before") and part.get("type") == "struct":
            fields: list[dict[str, Any]] = part.get("fields", [])
            return fields
    return None


def _image(image: Mapping[str, Any] | None, readers: Mapping[str, Reader]) -> dict[str, Any] | None:
    if image is None:
        return None
    values: dict[str, Any] = {}
    for column, read in readers.items():
        if column not in image:
            continue
        raw = image[column]
        if raw is None:
            values[column] = None
            continue
        try:
            values[column] = read(raw)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise EnvelopeError(f"column {column}: cannot read {raw!r}: {exc}") from None
    return values


def _committed_at(source: Mapping[str, Any]) -> datetime.datetime | None:
    ts_ms = source.get("ts_ms")
    if not isinstance(ts_ms, int) or ts_ms <= 0:
        return None
    return datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC)
