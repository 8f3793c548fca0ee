"""Frozen records that flow source → batcher → scorer → sink → checkpoint."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from cdc_scorer.core.positions import Position, TxId


class Op(enum.Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SNAPSHOT = "snapshot"  # a row read from the table by a snapshot or re-score chunk


@dataclass(frozen=True)
class Gap:
    """Why a change does not carry some columns whole, in its source's words: a row whose
    model input has such a gap is a dead letter with ``reason`` and ``text`` (the cause and the
    fix; ``{table}`` is replaced by the row's table)."""

    reason: str
    text: str


@dataclass(frozen=True)
class BatchAnswer:
    """What a batch job (a backfill, ``core/backfill.py``) answered for a row, checked to be
    for the row's current inputs: its prediction columns, or the service's reason it has none
    (the row is a dead letter)."""

    columns: Mapping[str, Any] | None
    reason: str = ""
    error: str = ""


@dataclass(frozen=True)
class RowChange:
    """One changed (or snapshotted) row of a source table.

    ``values`` is the row's newest image (the before image for a delete). ``tx`` is the
    transaction it belongs to (None for snapshot rows).
    """

    op: Op
    table: str
    key: tuple[Any, ...]
    values: dict[str, Any]
    tx: TxId | None
    committed_at: datetime | None
    before: dict[str, Any] | None = None
    # Columns whose new value the change log did not carry whole (e.g. a MySQL partial JSON
    # update): ``values`` holds something else there, not the value.
    incomplete: frozenset[str] = frozenset()
    # Columns the change log left out because the change did not touch them (e.g.
    # PostgreSQL's unchanged TOASTed values under REPLICA IDENTITY DEFAULT): ``values`` lacks
    # them.
    unchanged: frozenset[str] = frozenset()
    # Why, as the source explains it (with the fix), when either of the two above is set.
    gap: Gap | None = None
    # A re-score chunk's row whose prediction a batch job made already: no model call.
    answered: BatchAnswer | None = None


@dataclass(frozen=True)
class Commit:
    """A transaction boundary: everything before it belongs to ``position``."""

    position: Position
    committed_at: datetime | None
    tx: TxId | None = None


@dataclass(frozen=True)
class Signal:
    """A row inserted into the scorer's signal table, read back from the change log: a re-score
    request, or a chunk's low ("window-open") or high ("window-close") watermark."""

    pipeline: str
    kind: str
    id: str
    data: dict[str, Any]
    tx: TxId | None


@dataclass(frozen=True)
class TableAltered:
    """ALTER TABLE of a captured table (no row events are written for it): a model input may
    have changed type, and every row's value with it."""

    table: str
    tx: TxId | None


@dataclass(frozen=True)
class TableTruncated:
    """TRUNCATE of a captured table (no row events are written for it): every prediction of
    the table goes, with the checkpoint of the transaction ``tx``."""

    table: str
    tx: TxId | None


@dataclass(frozen=True)
class ColumnsGone:
    """Columns some pipeline reads are not in the table any more (a table map without them:
    dropped or renamed), from transaction ``tx`` on."""

    table: str
    columns: frozenset[str]
    tx: TxId | None


@dataclass(frozen=True)
class TableGone:
    """DROP TABLE or RENAME of a captured table: its rows change no more under this name."""

    table: str
    tx: TxId | None
    statement: str  # the DDL, as logged (shortened)


# Ends a pipeline's inbox, and its queue of batches: no more items.
END = None

SourceItem = RowChange | Commit | Signal | TableTruncated | TableAltered | TableGone | ColumnsGone


@dataclass(frozen=True)
class TableInfo:
    """A source table as the store found it."""

    name: str
    column_types: dict[str, str]  # name → the server's column type, in table order
    key_columns: tuple[str, ...]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one row, as columns of the predictions table."""

    key: tuple[Any, ...]
    columns: dict[str, Any]
    variant: str | None
    source_position: str | None  # the transaction the row came from
    source_committed_at: datetime | None


@dataclass(frozen=True)
class DeadLetter:
    key: tuple[Any, ...]
    reason: str
    error: str
    payload: str
    source_position: str | None  # the transaction the row came from


@dataclass(frozen=True)
class RescoreJob:
    """One incremental snapshot of a pipeline's table: the first snapshot, a re-score after a
    model change, after an ALTER of a model input, or one requested by `cdc-scorer rescore`."""

    id: str
    reason: str
    model_version: str | None  # the version it scores for (None: unknown, from an old row)
    where: str | None = None  # SQL condition on the source table (None: every row)
    cursor: tuple[Any, ...] | None = None  # the last key whose chunk is applied
    rows_done: int = 0  # chunk rows applied (rows the stream changed meanwhile excluded)
    rows_total: int | None = None  # counted when the job starts
    # For an ALTER: the inputs' column types before it; the job re-scores only if they changed.
    check_types: tuple[tuple[str, str], ...] | None = None
    requested_at: str | None = None  # ISO times, as shown by status
    finished_at: str | None = None
    error: str | None = None  # why it ended without re-scoring (a condition the server refused)
    # Also remove the predictions whose source row is gone (changes were missed: a lost
    # position, a reposition, a first snapshot over a predictions table with rows): a sweep
    # of the predictions table in chunks between watermarks, before the rows are re-scored.
    sweep: bool = False
    sweep_cursor: tuple[Any, ...] | None = None  # the last predictions key swept
    swept: bool = False  # the sweep is done
    orphans_removed: int = 0  # predictions the sweep removed


@dataclass(frozen=True)
class Rescores:
    """A pipeline's re-scores: the one running, the ones waiting, the last few finished."""

    running: RescoreJob | None = None
    queued: tuple[RescoreJob, ...] = ()
    finished: tuple[RescoreJob, ...] = ()
    # The model inputs' column types as the last finished re-score (or the start) saw them.
    input_types: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """What a pipeline has durably applied."""

    position: Position | None
    snapshot_state: str = "pending"  # pending | running | done | failed | skipped (the first)
    rescores: Rescores = Rescores()


@dataclass(frozen=True)
class Batch:
    """Rows of one pipeline to score and apply together; ``checkpoint`` is what it completes."""

    sequence: int
    upserts: tuple[RowChange, ...]
    deletes: tuple[RowChange, ...]
    checkpoint: Checkpoint
    rows_skipped: dict[str, int] = field(default_factory=dict)
    truncate: bool = False  # delete every prediction first (the table was truncated)
    # An ALTER TABLE changed the table's columns: the analysts' view, which names them, is
    # made again before this batch is applied.
    columns_changed: bool = False

    def from_stream(self) -> bool:
        """Whether it carries a row of the change log (not only snapshot or re-score rows)."""
        # (Not over a tuple of both: that copied every row of the batch to look at the first.)
        return any(c.op is not Op.SNAPSHOT for c in self.upserts) or any(
            c.op is not Op.SNAPSHOT for c in self.deletes
        )


@dataclass(frozen=True)
class ScoredBatch:
    """A batch after the model: what the sink writes in one transaction."""

    sequence: int
    upserts: tuple[Prediction, ...]
    deletes: tuple[tuple[Any, ...], ...]
    dead_letters: tuple[DeadLetter, ...]
    checkpoint: Checkpoint
    model_calls: int = 0
    rows_skipped: dict[str, int] = field(default_factory=dict)
    truncate: bool = False
    columns_changed: bool = False


def row_picker(columns: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """``tuple(values.get(c) for c in columns)``, through itemgetter when every column is there
    (a full row image: always); made once by whoever picks from many rows."""
    names = tuple(columns)
    if len(names) == 1:
        only = names[0]
        return lambda values: (values.get(only),)
    get = itemgetter(*names)

    def pick(values: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return get(values)  # type: ignore[no-any-return]
        except KeyError:
            return tuple(map(values.get, names))

    return pick
