"""The contract of stores: the scorer's own tables in the database the predictions live in —
predictions, dead letters, checkpoints, signals, the leader lock, the heartbeat, the DDL of
``init`` — as the core and the commands use them. Each database's dialect implements it in a
package of its own under ``stores/``; the core never names one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.pipeline import BatchSink
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Checkpoint, TableInfo
from cdc_scorer.core.spec import PipelineSpec

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
    batch_jobs: tuple[str, ...] = ()  # its backfill jobs' rows (their data, as saved)


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
        self,
        where: str | None,
        after: tuple[Any, ...] | None,
        rows: int,
        through: tuple[Any, ...] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``rows`` rows in key order after the key ``after`` (and up to ``through``,
        with it), matching ``where``; no snapshot is held afterwards."""

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

    def batch_jobs(self, pipeline: str) -> list[str]:
        """The pipeline's rows of the batch job table (their data, as saved)."""

    def save_batch_job(
        self, pipeline: str, name: str, rescore_id: str, sequence: int, state: str, data: str
    ) -> None:
        """Insert or update a batch job's row, committed."""

    def reset(self) -> None:
        """Drop the connection (after a retriable error)."""

    def close(self) -> None:
        """Drop the connection; a later call opens one again (between jobs a pipeline holds
        none: a process's idle pipelines do not each keep a connection)."""


class Heartbeat(Protocol):
    async def run(self) -> None:
        """Write the heartbeat row every interval until cancelled."""


class PositionStep(Protocol):
    """How a batch's transaction records the position it covers, as its last step, when the
    pipeline's checkpoint row under a leader lock is not how its feed keeps positions."""

    def advance(self, cursor: Any, position: Position | None) -> None:
        """Record ``position`` through ``cursor`` (``FatalError`` if another writer moved
        it meanwhile: the transaction rolls back)."""

    def committed(self) -> None:
        """The transaction committed."""


class TableStore(Protocol):
    """What every user of the store needs: the source tables, names as the dialect quotes
    them, the pipelines' stored checkpoints. Blocking methods: run them in a thread."""

    def inspect_tables(self, pipelines: Sequence[PipelineSpec]) -> dict[str, TableInfo]:
        """Each pipeline's source table, its columns and key; every problem at once."""

    def load_checkpoints(
        self, names: Sequence[str], decode: PositionDecoder
    ) -> dict[str, StoredCheckpoint]: ...

    def quoted(self, identifier: str) -> str:
        """A column's (or any identifier's) name as this database's SQL quotes it."""

    def qualified(self, table: str) -> str:
        """``table`` as this database's SQL names it (quoted by the dialect, in the schema
        ``[source]`` names)."""

    def close(self) -> None: ...


class DaemonStore(TableStore, Protocol):
    """What the daemon's feeds and pipelines use: checkpoints, the sinks (under leader
    locks), the chunk readers of re-scores, the heartbeat."""

    def check_schema(self, pipelines: Sequence[PipelineSpec]) -> None:
        """``FatalError`` unless ``init`` has made everything the pipelines need."""

    def save_checkpoint(self, name: str, checkpoint: Checkpoint, identity: str) -> None: ...

    def record_stop(self, name: str, reason: str | None) -> None: ...

    def older_predictions(self, pipeline: PipelineSpec) -> bool:
        """Whether a stored prediction carries another model version than the pipeline's."""

    def lock(self, pipeline: PipelineSpec) -> str:
        """The name of the pipeline's leader lock."""

    def sink(
        self,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        identity: str,
        decode: PositionDecoder,
        on_retry: OnRetry | None = None,
        step: PositionStep | None = None,
    ) -> PipelineSink:
        """The pipeline's writer. Its batches record their position in the checkpoint row,
        under the pipeline's leader lock; with ``step``, by that step instead (no lock: a
        feed whose positions are fenced otherwise, e.g. by compare-and-set)."""

    def chunks(self, pipeline: PipelineSpec, table: TableInfo) -> ChunkStore: ...

    def heartbeat(self, instance: str, interval_s: float) -> Heartbeat: ...


class AdminStore(TableStore, Protocol):
    """What `init`, `check` and `status` use: the DDL, the checks, the counts."""

    def init(self, pipelines: Sequence[PipelineSpec]) -> list[str]:
        """Make (or upgrade) the scorer's tables and views, idempotently: the statements."""

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

    def counts(self, pipeline: PipelineSpec) -> PipelineCounts: ...

    def database_now(self) -> datetime | None: ...

    def leader(self, pipeline: PipelineSpec) -> int | None:
        """The session holding the pipeline's leader lock (None: no process runs it)."""


class Store(DaemonStore, AdminStore, Protocol):
    """The scorer's tables in one database: what a dialect implements (``stores/``)."""
