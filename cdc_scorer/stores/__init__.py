"""Stores: the plug point of the scorer's own tables in the source database.

The contract is the core's (``core/store.py``, re-exported here); the SQL dialect of each
database lives in its own package (``stores/mysql/``: MySQL, Aurora MySQL, MariaDB;
``stores/postgresql/``), registered by engine name in ``stores/registry.py``; what every
dialect shares is here (the chunk and sweep queries, the prediction columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cdc_scorer.core.models import PredictionColumn
from cdc_scorer.core.own_tables import PREDICTION_METADATA
from cdc_scorer.core.records import ScoredBatch, TableInfo
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.core.store import (
    AdminStore,
    ChunkStore,
    DaemonStore,
    Heartbeat,
    OnRetry,
    PipelineCounts,
    PipelineSink,
    PositionDecoder,
    PositionStep,
    Store,
    StoredCheckpoint,
)
from cdc_scorer.stores.keys import key_json

__all__ = [
    "AdminStore",
    "ChunkStore",
    "DaemonStore",
    "Heartbeat",
    "OnRetry",
    "PipelineCounts",
    "PipelineSink",
    "PositionDecoder",
    "PositionStep",
    "Store",
    "StoredCheckpoint",
    "chunk_query",
    "orphan_queries",
    "prediction_columns",
    "table_info",
    "vector_storage",
]


def table_info(
    index: int,
    pipeline: PipelineSpec,
    column_types: dict[str, str],
    primary_key: tuple[str, ...],
    problems: list[str],
) -> TableInfo | None:
    """A pipeline's source table as a dialect found it (its columns and types in order, its
    primary key), or None with what is wrong added to ``problems`` (every dialect says it
    alike: the key named, the fix given)."""
    key = pipeline.key_columns or primary_key
    if not key:
        problems.append(
            f"pipelines.{index}.key_columns: table {pipeline.table} has no primary key — set "
            'key_columns to the columns that identify a row (e.g. key_columns = ["phone"])'
        )
        return None
    wrong = False
    for what, columns in {"key_columns": key, "input columns": pipeline.input_columns}.items():
        missing = [c for c in columns if c not in column_types]
        if missing:
            wrong = True
            problems.append(
                f"pipelines.{index}: {what} {missing} are not columns of {pipeline.table} — "
                f"fix the names (columns: {', '.join(column_types)})"
            )
    return None if wrong else TableInfo(pipeline.table, column_types, tuple(key))


def chunk_query(
    table: str,
    key: Sequence[str],
    where: str | None,
    after: bool,
    rows: int,
    through: bool = False,
) -> str:
    """A snapshot chunk: up to ``rows`` rows of ``table`` in key order, after the key given as
    parameters when ``after``, up to and with the key given next when ``through``, matching
    ``where`` (identifiers quoted by the dialect)."""
    if where and (after or through):
        where = where.replace("%", "%%")  # the statement has parameters: % is theirs
    columns = ", ".join(key)
    marks = ", ".join(["%s"] * len(key))
    following = f"({columns}) > ({marks})" if after else None
    before = f"({columns}) <= ({marks})" if through else None
    conditions = [c for c in (following, before, where) if c]
    condition = " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""
    return f"SELECT * FROM {table}{condition} ORDER BY {columns} LIMIT {int(rows)}"


def orphan_queries(predictions: str, table: str, key: Sequence[str], rows: int) -> tuple[str, str]:
    """A sweep's two reads (identifiers quoted by the dialect): a page of up to ``rows``
    predictions in ``key_hash`` order after the ``key_hash`` given as a parameter (an empty
    one: from the start), and the source keys of that page's predictions (``key_hash`` from
    the first parameter up to the second) whose source row does not exist. A NULL key part
    never counts as gone: what cannot be matched is kept, never removed by mistake."""
    page = (
        f"SELECT key_hash FROM {predictions} WHERE key_hash > %s "
        f"ORDER BY key_hash LIMIT {int(rows)}"
    )
    same = " AND ".join(f"s.{k} = p.{k}" for k in key)
    known = " AND ".join(f"p.{k} IS NOT NULL" for k in key)
    gone = (
        f"SELECT {', '.join(f'p.{k}' for k in key)} FROM {predictions} p "
        f"WHERE p.key_hash > %s AND p.key_hash <= %s AND {known} "
        f"AND NOT EXISTS (SELECT 1 FROM {table} s WHERE {same})"
    )
    return page, gone


def vector_storage(
    pipeline: PipelineSpec,
    present: dict[str, str],
    made_as: Callable[[PredictionColumn], str],
    native: str,
    fallback: str,
) -> list[tuple[str, str]]:
    """(column, how it is stored) of the pipeline's vector columns for `check`: as the
    predictions table has them (``present``: its column types), else as ``init`` would make
    them (``made_as``); ``native`` names the server's vector type, ``fallback`` says how to
    get one."""
    out = []
    for column in pipeline.model.prediction_columns():
        if column.kind != "vector":
            continue
        kind = present.get(column.name) or made_as(column)
        if kind.lower().startswith("vector"):
            out.append((column.name, f"{kind} ({native})"))
        else:
            out.append((column.name, f"{kind}, an array of {column.length} numbers ({fallback})"))
    return out


def prediction_columns(
    pipeline: PipelineSpec, key_columns: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The columns a sink writes into a predictions table (``scored_at`` aside), and those an
    upsert updates (all but the key)."""
    columns = [
        "key_hash",
        *key_columns,
        *(c.name for c in pipeline.model.prediction_columns()),
        *PREDICTION_METADATA,
    ]
    return columns, [c for c in columns if c != "key_hash" and c not in key_columns]


def dead_letter_rows(pipeline: str, batch: ScoredBatch) -> list[tuple[str | None, ...]]:
    """The batch's dead letters as the dead-letter table's values (pipeline, source key,
    source position, reason, error, payload), for either dialect's statement."""
    return [
        (pipeline, key_json(d.key), d.source_position, d.reason[:64], d.error, d.payload)
        for d in batch.dead_letters
    ]
