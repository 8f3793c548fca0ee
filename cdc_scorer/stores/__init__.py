"""Stores: the plug point of the scorer's own tables in the source database.

Everything that writes or reads them — predictions, dead letters, checkpoints, the signal
table, the leader lock, the heartbeat, the DDL of ``init`` — goes through a :class:`Store` and
the writers it makes; the SQL dialect of each database lives in its own package
(``stores/mysql/``: MySQL, Aurora MySQL, MariaDB), registered by engine name in
``stores/registry.py``. The core never names one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.own_tables import PREDICTION_METADATA
from cdc_scorer.core.pipeline import BatchSink
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.services import PredictionColumn
from cdc_scorer.stores.offsets import OffsetLedger, OffsetsSql

# A source's codec: (server identity, encoded position) → position.
PositionDecoder = Callable[[str, str], Position]
OnRetry = Callable[[str, RetriableError], None]


T = TypeVar("T")


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as the store holds it."""

    checkpoint: Checkpoint
    server_identity: str
    updated_at: datetime | None
    stopped_reason: str | None = None  # why the pipeline stopped, until it runs again


@dataclass(frozen=True)
class PipelineCounts:
    """What `status` shows of a pipeline's tables."""

    predictions: int
    dead_letters: int
    dead_letters_24h: int
    leader_connection: int | None  # the session holding its leader lock (None: nobody)


class PipelineSink(BatchSink, Protocol):
    """One pipeline's writer (the runner's ``BatchSink``): predictions, dead letters and the
    checkpoint that covers them in one durable step, through a connection that holds the
    pipeline's leader lock (fencing)."""

    lock: str

    def try_lead(self, wait_s: float) -> bool:
        """Take the leader lock, waiting up to ``wait_s`` (blocking)."""

    def expect(self, checkpoint: Checkpoint) -> None:
        """The checkpoint stored now: a reconnect must find what this sink wrote last."""


class ChunkStore(Protocol):
    """What a pipeline's snapshots and re-scores read and write (blocking; one connection)."""

    def select(
        self, where: str | None, after: tuple[Any, ...] | None, rows: int
    ) -> list[dict[str, Any]]:
        """Up to ``rows`` rows in key order after the key ``after``, matching ``where``;
        no snapshot is held afterwards."""

    def orphans(
        self, after: tuple[Any, ...] | None, rows: int
    ) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None, int]:
        """A re-score's sweep: up to ``rows`` predictions in the order of their stored key
        after ``after`` (an opaque cursor); the source keys of those whose source row does not
        exist now, the cursor of the last one read (None: none read), and how many were read.
        No snapshot is held afterwards."""

    def count(self, where: str | None) -> int:
        """Rows matching ``where`` (``FatalError`` for a condition the server refuses)."""

    def column_types(self) -> dict[str, str]:
        """The table's columns and their types now."""

    def signal(self, signal_id: str, pipeline: str, kind: str, data: Any) -> None:
        """Insert a row into the signal table (a watermark, a request): the stream reads it."""

    def forget(self, signal_ids: list[str]) -> None:
        """Delete signal rows the stream has read."""

    def reset(self) -> None:
        """Drop the connection (after a retriable error)."""

    def close(self) -> None: ...


class Heartbeat(Protocol):
    async def run(self) -> None:
        """Write the heartbeat row every interval until cancelled."""


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


def chunk_query(table: str, key: Sequence[str], where: str | None, after: bool, rows: int) -> str:
    """A snapshot chunk: up to ``rows`` rows of ``table`` in key order, after the key given as
    parameters when ``after``, matching ``where`` (identifiers quoted by the dialect)."""
    if where and after:
        where = where.replace("%", "%%")  # the statement has parameters: % is theirs
    columns = ", ".join(key)
    following = f"({columns}) > ({', '.join(['%s'] * len(key))})" if after else None
    conditions = [c for c in (following, where) if c]
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


class Store(Protocol):
    """The scorer's tables in one database. Blocking methods: run them in a thread."""

    def inspect_tables(self, pipelines: Sequence[PipelineSpec]) -> dict[str, TableInfo]:
        """Each pipeline's source table, its columns and key; every problem at once."""

    def init(self, pipelines: Sequence[PipelineSpec]) -> list[str]:
        """Make (or upgrade) the scorer's tables and views, idempotently: the statements."""

    def check_schema(self, pipelines: Sequence[PipelineSpec]) -> None:
        """``FatalError`` unless ``init`` has made everything the pipelines need."""

    def check_connection(self) -> list[tuple[str, bool, str]]:
        """`check`'s first lines: (name, ok, detail) of the connection and its TLS."""

    def check_writes(self, pipelines: Sequence[PipelineSpec]) -> list[tuple[str, str | None]]:
        """Each own table with the problem a write that changes nothing meets (`check`)."""

    def check_readable(self, pipeline: PipelineSpec) -> TableInfo:
        """The pipeline's table, selected from (`check`)."""

    def prediction_storage(self, pipeline: PipelineSpec) -> list[tuple[str, str]]:
        """(column, how the server stores it) of the pipeline's vector columns (`check`)."""

    def nearest_query(self, pipeline: PipelineSpec, column: str, limit: int = 5) -> str:
        """SQL of the ``limit`` rows of the pipeline's view whose vector in ``column`` is
        nearest a query vector, most similar first: its keys, its model inputs and
        ``similarity``; its ``%s`` placeholders all take the query vector's JSON array text."""

    def sample_row(self, pipeline: PipelineSpec) -> dict[str, Any]:
        """One real row of the pipeline's table, or {} (`check` sends it to the model)."""

    def load_checkpoints(
        self, names: Sequence[str], decode: PositionDecoder
    ) -> dict[str, StoredCheckpoint]: ...

    def save_checkpoint(self, name: str, checkpoint: Checkpoint, identity: str) -> None: ...

    def record_stop(self, name: str, reason: str | None) -> None: ...

    def older_predictions(self, pipeline: PipelineSpec) -> bool:
        """Whether a stored prediction carries another model version than the pipeline's."""

    def counts(self, pipeline: PipelineSpec) -> PipelineCounts: ...

    def database_now(self) -> datetime | None: ...

    def lock(self, pipeline: PipelineSpec) -> str:
        """The name of the pipeline's leader lock."""

    def leader(self, pipeline: PipelineSpec) -> int | None:
        """The session holding the pipeline's leader lock (None: no process runs it)."""

    def sink(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        identity: str,
        decode: PositionDecoder,
        on_retry: OnRetry | None = None,
        offsets: OffsetLedger | None = None,
    ) -> PipelineSink:
        """The pipeline's writer; with ``offsets`` (the Kafka source) it takes no leader lock
        and each batch moves its partitions' offsets by compare-and-set instead of the
        checkpoint row."""

    def offsets_sql(self) -> OffsetsSql:
        """The Kafka offsets table of this dialect (``stores/offsets.py``)."""

    def init_offsets(self) -> None:
        """Make the Kafka offsets table (``init`` with ``[kafka]``), idempotently."""

    def in_transaction(self, doing: str, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` in a transaction of a connection of its own, committed (blocking;
        the Kafka offsets' loads and re-score claims, ``stores/offsets.py``)."""

    def quoted(self, identifier: str) -> str:
        """A column's (or any identifier's) name as this database's SQL quotes it."""

    def qualified(self, table: str) -> str:
        """``table`` as this database's SQL names it (quoted by the dialect, in the schema
        ``[source]`` names)."""

    def chunks(self, pipeline: PipelineSpec, table: TableInfo) -> ChunkStore: ...

    def heartbeat(self, instance: str) -> Heartbeat: ...

    def close(self) -> None: ...
