"""Debezium's signals: an incremental snapshot of a table, asked for through the connector's
signal table (``signal.data.collection``): the connector re-reads the table in chunks beside
its stream (DBLog, watermarks in the signal table) and writes each row to the table's topic as
``op: r``, which the scorer scores like any change."""

from __future__ import annotations

import json
import uuid

EXECUTE_SNAPSHOT = "execute-snapshot"


def namespace(engine: str, database: str, schema: str) -> str:
    """What Debezium names a table within: its database (MySQL) or its schema (PostgreSQL)."""
    return schema if engine == "postgresql" else database


def data_collection(engine: str, database: str, schema: str, table: str) -> str:
    """Debezium's name of a table: ``db.table`` (MySQL), ``schema.table`` (PostgreSQL)."""
    return f"{namespace(engine, database, schema)}.{table}"


def incremental_snapshot(collection: str, where: str | None = None) -> tuple[str, str, str]:
    """A signal row (id, type, data) asking for an incremental snapshot of ``collection``,
    of the rows matching ``where`` only when given."""
    data: dict[str, object] = {"data-collections": [collection], "type": "incremental"}
    if where:
        data["additional-conditions"] = [{"data-collection": collection, "filter": where}]
    return f"cdc-scorer-{uuid.uuid4().hex[:16]}", EXECUTE_SNAPSHOT, json.dumps(data)
