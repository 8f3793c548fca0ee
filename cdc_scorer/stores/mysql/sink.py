"""The MySQL sink: ONE transaction per batch (or run of batches: ``stores/fenced.py``) —
prediction upserts/deletes, dead letters, checkpoint — in MySQL's SQL; the fence around it
(the leader lock held on the connection, the checkpoint found as left after a reconnect) is
``stores/fenced.py``.

Because the checkpoint commits with the predictions it covers, a crash at any point leaves
either both or neither, and restart resumes exactly after the last applied batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from cdc_scorer.core.own_tables import DEAD_LETTER_TABLE
from cdc_scorer.core.records import ScoredBatch
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.mysql.connection import Connection, close_quietly, connect, mysql_errors, quote
from cdc_scorer.stores import (
    OnRetry,
    PositionDecoder,
    StoredCheckpoint,
    dead_letter_rows,
    prediction_columns,
)
from cdc_scorer.stores.fenced import FencedSink, WriterConnection
from cdc_scorer.stores.keys import key_hash
from cdc_scorer.stores.mysql.checkpoints import CHECKPOINT_UPSERT, load_checkpoints, record_stop
from cdc_scorer.stores.mysql.leader import release_lock, try_lock
from cdc_scorer.stores.mysql.schema import prediction_value_columns, stored_types, view_statement


def _hex(value: bytes) -> str:
    """A binary literal (as pymysql writes bytes: no escaping needed)."""
    return "X'" + value.hex() + "'"


@dataclass(frozen=True)
class _MultiRow:
    """A statement with a list of row groups: ``head + row, row, … + tail``."""

    head: str
    tail: str
    row: str = ""  # one row group's placeholders, for ``execute`` (``execute_sql`` has SQL)
    rows_per_statement: int = 500  # well under max_allowed_packet for any prediction row

    def execute(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        step = self.rows_per_statement
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            cursor.execute(
                self.head + ", ".join([self.row] * len(chunk)) + self.tail,
                [value for row in chunk for value in row],
            )

    def execute_sql(self, cursor: Any, rows: list[str]) -> None:
        """Rows already written as SQL (each ``row`` with its literals filled in)."""
        step = self.rows_per_statement
        for start in range(0, len(rows), step):
            cursor.execute(self.head + ", ".join(rows[start : start + step]) + self.tail)


class Sink(FencedSink[Connection]):
    """Writes one pipeline's scored batches, in order, through its own connection."""

    def __init__(
        self,
        source: SourceSpec,
        pipeline: PipelineSpec,
        key_columns: tuple[str, ...],
        server_identity: str,
        retry: RetrySpec,
        on_retry: OnRetry | None = None,
        *,
        lock: str,
        decode: PositionDecoder,
        step: PositionStep | None = None,
        writer: WriterConnection[Connection] | None = None,
    ) -> None:
        super().__init__(
            pipeline,
            server_identity,
            retry,
            on_retry,
            lock=lock,
            decode=decode,
            step=step,
            writer=writer,
        )
        self._source = source
        self._key_columns = key_columns
        self._model_endpoint = pipeline.model.model_endpoint
        value_columns = prediction_value_columns(pipeline)
        columns, updates = prediction_columns(pipeline, key_columns)
        self._value_columns = value_columns
        self._vectors = {c.name for c in pipeline.model.prediction_columns() if c.kind == "vector"}
        # Per value column: how its value is written, "{}" around its literal (a vector into
        # a VECTOR column through the server's function); decided from the table itself.
        self._wraps: list[str] | None = None
        self._view = view_statement(pipeline, key_columns)
        # Multi-row statements, built here: pymysql's executemany batches only statements whose
        # VALUES are all placeholders (ours has NOW(6)) and sends one round trip per row
        # otherwise, which made the sink the pipeline's bottleneck (docs/benchmarks.md).
        self._upsert = _MultiRow(
            f"INSERT INTO {quote(pipeline.predictions)} "
            f"({', '.join(quote(c) for c in columns)}, scored_at) VALUES ",
            " ON DUPLICATE KEY UPDATE "
            + ", ".join(f"{quote(c)}=VALUES({quote(c)})" for c in [*updates, "scored_at"]),
        )
        self._delete = _MultiRow(
            f"DELETE FROM {quote(pipeline.predictions)} WHERE key_hash IN (", ")"
        )
        self._dead_letter = _MultiRow(
            f"INSERT INTO {DEAD_LETTER_TABLE} (pipeline, source_key, source_position, reason, "
            "error, payload, created_at) VALUES ",
            "",
            row="(%s, %s, %s, %s, %s, %s, NOW(6))",
            # An error and a payload are up to ~125 KB a row: 500 of them would be far over
            # MariaDB's default max_allowed_packet (16 MB).
            rows_per_statement=50,
        )

    def _open(self) -> Connection:
        return connect(self._source)

    def _close(self, conn: Connection | None) -> None:
        close_quietly(conn)

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        return mysql_errors(doing)

    def _try_lock(self, conn: Connection, wait_s: float) -> bool:
        return try_lock(conn, self.lock, wait_s)

    def _release_lock(self, conn: Connection) -> None:
        release_lock(conn, self.lock)

    def _stored(self, conn: Connection) -> StoredCheckpoint | None:
        name = self._pipeline.name
        return load_checkpoints(conn, [name], self._decode).get(name)

    def _record_stop(self, conn: Connection, reason: str) -> None:
        record_stop(conn, self._pipeline.name, reason)

    def _upsert_rows(self, conn: Connection, batch: ScoredBatch) -> list[str]:
        """Each prediction as a SQL row, ``(literal, …, NOW(6))``, escaped by the connection
        (which knows the session's quoting mode). Building the SQL here rather than through
        the cursor's ``%s`` is the same escaping with less of its overhead; the values a
        batch repeats on every row are escaped once."""
        escape = conn.escape
        repeated: dict[Any, str] = {}

        def once(value: Any) -> str:
            text = repeated.get(value)
            if text is None:
                text = repeated[value] = escape(value)
            return text

        endpoint = escape(self._model_endpoint)
        version = escape(self._pipeline.model_version)
        values = self._values(conn)
        return [
            "("
            + ", ".join(
                [
                    _hex(key_hash(p.key)),
                    *map(escape, p.key),
                    *values(p.columns),
                    endpoint,
                    once(p.variant),
                    version,
                    once(p.source_position),
                    once(p.source_committed_at),
                ]
            )
            + ", NOW(6))"
            for p in batch.upserts
        ]

    def _values(self, conn: Connection) -> Callable[[dict[str, Any]], list[str]]:
        """A prediction's value columns as SQL literals. A vector (a list of floats) is the
        text of its JSON array, which a JSON column and both VECTOR functions read; into a
        VECTOR column (as the table has it) through the server's function."""
        escape = conn.escape
        columns = self._value_columns
        if not self._vectors:
            return lambda values: [escape(values.get(c)) for c in columns]
        wraps = self._wraps
        if wraps is None:
            stored = stored_types(conn, self._source.database, self._pipeline.predictions)
            function = (
                "VEC_FromText({})"
                if "mariadb" in str(getattr(conn, "server_version", "")).lower()
                else "STRING_TO_VECTOR({})"
            )
            wraps = self._wraps = [
                function if stored.get(c, "").startswith("vector") else "{}" for c in columns
            ]

        def literal(value: Any, wrap: str) -> str:
            if value is None:
                return "NULL"
            if isinstance(value, list):
                return wrap.format(escape(json.dumps(value)))
            return str(escape(value))

        pairs = list(zip(columns, wraps, strict=True))
        return lambda values: [literal(values.get(c), wrap) for c, wrap in pairs]

    def _before(self, conn: Connection, batch: ScoredBatch) -> None:
        if batch.columns_changed:
            # DDL commits on its own: made before the batch's transaction, and made again if
            # that transaction is replayed (it is idempotent).
            with conn.cursor() as cursor:
                cursor.execute(self._view)

    def _begin(self, conn: Connection) -> None:
        conn.begin()

    def _commit(self, conn: Connection) -> None:
        conn.commit()

    def _statements(
        self, conn: Connection, batch: ScoredBatch, row: tuple[Any, ...] | None
    ) -> None:
        with conn.cursor() as cursor:
            if batch.truncate:  # the source table was truncated: so are they
                cursor.execute(f"DELETE FROM {quote(self._pipeline.predictions)}")
            if batch.upserts:
                self._upsert.execute_sql(cursor, self._upsert_rows(conn, batch))
            # A dead-lettered row's older prediction would belong to an older version.
            removed = [*batch.deletes, *(d.key for d in batch.dead_letters)]
            if removed:
                self._delete.execute_sql(cursor, [_hex(key_hash(k)) for k in removed])
            if batch.dead_letters:
                self._dead_letter.execute(
                    cursor,
                    dead_letter_rows(self._pipeline.name, batch),
                )
            self._checkpoint_step(cursor, CHECKPOINT_UPSERT, batch, row)
