"""The PostgreSQL stream: pgoutput through psycopg2's LogicalReplicationConnection in a
dedicated thread, feeding the bounded hand-over.

Transactions arrive whole, at their commit (protocol version 1: the server decodes a large
one to its own disk first), and are handed over in runs. The slot is told what is durably
applied (standby status feedback, flush LSN) only through :meth:`PgoutputStream.acknowledge`:
the oldest checkpoint every pipeline has committed, sent at once when it moves and every few
seconds while idle, so the server keeps what the scorer still needs and lets go of the rest.
The thread reconnects by itself from the last acknowledged position after a lost connection.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extras
import structlog

from cdc_scorer.core.errors import CdcScorerError, FatalError, PositionLost, RetriableError
from cdc_scorer.core.positions import Position
from cdc_scorer.core.retry import backoff_s
from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.postgresql.connection import (
    close_quietly,
    connect,
    connect_replication,
    map_error,
    pg_errors,
)
from cdc_scorer.postgresql.values import TextCasters
from cdc_scorer.sources import Capture, StreamHooks
from cdc_scorer.sources.handover import ThreadedStream
from cdc_scorer.sources.pgoutput.decoder import TransactionDecoder
from cdc_scorer.sources.pgoutput.positions import LsnPosition
from cdc_scorer.sources.pgoutput.protocol import Relation, lsn_text
from cdc_scorer.sources.pgoutput.server import publication_names, slot_state
from cdc_scorer.sources.pgoutput.spec import pgoutput_spec

log = structlog.get_logger("cdc_scorer.source")

_POLL_S = 0.5  # how long the thread waits on the socket: how soon a stop is seen
FEEDBACK_INTERVAL_S = 5.0  # standby status while idle (the server's wal_sender_timeout: 60 s)
MEASURE_INTERVAL_S = 15.0  # the slot's retained WAL, for the gauge
RELEASE_AFTER_S = 10.0
# A slot another connection holds longer than this is another process's, not the walsender of
# a process that just died (it lets go as soon as it notices: seconds).
SLOT_BUSY_LIMIT_S = 30.0  # idle with unconfirmed changes this long: let the server go
# SQLSTATEs of a replication start that waiting cures: the slot is still held by a walsender
# of a process that just died (it lets go once it notices).
_SLOT_BUSY = "55006"
_SLOT_INVALID = "55000"


class PgoutputStream(ThreadedStream):
    """Streams from ``start`` until stopped (the ``ChangeStream`` of the PostgreSQL source)."""

    def __init__(
        self,
        source: SourceSpec,
        capture: Capture,
        start: LsnPosition,
        *,
        retry: RetrySpec,
        hooks: StreamHooks | None = None,
        verify: Callable[[LsnPosition], None] | None = None,
    ) -> None:
        super().__init__(pgoutput_spec(source).queue_max_rows, "pgoutput-reader")
        self._source = source
        self._slot = pgoutput_spec(source).slot_name
        self._retry = retry
        self._hooks = hooks or StreamHooks()
        self._casters = TextCasters()
        self._decoder = TransactionDecoder(
            source.schema,
            capture.key_columns,
            capture.read_columns,
            start,
            self._casters,
            self._put,
            self._hooks.on_rows,
            start_shapes=capture.column_types,
            describe=self._describe,
        )
        self._verify = verify
        self._publications = publication_names(pgoutput_spec(source).publication)
        self._captured = [*capture.key_columns]
        # What the pipelines have durably applied: the only LSN the slot is ever told.
        self._acknowledged = start.lsn
        self._sent = 0
        self._sent_at = 0.0
        self._retained: int | None = None  # the slot's WAL, as last measured
        self._measured_at = 0.0

    def retained_bytes(self) -> int | None:
        return self._retained

    def acknowledge(self, position: Position) -> None:
        """Every pipeline has committed ``position``: the slot may let go of what is before."""
        if isinstance(position, LsnPosition) and position.lsn > self._acknowledged:
            self._acknowledged = position.lsn  # one int: the reader thread reads it

    @property
    def acknowledged(self) -> LsnPosition:
        return LsnPosition(self._decoder.position.server_identity, self._acknowledged)

    # ---------------------------------------------------------------- reader thread
    def _read_forever(self) -> None:
        attempt = 0
        first = True
        busy_since: float | None = None  # the slot held by another walsender, since
        while not self._stop.is_set():
            start = self._decoder.position
            conn: Any = None
            try:
                if not first and busy_since is None and self._verify is not None:
                    # PositionLost: one line, the process stops; a server still away: retried.
                    # (Not while the slot is busy: whoever holds it moves it, and the line to
                    # give then is that one, below.)
                    self._verify(start)
                first = False
                conn = connect_replication(self._source)
                self._read(conn, start)
                attempt = 0
            except RetriableError as exc:
                if exc.code == "slot_in_use":
                    busy_since = busy_since or time.monotonic()
                    if time.monotonic() - busy_since > SLOT_BUSY_LIMIT_S:
                        raise FatalError(
                            f"replication slot {self._slot} has been in use by "
                            f"another connection for {SLOT_BUSY_LIMIT_S:.0f} s: another "
                            "process streams from it — each process that runs a part of the "
                            "pipelines (--pipelines) needs a slot of its own (set "
                            "CDC_SCORER_SOURCE__PGOUTPUT__SLOT_NAME for it)"
                        ) from exc
                else:
                    busy_since = None
                self._dropped()
                self._decoder.reconnected()
                if self._hooks.on_disconnect is not None:
                    self._hooks.on_disconnect()
                delay = backoff_s(self._retry, attempt)
                log.warning(
                    "replication stream disconnected",
                    code=exc.code,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                    position=str(self._decoder.position),
                )
                attempt += 1
                self._stop.wait(delay)
            finally:
                close_quietly(conn)

    def _read(self, conn: Any, start: LsnPosition) -> None:
        doing = f"streaming slot {self._slot} from {start}"
        try:
            self._decoder.know_tables(self._table_oids())
            cursor = conn.cursor()
            self._casters.bind(conn)
            cursor.start_replication(
                slot_name=self._slot,
                decode=False,
                start_lsn=lsn_text(start.lsn),
                status_interval=FEEDBACK_INTERVAL_S,
                options={"proto_version": "1", "publication_names": self._publications},
            )
            if self._hooks.on_connect is not None:
                self._hooks.on_connect()
            self._sent = 0
            self._stream(cursor, conn)
        except psycopg2.Error as exc:
            raise _mapped(exc, doing) from exc

    def _stream(self, cursor: Any, conn: Any) -> None:
        decoder = self._decoder
        read_at = stalled_since = time.monotonic()
        stalled_at = self._acknowledged
        handle = decoder.handle_payload
        read_any = False  # since the last idle turn (the clock is read there, not per message)
        while not self._abort.is_set() and not (self._stop.is_set() and decoder.tx is None):
            message = cursor.read_message()
            if message is not None:
                handle(message.payload)
                read_any = True
                continue
            self._flush()
            self._feedback(cursor)
            now = time.monotonic()
            if read_any:
                read_at, read_any = now, False
            if now - self._measured_at >= MEASURE_INTERVAL_S:
                self._measure()
            if self._acknowledged != stalled_at or self._acknowledged >= decoder.position.lsn:
                stalled_at, stalled_since = self._acknowledged, now
            elif min(now - read_at, now - stalled_since) >= RELEASE_AFTER_S:
                # Nothing new to read and nothing more confirmed for a while: the pipelines
                # cannot commit (the database may be shutting down — a fast shutdown waits
                # for this connection to confirm everything sent — or a pipeline stopped).
                # Let the server go; the stream resumes from the last commit read.
                raise RetriableError(
                    f"nothing confirmed past {lsn_text(self._acknowledged)} for "
                    f"{RELEASE_AFTER_S:.0f} s: releasing the replication connection",
                    code="confirm_stalled",
                )
            select.select([conn], [], [], _POLL_S)
        self._flush()
        self._feedback(cursor)

    def _table_oids(self) -> dict[int, str]:
        """The captured tables' OIDs now (on a connection of its own)."""
        conn = connect(self._source)
        try:
            with pg_errors("reading the captured tables' OIDs"), conn.cursor() as cursor:
                cursor.execute(
                    "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
                    (self._source.schema, list(self._captured)),
                )
                return {int(oid): str(name) for oid, name in cursor.fetchall()}
        finally:
            close_quietly(conn)

    def _describe(self, relation: Relation) -> list[tuple[str, str]]:
        """A relation's columns with their types as ``format_type`` names them (the store's
        words), on a connection of its own."""
        oids = [c.type_oid for c in relation.columns]
        modifiers = [c.type_modifier for c in relation.columns]
        conn = connect(self._source)
        try:
            with pg_errors(f"naming the column types of {relation.name}"), conn.cursor() as c:
                c.execute(
                    "SELECT format_type(t, m) FROM unnest(%s::oid[], %s::int[]) "
                    "WITH ORDINALITY AS u(t, m, i) ORDER BY i",
                    (oids, modifiers),
                )
                names = [str(r[0]) for r in c.fetchall()]
        finally:
            close_quietly(conn)
        return [(c.name, kind) for c, kind in zip(relation.columns, names, strict=True)]

    def _measure(self) -> None:
        """The slot's retained WAL, on a connection of its own (the replication connection is
        busy streaming); a failure only leaves the gauge as it was."""
        self._measured_at = time.monotonic()
        try:
            conn = connect(self._source)
            try:
                state = slot_state(conn, self._slot)
            finally:
                close_quietly(conn)
        except CdcScorerError as exc:
            log.debug("slot not measured", error=str(exc))
            return
        self._retained = None if state is None else state.retained_bytes

    def _feedback(self, cursor: Any) -> None:
        """Standby status: the acknowledged LSN when it moved, or again after a while."""
        acknowledged, now = self._acknowledged, time.monotonic()
        if acknowledged != self._sent or now - self._sent_at >= FEEDBACK_INTERVAL_S:
            cursor.send_feedback(write_lsn=acknowledged, flush_lsn=acknowledged, force=True)
            self._sent, self._sent_at = acknowledged, now


def _mapped(exc: psycopg2.Error, doing: str) -> CdcScorerError:
    code = str(getattr(exc, "pgcode", "") or "")
    if code == _SLOT_BUSY:
        return RetriableError(f"{doing}: {exc}".strip(), code="slot_in_use")
    if code == _SLOT_INVALID:
        return PositionLost(f"{doing}: {str(exc).strip()}")
    if not code:
        # No SQLSTATE: the connection broke under the COPY stream (libpq: "error with status
        # PGRES_COPY_BOTH and no message", "server closed the connection unexpectedly").
        return RetriableError(f"{doing}: {str(exc).strip()}", code="postgres_stream")
    return map_error(exc, doing)
