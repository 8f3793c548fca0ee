"""The Kafka source's offsets, kept in the database beside the predictions.

One row per pipeline and partition of a captured table's topic holds the offset of the next
message that pipeline has not applied. A batch's predictions and the new offsets of the
partitions it covers commit in one transaction; each offset moves by compare-and-set from the
value this consumer loaded or last wrote, so a consumer that lost a partition in a rebalance
(and a zombie paused past its session) changes nothing: its transaction finds another value,
rolls back, and the batch is abandoned. Kafka's own committed offsets are informational.

The SQL is the same on MySQL and PostgreSQL but for the table's types and the insert of a
missing row; each dialect gives its ``OffsetsSql``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cdc_scorer.core.errors import CdcScorerError, FatalError
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.core.store import Store

T = TypeVar("T")

OFFSETS_TABLE = "cdc_scorer_kafka_offset"
VERSIONS_TABLE = "cdc_scorer_kafka_model_version"

TopicPartition = tuple[str, int]


class PartitionLost(FatalError):
    """A partition's stored offset is not the one this consumer expected: another consumer
    has applied messages of it since. The batch is abandoned (rolled back), and the process
    stops with this line: restarted, it rejoins the group and reads from the database's
    offsets (a member that lost partitions without being told — paused past its session —
    must not go on from its own idea of them)."""

    def __init__(self, pipeline: str, partition: TopicPartition, expected: int) -> None:
        topic, number = partition
        super().__init__(
            f"pipeline {pipeline}: partition {topic}[{number}] moved past offset {expected} "
            "under another consumer"
        )
        self.pipeline = pipeline
        self.partition = partition


@dataclass(frozen=True)
class OffsetsSql:
    """A dialect's statements: the table (as the connection names it), its DDL, and the
    insert that leaves an existing row alone."""

    table: str
    ddl: str
    insert_missing: str  # (pipeline, topic, partition, next_offset, owner) placeholders
    # The model versions each pipeline was scored with in Kafka mode: the row of a version is
    # claimed once (the member whose insert made it asks Debezium to re-score the table).
    versions_table: str = ""
    versions_ddl: str = ""
    claim_version: str = ""  # (pipeline, model_version, signal_id, reason) placeholders
    # A re-score asked for by `cdc-scorer rescore`: the version's row says the latest request
    # (pipeline, model_version, signal_id, reason, where_clause), for `status`.
    record_request: str = ""


# Why Debezium (re-)reads a table, as the versions table and `status` say it.
# A new pipeline: Debezium's incremental snapshot with a signal table, else the snapshot in
# the topic's beginning.
FIRST_SNAPSHOT = "first snapshot"
MODEL_VERSION = "model version"
REQUESTED = "requested"


@dataclass(frozen=True)
class RescoreRequest:
    """The latest reading of a table a pipeline asked for (or its first snapshot)."""

    pipeline: str
    model_version: str
    signal_id: str
    reason: str
    where: str | None
    requested_at: Any  # the database's timestamp (the predictions' scored_at is compared)


def is_new(cursor: Any, sql: OffsetsSql, pipeline: str) -> bool:
    """No model version of ``pipeline`` has been claimed: it has never run in Kafka mode."""
    cursor.execute(f"SELECT COUNT(*) FROM {sql.versions_table} WHERE pipeline = %s", (pipeline,))
    row = cursor.fetchone()
    return not (int(row[0]) if row else 0)


def request_rescore(
    cursor: Any,
    sql: OffsetsSql,
    pipeline: str,
    model_version: str,
    signal: tuple[str, str, str, str] | None,
    *,
    start: Mapping[TopicPartition, int] | None = None,
    owner: str = "",
) -> str | None:
    """In the caller's transaction: claim ``model_version`` of ``pipeline``; when this claim
    made the row and the table is to be read again — an older version ran, or the pipeline
    is new and ``start`` is given — write Debezium's ``signal`` (table, id, type, data) beside
    it and say its id (None: nothing to re-score, or another member did). A new pipeline's
    partitions then start at ``start`` (the topic's ends before the signal: its history is
    not needed, the snapshot reads every row). ``signal`` None: refused by the caller when
    one is needed (``SignalNeeded``)."""
    new = is_new(cursor, sql, pipeline)
    reason = FIRST_SNAPSHOT if new else MODEL_VERSION
    signal_id = signal[1] if signal is not None else ""
    cursor.execute(sql.claim_version, (pipeline, model_version, signal_id, reason))
    if cursor.rowcount != 1 or (new and start is None):
        return None
    if signal is None:
        raise SignalNeeded(pipeline)
    for (topic, number), offset in sorted((start or {}).items()):
        cursor.execute(sql.insert_missing, (pipeline, topic, number, offset, owner))
    _write_signal(cursor, signal)
    return signal_id


def _write_signal(cursor: Any, signal: tuple[str, str, str, str]) -> None:
    """Debezium's signal row: (its table, id, type, data)."""
    table, signal_id, kind, data = signal
    cursor.execute(
        f"INSERT INTO {table} (id, type, data) VALUES (%s, %s, %s)", (signal_id, kind, data)
    )


class SignalNeeded(Exception):
    """A claim that must ask Debezium to read the table again, without a signal table."""

    def __init__(self, pipeline: str) -> None:
        super().__init__(pipeline)
        self.pipeline = pipeline


def record_request(
    cursor: Any,
    sql: OffsetsSql,
    pipeline: str,
    model_version: str,
    signal: tuple[str, str, str, str],
    where: str | None,
) -> None:
    """In the caller's transaction: Debezium's ``signal`` (table, id, type, data) for a
    requested re-score, and the request as the version's latest (for `status`)."""
    _write_signal(cursor, signal)
    cursor.execute(sql.record_request, (pipeline, model_version, signal[1], REQUESTED, where))


def latest_request(cursor: Any, *, sql: OffsetsSql, pipeline: str) -> RescoreRequest | None:
    """The pipeline's latest request (a new version's claim or a `rescore`), if any."""
    cursor.execute(
        f"SELECT model_version, signal_id, reason, where_clause, requested_at "
        f"FROM {sql.versions_table} WHERE pipeline = %s ORDER BY requested_at DESC LIMIT 1",
        (pipeline,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    version, signal_id, reason, where, at = row
    return RescoreRequest(pipeline, str(version), str(signal_id), str(reason), where, at)


def load_offsets(
    cursor: Any,
    sql: OffsetsSql,
    pipeline: str,
    partitions: Iterable[TopicPartition],
    start: Mapping[TopicPartition, int],
    owner: str,
) -> dict[TopicPartition, int]:
    """Each partition's stored next offset; a partition without a row gets one at its
    ``start`` offset first (the topic's beginning: a new pipeline reads everything)."""
    wanted = sorted(set(partitions))
    for topic, number in wanted:
        cursor.execute(sql.insert_missing, (pipeline, topic, number, start[(topic, number)], owner))
    found: dict[TopicPartition, int] = {}
    for topic, number in wanted:
        cursor.execute(
            f"SELECT next_offset FROM {sql.table} "
            "WHERE pipeline = %s AND topic = %s AND kafka_partition = %s",
            (pipeline, topic, number),
        )
        row = cursor.fetchone()
        found[(topic, number)] = int(row[0])
    return found


def advance_offsets(
    cursor: Any,
    sql: OffsetsSql,
    pipeline: str,
    moves: Mapping[TopicPartition, tuple[int, int]],
    owner: str,
) -> None:
    """Move each partition from its expected offset to the new one (``moves``: partition →
    (expected, new)), inside the caller's transaction; ``PartitionLost`` if one is not at
    its expected offset (the caller rolls back)."""
    for (topic, number), (expected, new) in sorted(moves.items()):
        if new < expected:
            raise ValueError(f"offset of {topic}[{number}] would move back: {expected} → {new}")
        cursor.execute(
            f"UPDATE {sql.table} SET next_offset = %s, owner = %s, updated_at = "
            "CURRENT_TIMESTAMP WHERE pipeline = %s AND topic = %s AND kafka_partition = %s "
            "AND next_offset = %s",
            (new, owner, pipeline, topic, number, expected),
        )
        if cursor.rowcount != 1:
            raise PartitionLost(pipeline, (topic, number), expected)


def set_offsets(
    cursor: Any,
    sql: OffsetsSql,
    pipeline: str,
    offsets: Mapping[TopicPartition, int],
    owner: str,
) -> None:
    """In the caller's transaction: each partition's next offset set as it is given, whatever
    it was (``reposition``, with no member running: one that starts meanwhile finds its
    expected offsets gone and restarts from these)."""
    for (topic, number), offset in sorted(offsets.items()):
        cursor.execute(sql.insert_missing, (pipeline, topic, number, offset, owner))
        cursor.execute(
            f"UPDATE {sql.table} SET next_offset = %s, owner = %s, updated_at = "
            "CURRENT_TIMESTAMP WHERE pipeline = %s AND topic = %s AND kafka_partition = %s",
            (offset, owner, pipeline, topic, number),
        )


def stored_offsets(cursor: Any, sql: OffsetsSql) -> list[tuple[str, str, int, int, str | None]]:
    """Every row: (pipeline, topic, partition, next offset, owner) — for `status`."""
    cursor.execute(
        f"SELECT pipeline, topic, kafka_partition, next_offset, owner FROM {sql.table} "
        "ORDER BY pipeline, topic, kafka_partition"
    )
    return [(str(a), str(b), int(c), int(d), e) for a, b, c, d, e in cursor.fetchall()]


class OffsetLedger:
    """One pipeline's offsets as this member knows them: loaded when partitions are assigned,
    moved by each committed batch. The sink moves them inside the batch's transaction
    (:meth:`advance`, then :meth:`committed` once it commits); the source waits on
    :meth:`committed_offset` before it gives up a revoked partition."""

    def __init__(self, sql: OffsetsSql, pipeline: str, owner: str) -> None:
        self.sql = sql
        self.pipeline = pipeline
        self.owner = owner
        self._expected: dict[TopicPartition, int] = {}
        self._pending: dict[TopicPartition, int] = {}
        self._poisoned: PartitionLost | None = None

    def poison(self, partition: TopicPartition, expected: int) -> None:
        """``partition`` went to another member before what was read of it committed (or the
        session was lost): no batch of this member may commit any more — a late one could
        put an older version over the new owner's."""
        self._poisoned = PartitionLost(self.pipeline, partition, expected)

    def load(
        self, cursor: Any, partitions: Iterable[TopicPartition], start: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        found = load_offsets(cursor, self.sql, self.pipeline, partitions, start, self.owner)
        self._expected |= found
        return found

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for partition in partitions:
            self._expected.pop(partition, None)

    def committed_offset(self, partition: TopicPartition) -> int | None:
        return self._expected.get(partition)

    def advance(self, cursor: Any, position: Any) -> None:
        """In the batch's transaction: move the partitions ``position`` carries further."""
        if self._poisoned is not None:
            raise self._poisoned
        if position is None or not hasattr(position, "next_offsets"):
            return
        moves = {
            partition: (self._expected[partition], offset)
            for partition, offset in position.next_offsets().items()
            if partition in self._expected and offset != self._expected[partition]
        }
        advance_offsets(cursor, self.sql, self.pipeline, moves, self.owner)
        self._pending = {partition: new for partition, (_, new) in moves.items()}

    def committed(self) -> None:
        """The transaction of the last :meth:`advance` committed."""
        for partition, offset in self._pending.items():
            if partition in self._expected:
                self._expected[partition] = offset
        self._pending = {}


def count_rows(cursor: Any, *, table: str, where: str | None) -> int:
    """The rows of ``table`` (as the connection names it) that a reading covers."""
    cursor.execute(f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else ""))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def count_scored_since(
    cursor: Any, *, predictions: str, table: str, keys: str, where: str | None, since: Any
) -> int:
    """Of those rows, the ones whose prediction was committed at or after ``since`` (``keys``:
    the key columns, quoted and comma-separated)."""
    condition = f" WHERE {where}" if where else ""
    cursor.execute(
        f"SELECT COUNT(*) FROM {predictions} WHERE scored_at >= %s "
        f"AND ({keys}) IN (SELECT {keys} FROM {table}{condition})",
        (since,),
    )
    row = cursor.fetchone()
    return int(row[0]) if row else 0


class OffsetStore(Store, Protocol):
    """A store that keeps a Kafka feed's offsets beside the predictions (every dialect's, by
    :class:`OffsetTables`): each operation in a transaction of its own — no cursor leaves the
    store."""

    def offsets_sql(self) -> OffsetsSql:
        """The offsets tables of this dialect (the sink's offset step writes them)."""

    def init_offsets(self) -> None:
        """Make the offsets tables (``init`` in Kafka mode), idempotently."""

    def offsets_ready(self) -> bool:
        """The offsets tables exist and can be read."""

    def write_problem(self, table: str | None) -> str | None:
        """What a write that changes nothing meets on ``table`` (None: the offsets table),
        or None when it passes (`check`'s grants)."""

    def load_offsets(
        self,
        ledger: OffsetLedger,
        partitions: Iterable[TopicPartition],
        start: Mapping[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """Assigned partitions' stored offsets, into ``ledger`` (missing rows at ``start``)."""

    def is_new_pipeline(self, pipeline: str) -> bool: ...

    def claim_version(
        self,
        pipeline: str,
        model_version: str,
        signal: tuple[str, str, str, str] | None,
        start: Mapping[TopicPartition, int] | None,
        owner: str,
    ) -> str | None:
        """:func:`request_rescore` in a transaction of its own."""

    def record_request(
        self,
        pipeline: str,
        model_version: str,
        signal: tuple[str, str, str, str],
        where: str | None,
    ) -> None: ...

    def latest_request(self, pipeline: str) -> RescoreRequest | None: ...

    def count_rows(self, table: str, where: str | None) -> int:
        """Rows of the source table ``table`` matching ``where`` (``FatalError`` with the
        server's words for a condition it refuses)."""

    def count_scored_since(
        self, pipeline: PipelineSpec, key_columns: Sequence[str], where: str | None, since: Any
    ) -> int: ...

    def stored_offsets(self) -> list[tuple[str, str, int, int, str | None]]: ...

    def set_offsets(
        self, pipeline: str, offsets: Mapping[TopicPartition, int], owner: str
    ) -> None: ...


class _Dialect(Protocol):
    """What :class:`OffsetTables` needs of a dialect's store."""

    def offsets_sql(self) -> OffsetsSql: ...

    def qualified(self, table: str) -> str: ...

    def quoted(self, identifier: str) -> str: ...

    def in_transaction(self, doing: str, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` in a transaction of a connection of its own, committed."""


class OffsetTables:
    """:class:`OffsetStore`'s operations, shared by the dialects' stores (mixed in)."""

    def offsets_ready(self: _Dialect) -> bool:
        sql = self.offsets_sql()
        try:
            for table in (sql.table, sql.versions_table):
                self.in_transaction(f"reading {table}", functools.partial(_read_nothing, table))
        except CdcScorerError:
            return False
        return True

    def write_problem(self: _Dialect, table: str | None) -> str | None:
        name = self.offsets_sql().table if table is None else self.qualified(table)
        try:
            self.in_transaction(f"writing {name}", functools.partial(_write_nothing, name))
        except CdcScorerError as exc:
            return str(exc)
        return None

    def load_offsets(
        self: _Dialect,
        ledger: OffsetLedger,
        partitions: Iterable[TopicPartition],
        start: Mapping[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        wanted = list(partitions)
        return self.in_transaction(
            f"loading the Kafka offsets of {ledger.pipeline}",
            lambda cursor: ledger.load(cursor, wanted, start),
        )

    def is_new_pipeline(self: _Dialect, pipeline: str) -> bool:
        sql = self.offsets_sql()
        return self.in_transaction("reading the model versions", lambda c: is_new(c, sql, pipeline))

    def claim_version(
        self: _Dialect,
        pipeline: str,
        model_version: str,
        signal: tuple[str, str, str, str] | None,
        start: Mapping[TopicPartition, int] | None,
        owner: str,
    ) -> str | None:
        sql = self.offsets_sql()
        return self.in_transaction(
            f"claiming model version {model_version}",
            lambda c: request_rescore(
                c, sql, pipeline, model_version, signal, start=start, owner=owner
            ),
        )

    def record_request(
        self: _Dialect,
        pipeline: str,
        model_version: str,
        signal: tuple[str, str, str, str],
        where: str | None,
    ) -> None:
        sql = self.offsets_sql()
        self.in_transaction(
            "writing Debezium's signal",
            lambda c: record_request(c, sql, pipeline, model_version, signal, where),
        )

    def latest_request(self: _Dialect, pipeline: str) -> RescoreRequest | None:
        sql = self.offsets_sql()
        return self.in_transaction(
            "reading the re-score requests",
            functools.partial(latest_request, sql=sql, pipeline=pipeline),
        )

    def count_rows(self: _Dialect, table: str, where: str | None) -> int:
        return self.in_transaction(
            "counting the rows of a reading",
            functools.partial(count_rows, table=self.qualified(table), where=where),
        )

    def count_scored_since(
        self: _Dialect,
        pipeline: PipelineSpec,
        key_columns: Sequence[str],
        where: str | None,
        since: Any,
    ) -> int:
        return self.in_transaction(
            "counting the rows re-scored",
            functools.partial(
                count_scored_since,
                predictions=self.qualified(pipeline.predictions),
                table=self.qualified(pipeline.table),
                keys=", ".join(self.quoted(k) for k in key_columns),
                where=where,
                since=since,
            ),
        )

    def stored_offsets(self: _Dialect) -> list[tuple[str, str, int, int, str | None]]:
        sql = self.offsets_sql()
        return self.in_transaction("reading the Kafka offsets", lambda c: stored_offsets(c, sql))

    def set_offsets(
        self: _Dialect, pipeline: str, offsets: Mapping[TopicPartition, int], owner: str
    ) -> None:
        sql = self.offsets_sql()
        self.in_transaction(
            "moving the Kafka offsets", lambda c: set_offsets(c, sql, pipeline, offsets, owner)
        )


def _read_nothing(table: str, cursor: Any) -> None:
    cursor.execute(f"SELECT 1 FROM {table} WHERE 1 = 0")


def _write_nothing(table: str, cursor: Any) -> None:
    """A DELETE that matches no row: refused without the grant, changes nothing."""
    cursor.execute(f"DELETE FROM {table} WHERE 1 = 0")
