"""The PostgreSQL / Aurora PostgreSQL logical-replication source (the ``Source`` of
``sources/``): pgoutput through a replication slot of the scorer's own.

- ``protocol.py``: pgoutput's messages (protocol version 1), bytes → frozen messages;
- ``positions.py``: commit LSNs — the positions, and the transactions' ids;
- ``decoder.py``: messages → source items (rows typed as a SELECT gives them, TRUNCATE, DDL);
- ``reader.py``: the replication connection's thread, its feedback and reconnects;
- ``server.py``: settings, identity, the publication and the slot.

Why psycopg2: it is the maintained Python client that reads the COPY BOTH stream of a
replication connection (``LogicalReplicationConnection``, with standby status feedback);
psycopg 3 opens ``replication=database`` connections but cannot read that stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.postgresql.connection import (
    Connection,
    close_quietly,
    connect,
    connect_replication,
    pg_errors,
)
from cdc_scorer.sources import Capture, ChangeStream, SourceInfo, StreamHooks, TableCheck
from cdc_scorer.sources.log_source import LogSource
from cdc_scorer.sources.pgoutput import server
from cdc_scorer.sources.pgoutput.positions import LsnPosition
from cdc_scorer.sources.pgoutput.protocol import lsn_text, parse_lsn
from cdc_scorer.sources.pgoutput.reader import PgoutputStream
from cdc_scorer.sources.pgoutput.spec import PgoutputSpec, pgoutput_spec

FAILOVER = (
    "positions are commit LSNs of one WAL history, streamed through replication slot {slot}: "
    "a server that continues this history and has the slot resumes the stream (PostgreSQL "
    "17+ failover slots, Aurora's shared storage — test yours); elsewhere the checkpoint is "
    'refused, or re-scored with source.pgoutput.on_lost_position = "rescore"'
)


class PgoutputSource(LogSource):
    """The WAL of the database ``[source]`` names, decoded by pgoutput."""

    probe_name = "grant: logical replication"

    def __init__(self, source: SourceSpec, retry: RetrySpec) -> None:
        self._source = source
        self._log: PgoutputSpec = pgoutput_spec(source)
        self._retry = retry
        self._info: server.ServerInfo | None = None

    def _connection(self) -> Connection:
        return connect(self._source)

    def _checked(self, conn: Connection) -> server.ServerInfo:
        if self._info is None:
            self._info = server.preflight(conn, self._source.user)
        return self._info

    def preflight(self) -> SourceInfo:
        conn = self._connection()
        try:
            info = self._checked(conn)
        finally:
            close_quietly(conn)
        return SourceInfo(info.identity, info.version)

    def refusals(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        """A captured table whose UPDATEs and DELETEs would carry no usable key: publishing it
        would make the server refuse the application's own UPDATEs and DELETEs on it."""
        conn = self._connection()
        try:
            keys = {p.table: tables[p.table].key_columns for p in pipelines if p.table in tables}
            fatal, _warnings = server.replica_identity_problems(conn, self._source.schema, keys, {})
        finally:
            close_quietly(conn)
        return fatal

    def prepare(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        """``init`` and ``run``: the publication of the captured tables (and the scorer's
        signal and heartbeat tables) and the replication slot, made or extended (idempotent),
        after :meth:`refusals` found nothing (else nothing is made). A slot the server
        invalidated is made anew only with ``on_lost_position = "rescore"`` (the checkpoints
        are then refused and every row re-scored); otherwise it is left for the start to
        refuse with the fix."""
        refused = self.refusals(pipelines, tables)
        if refused:
            raise FatalError("; ".join(refused))
        source = self._source
        conn = self._connection()
        try:
            self._checked(conn)
            statements = server.ensure_publications(
                conn,
                self._log.publication,
                source.schema,
                [p.table for p in pipelines],
                source.user,
            )
            replace_lost = self._log.rescores_lost_position
            if server.ensure_slot(conn, self._log.slot_name, source.database, replace_lost):
                slot = self._log.slot_name
                statements.append(
                    f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                )
        finally:
            close_quietly(conn)
        return statements

    def settings(self, resuming: bool = False) -> list[tuple[str, str | None]]:
        conn = self._connection()
        try:
            info = server.server_info(conn)
            found = server.settings(info, self._source.user)
            state = server.slot_state(conn, self._log.slot_name)
        finally:
            close_quietly(conn)
        slot = self._log.slot_name
        problem = server.slot_problem(state, slot, self._source.database, resuming)
        return [*found, (f"replication slot {slot}", problem)]

    def notes(self) -> list[tuple[str, str]]:
        return [("failover", FAILOVER.format(slot=self._log.slot_name)), *self.state_notes()]

    def state_notes(self) -> list[tuple[str, str]]:
        """What the slot keeps on the server now."""
        conn = self._connection()
        try:
            state = server.slot_state(conn, self._log.slot_name)
        finally:
            close_quietly(conn)
        return [] if state is None else [("slot retained WAL", retained_text(state))]

    def probe(self) -> str:
        """Open the replication connection and identify the system (proves the grant)."""
        conn = connect_replication(self._source)
        try:
            with pg_errors("identifying the system over replication"), conn.cursor() as cursor:
                cursor.execute("IDENTIFY_SYSTEM")
                row = cursor.fetchone()
        finally:
            close_quietly(conn)
        return f"replication connection opened (system {row[0] if row else '?'})"

    def current_position(self) -> Position:
        """The WAL position now (``run`` has made the slot before: what commits after this
        position is in it)."""
        conn = self._connection()
        try:
            return LsnPosition(self._checked(conn).identity, server.current_lsn(conn))
        finally:
            close_quietly(conn)

    def check_resumable(self, position: Position) -> None:
        if not isinstance(position, LsnPosition):
            raise FatalError(
                f"checkpoint {position} is not a PostgreSQL position — the checkpoint table "
                "belongs to another kind of source; run `cdc-scorer reposition --config FILE "
                "--pipeline NAME --now --rescore` to start over here with every row re-scored"
            )
        conn = self._connection()
        try:
            source = self._source
            info = self._checked(conn)
            server.check_resumable(conn, info, self._log.slot_name, source.database, position)
        finally:
            close_quietly(conn)

    def decode_position(self, server_identity: str, text: str) -> Position:
        kind, _, value = text.partition(":")
        if kind != LsnPosition.kind:
            raise ValueError(f"unknown position encoding {text!r}")
        return LsnPosition.parse(server_identity, value)

    def position_from(self, text: str) -> Position:
        """An LSN an operator names (``reposition --lsn``): the slot must still have what
        follows it (not before its confirmed flush) and the server must have written it."""
        kind, _, value = text.partition(":")
        if kind != LsnPosition.kind:
            raise FatalError(
                "PostgreSQL positions are WAL positions: use --lsn (e.g. --lsn 0/1A63938) or --now"
            )
        try:
            lsn = parse_lsn(value)
        except ValueError as exc:
            raise FatalError(f"--lsn: {exc}") from None
        conn = self._connection()
        try:
            info = self._checked(conn)
            now = server.current_lsn(conn)
            state = server.slot_state(conn, self._log.slot_name)
        finally:
            close_quietly(conn)
        flushed = None if state is None else state.confirmed_flush_lsn
        if flushed is not None and lsn < flushed:
            raise FatalError(
                f"--lsn {value}: replication slot {self._log.slot_name} confirmed "
                f"{lsn_text(flushed)}, after it — the changes between are gone from the slot "
                "(name a later LSN, or use --rescore with --now)"
            )
        if lsn > now:
            raise FatalError(f"--lsn {value}: past the server's WAL ({lsn_text(now)})")
        return LsnPosition(info.identity, lsn)

    def table_checks(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[TableCheck]:
        """The publication must hold every captured table; each table's replica identity must
        carry the scorer's key in UPDATEs and DELETEs (fatal), and should carry whole rows
        where a model reads several columns of which some can be stored out of line."""
        source = self._source
        conn = self._connection()
        try:
            checks: list[TableCheck] = []
            problem = server.publication_problem(
                conn, self._log.publication, source.schema, [p.table for p in pipelines]
            )
            names = server.publication_names(self._log.publication)
            checks.append(TableCheck(f"publications {names}", problem, True))
            keys = {t: info.key_columns for t, info in tables.items()}
            inputs: dict[str, tuple[str, ...]] = {}
            for pipeline in pipelines:
                if len(pipeline.input_columns) > 1:
                    inputs[pipeline.table] = (
                        *inputs.get(pipeline.table, ()),
                        *pipeline.input_columns,
                    )
            fatal, warnings = server.replica_identity_problems(conn, source.schema, keys, inputs)
        finally:
            close_quietly(conn)
        checks += [TableCheck("replica identity", p, True) for p in fatal]
        checks += [TableCheck("replica identity", p, False) for p in warnings]
        return checks

    def release(self, position: Position) -> None:
        """Advance the slot to what every pipeline committed after the stream closed (its
        walsender lets go of the slot a moment after the connection closes: asked again)."""
        if not isinstance(position, LsnPosition):
            return
        conn = self._connection()
        try:
            server.advance_slot(conn, self._log.slot_name, position.lsn)
        finally:
            close_quietly(conn)

    def open(self, start: Position, capture: Capture, hooks: StreamHooks) -> ChangeStream:
        if not isinstance(start, LsnPosition):
            raise FatalError(f"position {start} is not a PostgreSQL position")
        return PgoutputStream(
            self._source,
            capture,
            start,
            retry=self._retry,
            hooks=hooks,
            verify=self.check_resumable,
        )


def retained_text(state: server.SlotState) -> str:
    retained = state.retained_bytes
    size = "unknown" if retained is None else f"{retained / 1_048_576:.1f} MiB"
    flushed = "-" if state.confirmed_flush_lsn is None else lsn_text(state.confirmed_flush_lsn)
    active = f"in use by pid {state.active_pid}" if state.active_pid else "not in use"
    return f"{size} kept (wal_status {state.wal_status or '-'}), confirmed {flushed}, {active}"
