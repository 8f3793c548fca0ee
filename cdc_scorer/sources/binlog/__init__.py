"""The MySQL / MariaDB / Aurora MySQL binlog source (the ``Source`` of ``sources/``).

- ``server.py``: the server's flavour, identity and binlog settings (preflight);
- ``positions.py``: GTIDs, GTID sets, file:pos — the positions and how a reader starts at one;
- ``resume.py``: the position now, and whether a stored one can still be read here;
- ``reader.py``: the reader thread, its bounded hand-over and its reconnects;
- ``events.py``: binlog events → source items (boundaries, TRUNCATE, ALTER, DROP, XA, …);
- ``decoder.py``: the fast rows decoder; ``payload.py``: compressed transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect
from cdc_scorer.sources import Capture, ChangeStream, SourceInfo, StreamHooks, TableCheck
from cdc_scorer.sources.binlog.positions import (
    BinlogPosition,
    FilePosition,
    MariadbGtidPosition,
    MysqlGtidSetPosition,
    decode_binlog_position,
)
from cdc_scorer.sources.binlog.reader import BinlogStream, probe_replication
from cdc_scorer.sources.binlog.resume import check_resumable, current_position, position_from
from cdc_scorer.sources.binlog.server import ServerInfo, preflight_binlog, server_info
from cdc_scorer.sources.binlog.spec import BinlogSpec, binlog_spec
from cdc_scorer.sources.log_source import LogSource

# What a failover or a blue/green switchover does with each kind of position (`check`).
FAILOVER = {
    MariadbGtidPosition.kind: "positions are MariaDB GTIDs: a promoted replica (with "
    "log_slave_updates=ON) or another server that executed them resumes the stream",
    MysqlGtidSetPosition.kind: "positions are GTID sets (gtid_mode=ON): a promoted replica, an "
    "Aurora failover or a blue/green target that executed them resumes the stream",
    FilePosition.kind: "positions are file:pos (no GTIDs): on another server the checkpoint is "
    "refused — set gtid_mode=ON and enforce_gtid_consistency=ON (Aurora: the cluster parameter "
    "group) to survive a failover or a blue/green switchover",
}


class BinlogSource(LogSource):
    """The binlog of the server ``[source]`` names, read as a replica."""

    probe_name = "grant: binlog replication"

    def __init__(self, source: SourceSpec, retry: RetrySpec) -> None:
        self._source = source
        self._log: BinlogSpec = binlog_spec(source)
        self._retry = retry
        self._server: ServerInfo | None = None  # once preflight passed

    def _connection(self) -> Connection:
        return connect(self._source, database=False)

    def _checked(self, conn: Connection) -> ServerInfo:
        if self._server is None:
            self._server = preflight_binlog(conn, self._log.positions)
        return self._server

    def preflight(self) -> SourceInfo:
        conn = self._connection()
        try:
            server = self._checked(conn)
        finally:
            close_quietly(conn)
        return SourceInfo(server.identity, server.version)

    def settings(self, resuming: bool = False) -> list[tuple[str, str | None]]:
        conn = self._connection()
        try:
            _server, settings = server_info(conn, self._log.positions)
        finally:
            close_quietly(conn)
        return [(f"binlog {name}", problem) for name, problem in settings]

    def notes(self) -> list[tuple[str, str]]:
        conn = self._connection()
        try:
            server, _settings = server_info(conn, self._log.positions)
        finally:
            close_quietly(conn)
        return [("failover", FAILOVER[server.positions])]

    def state_notes(self) -> list[tuple[str, str]]:
        return []  # the server keeps its binlog by its own retention, not for this reader

    def refusals(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        return []  # reading the binlog changes nothing the application meets

    def prepare(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        return []  # the binlog needs nothing made: its settings are checked, not set

    def probe(self) -> str:
        start = self.current_position()
        assert isinstance(start, BinlogPosition)
        probe_replication(self._source, start)
        return "binlog read"

    def current_position(self) -> Position:
        conn = self._connection()
        try:
            return current_position(conn, self._checked(conn))
        finally:
            close_quietly(conn)

    def check_resumable(self, position: Position) -> None:
        conn = self._connection()
        try:
            check_resumable(conn, self._checked(conn), position)
        finally:
            close_quietly(conn)

    def decode_position(self, server_identity: str, text: str) -> Position:
        return decode_binlog_position(server_identity, text)

    def position_from(self, text: str) -> Position:
        conn = self._connection()
        try:
            return position_from(conn, self._checked(conn), text)
        finally:
            close_quietly(conn)

    def table_checks(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[TableCheck]:
        """Each pipeline whose model reads a JSON column the server logs as diffs: such rows
        are dead-lettered (``partial_json_inputs``)."""
        server = self._server
        if server is None:
            conn = self._connection()
            try:
                server, _settings = server_info(conn, self._log.positions)
            finally:
                close_quietly(conn)
        return [
            TableCheck("binlog binlog_row_value_options", problem, False)
            for problem in partial_json_inputs(server, pipelines, tables)
        ]

    def release(self, position: Position) -> None:
        """The server keeps its binlog by its own retention: nothing to tell it."""

    def open(self, start: Position, capture: Capture, hooks: StreamHooks) -> ChangeStream:
        if not isinstance(start, BinlogPosition):
            raise FatalError(f"position {start} is not a binlog position")
        return BinlogStream(
            self._source,
            capture,
            start,
            retry=self._retry,
            hooks=hooks,
            verify=self.check_resumable,
        )


def partial_json_inputs(
    server: ServerInfo, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
) -> list[str]:
    """With binlog_row_value_options=PARTIAL_JSON, each pipeline whose model reads a JSON
    column, with the fix (the server logs JSON updates as diffs)."""
    if "PARTIAL_JSON" not in server.row_value_options.upper():
        return []
    problems = []
    for pipeline in pipelines:
        table = tables.get(pipeline.table)
        if table is None:
            continue
        json_inputs = [
            c for c in pipeline.input_columns if table.column_types.get(c, "").lower() == "json"
        ]
        if json_inputs:
            problems.append(
                f"pipeline {pipeline.name} reads JSON column {', '.join(json_inputs)}, and "
                "binlog_row_value_options=PARTIAL_JSON logs JSON updates as diffs (such rows "
                "become dead letters): set binlog_row_value_options='' in the DB parameter "
                "group / my.cnf"
            )
    return problems
