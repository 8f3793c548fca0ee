"""What the scorer reads of the database (server facts, table shapes) and the tables it owns."""

from __future__ import annotations

from dataclasses import dataclass

import pymysql

from cdc_scorer.db import Connection, map_error, quote
from cdc_scorer.errors import FatalError
from cdc_scorer.records import GtidSet, Position
from cdc_scorer.spec import PipelineSpec, ScorerSpec

CHECKPOINT_TABLE = "cdc_scorer_checkpoint"
DEAD_LETTER_TABLE = "cdc_scorer_dead_letter"
HEARTBEAT_TABLE = "cdc_scorer_heartbeat"
OWN_TABLES = (CHECKPOINT_TABLE, DEAD_LETTER_TABLE, HEARTBEAT_TABLE)


@dataclass(frozen=True)
class ServerInfo:
    flavor: str  # mariadb | mysql
    version: str
    identity: str
    gtid_mode: bool
    # How positions are kept: "gtid" (MariaDB GTIDs), "mysqlgtid" (MySQL GTID sets, with
    # gtid_mode=ON) or "file" (file:pos: MySQL without GTIDs, or source.positions = "file").
    positions: str = "gtid"


@dataclass(frozen=True)
class TableInfo:
    name: str
    column_types: dict[str, str]  # name → COLUMN_TYPE, in table order
    key_columns: tuple[str, ...]


def _variables(conn: Connection, names: tuple[str, ...]) -> dict[str, str]:
    with conn.cursor() as cursor:
        cursor.execute(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")",
            names,
        )
        return {str(k).lower(): str(v) for k, v in cursor.fetchall()}


_BINLOG_VARIABLES = (
    "version",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "server_id",
    "server_uuid",
    "gtid_mode",
)


def server_info(
    conn: Connection, positions: str = "auto"
) -> tuple[ServerInfo, list[tuple[str, str | None]]]:
    """The server's facts and each binlog setting: (setting, problem with its fix or None).

    ``positions`` is ``source.positions``: "auto" keeps GTIDs on MariaDB, GTID sets on MySQL
    with gtid_mode=ON and file:pos on MySQL without; "file" keeps file:pos on both.
    """
    try:
        values = _variables(conn, _BINLOG_VARIABLES)
    except pymysql.MySQLError as exc:
        raise map_error(exc, "reading server variables") from exc
    version = values.get("version", "")
    flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
    where = (
        "in the DB cluster parameter group (Aurora) or my.cnf, then restart"
        if flavor == "mysql"
        else "in the server options (my.cnf), then restart"
    )
    settings: list[tuple[str, str | None]] = []
    log_bin = values.get("log_bin", "OFF").upper()
    settings.append(
        (
            "log_bin",
            None if log_bin == "ON" else f"binary log is off (log_bin=OFF): enable it {where}",
        )
    )
    checks = [("binlog_format", "ROW"), ("binlog_row_image", "FULL")]
    # Column names in rows events need full metadata (MySQL 8.0.14+, MariaDB 10.5+).
    if "binlog_row_metadata" in values:
        checks.append(("binlog_row_metadata", "FULL"))
    for name, wanted in checks:
        actual = values.get(name, "")
        problem = None
        if actual.upper() != wanted:
            problem = (
                f"{name} is {actual or 'unset'}, must be {wanted}: set {name}={wanted} {where}"
            )
        settings.append((name, problem))
    if flavor == "mariadb":
        identity = f"mariadb:server_id={values.get('server_id')}"
        gtid_mode = True
    else:
        identity = f"mysql:{values.get('server_uuid')}"
        gtid_mode = values.get("gtid_mode", "OFF").upper() == "ON"
    if positions == "file":
        kind = "file"
    elif flavor == "mariadb":
        kind = "gtid"
    else:
        kind = "mysqlgtid" if gtid_mode else "file"
    return ServerInfo(flavor, version, identity, gtid_mode, kind), settings


def preflight_binlog(conn: Connection, positions: str = "auto") -> ServerInfo:
    """Binlog on, ROW format, FULL images and metadata: else one line naming setting and fix."""
    server, settings = server_info(conn, positions)
    for _name, problem in settings:
        if problem is not None:
            raise FatalError(problem)
    return server


def current_position(conn: Connection, server: ServerInfo) -> Position:
    """The binlog position now (a transaction boundary)."""
    with conn.cursor() as cursor:
        if server.positions == "gtid":
            cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            (state,) = cursor.fetchone() or ("",)
            return Position.decode(server.identity, f"gtid:{state or ''}")
        if server.positions == "mysqlgtid":
            cursor.execute("SELECT @@GLOBAL.gtid_executed")
            (executed,) = cursor.fetchone() or ("",)
            return Position(server.identity, gtid_set=GtidSet.parse(str(executed or "")))
        cursor.execute("SHOW MASTER STATUS")
        row = cursor.fetchone()
        if row is None:
            raise FatalError("SHOW MASTER STATUS returned nothing: is the binary log on?")
        return Position(server.identity, log_file=str(row[0]), log_pos=int(row[1]))


def check_resumable(conn: Connection, server: ServerInfo, position: Position) -> None:
    """Refuse a checkpoint of another server, or one the server no longer has."""
    if position.server_identity != server.identity:
        raise FatalError(
            f"checkpoint belongs to {position.server_identity}, but this server is "
            f"{server.identity}: point [source] at the original server, or delete the "
            f"pipeline rows in {CHECKPOINT_TABLE} to start over with a snapshot"
        )
    kind = (
        "file"
        if position.log_file is not None
        else ("mysqlgtid" if position.gtid_set is not None else "gtid")
    )
    if kind != server.positions:
        raise FatalError(
            f"checkpoint position {position} is kept by {kind}, but source.positions makes "
            f"this run keep them by {server.positions}: set source.positions back, or delete "
            f"the pipeline rows in {CHECKPOINT_TABLE} to start over with a snapshot"
        )
    if position.log_file is not None:
        _check_binlog_file(conn, position)
        return
    if position.gtid_set is not None:
        _check_gtid_set(conn, str(position.gtid_set))
        return
    if not position.gtids:
        return
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_state")
        (state,) = cursor.fetchone() or ("",)
    server_position = Position.decode(server.identity, f"gtid:{state or ''}")
    for gtid in position.gtids:
        if not server_position.includes(gtid):
            raise FatalError(
                f"checkpoint GTID {gtid} is not in this server's binlog state "
                f"({state or 'empty'}): "
                f"the binlog was reset or this is another server — delete the pipeline rows in "
                f"{CHECKPOINT_TABLE} to start over with a snapshot"
            )


def _check_gtid_set(conn: Connection, checkpoint: str) -> None:
    """MySQL: the checkpoint's GTIDs were executed here and what follows is not purged."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT GTID_SUBSET(%s, @@GLOBAL.gtid_executed), "
            "GTID_SUBTRACT(@@GLOBAL.gtid_purged, %s)",
            (checkpoint, checkpoint),
        )
        subset, purged_after = cursor.fetchone() or (0, "")
    if not subset:
        raise FatalError(
            f"checkpoint GTID set {checkpoint} is not in this server's gtid_executed: the "
            "binlog was reset or this is another server — delete the pipeline rows in "
            f"{CHECKPOINT_TABLE} to start over with a snapshot"
        )
    if purged_after:
        raise FatalError(
            f"transactions after checkpoint GTID set {checkpoint} were purged ({purged_after}): "
            "raise the binlog retention, and delete the pipeline rows in "
            f"{CHECKPOINT_TABLE} to start over with a snapshot"
        )


def _check_binlog_file(conn: Connection, position: Position) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        files = {str(row[0]): int(row[1]) for row in cursor.fetchall()}
    size = files.get(position.log_file or "")
    if size is None:
        raise FatalError(
            f"checkpoint binlog file {position.log_file} is no longer on the server (purged; "
            f"it has {', '.join(sorted(files)) or 'none'}): raise the binlog retention, and "
            f"delete the pipeline rows in {CHECKPOINT_TABLE} to start over with a snapshot"
        )
    if (position.log_pos or 0) > size:
        raise FatalError(
            f"checkpoint {position.log_file}:{position.log_pos} is past the end of that file "
            f"({size} bytes): the binlog was reset or this is another server — delete the "
            f"pipeline rows in {CHECKPOINT_TABLE} to start over with a snapshot"
        )


def inspect_tables(conn: Connection, spec: ScorerSpec) -> dict[str, TableInfo]:
    """Each pipeline's source table, its columns and key; every problem listed at once."""
    problems: list[str] = []
    tables: dict[str, TableInfo] = {}
    with conn.cursor() as cursor:
        for index, pipeline in enumerate(spec.pipelines):
            cursor.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
                (spec.source.database, pipeline.table),
            )
            rows = cursor.fetchall()
            if not rows:
                problems.append(
                    f"pipelines.{index}.table: table {spec.source.database}.{pipeline.table} "
                    "does not exist (or the user cannot see it) — create it or fix the name"
                )
                continue
            column_types = {str(name): str(ctype) for name, ctype, _ in rows}
            if pipeline.key_columns:
                key = pipeline.key_columns
            else:
                cursor.execute(
                    "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA=%s "
                    "AND TABLE_NAME=%s AND INDEX_NAME='PRIMARY' ORDER BY SEQ_IN_INDEX",
                    (spec.source.database, pipeline.table),
                )
                key = tuple(str(r[0]) for r in cursor.fetchall())
                if not key:
                    problems.append(
                        f"pipelines.{index}.key_columns: table {pipeline.table} has no primary "
                        "key — set key_columns to the columns that identify a row "
                        '(e.g. key_columns = ["phone"])'
                    )
                    continue
            needed = {"key_columns": key, "input columns": pipeline.input_columns}
            for what, columns in needed.items():
                missing = [c for c in columns if c not in column_types]
                if missing:
                    problems.append(
                        f"pipelines.{index}: {what} {missing} are not columns of "
                        f"{pipeline.table} — fix the names (columns: {', '.join(column_types)})"
                    )
            tables[pipeline.table] = TableInfo(pipeline.table, column_types, tuple(key))
    if problems:
        raise FatalError("; ".join(problems))
    return tables


def _prediction_columns(pipeline: PipelineSpec) -> list[str]:
    if pipeline.sagemaker is not None:
        s = pipeline.sagemaker
        return [
            f"{quote(s.label_column)} VARCHAR(255) NULL",
            f"{quote(s.probability_column)} DOUBLE NULL",
        ]
    assert pipeline.comprehend is not None
    c = pipeline.comprehend
    scores = [f"{quote(c.score_column_prefix + k)} DOUBLE NULL" for k in SCORE_KEYS]
    return [f"{quote(c.sentiment_column)} VARCHAR(16) NULL", *scores]


SCORE_KEYS = ("positive", "negative", "neutral", "mixed")


def prediction_value_columns(pipeline: PipelineSpec) -> tuple[str, ...]:
    if pipeline.sagemaker is not None:
        return (pipeline.sagemaker.label_column, pipeline.sagemaker.probability_column)
    assert pipeline.comprehend is not None
    c = pipeline.comprehend
    return (c.sentiment_column, *(c.score_column_prefix + k for k in SCORE_KEYS))


def schema_statements(spec: ScorerSpec, tables: dict[str, TableInfo]) -> list[str]:
    """Idempotent DDL for the scorer's tables and views."""
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (
  pipeline VARCHAR(64) NOT NULL PRIMARY KEY,
  position VARCHAR(4096) NULL,
  server_identity VARCHAR(255) NOT NULL,
  snapshot_state VARCHAR(16) NOT NULL,
  snapshot_cursor TEXT NULL,
  snapshot_position VARCHAR(4096) NULL,
  updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
        f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  pipeline VARCHAR(64) NOT NULL,
  source_key TEXT NOT NULL,
  source_position VARCHAR(255) NULL,
  reason VARCHAR(64) NOT NULL,
  error TEXT NOT NULL,
  payload MEDIUMTEXT NULL,
  created_at DATETIME(6) NOT NULL,
  KEY (pipeline, created_at)
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
        f"""CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (
  instance VARCHAR(64) NOT NULL PRIMARY KEY,
  beat_at DATETIME(6) NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
    ]
    for pipeline in spec.pipelines:
        table = tables[pipeline.table]
        key_defs = [f"{quote(c)} {table.column_types[c]} NULL" for c in table.key_columns]
        # The key's hash is the primary key: keys of any type/length (VARCHAR(2048)) fit.
        key_index = ", ".join(
            f"{quote(c)}(191)" if _is_text(table.column_types[c]) else quote(c)
            for c in table.key_columns
        )
        statements.append(
            f"""CREATE TABLE IF NOT EXISTS {quote(pipeline.predictions_table)} (
  key_hash BINARY(32) NOT NULL PRIMARY KEY,
  {", ".join(key_defs)},
  {", ".join(_prediction_columns(pipeline))},
  model_endpoint VARCHAR(255) NOT NULL,
  model_variant VARCHAR(255) NULL,
  source_position VARCHAR(255) NULL,
  source_committed_at DATETIME(6) NULL,
  scored_at DATETIME(6) NOT NULL,
  KEY source_key ({key_index})
) ENGINE=InnoDB CHARACTER SET utf8mb4"""
        )
        join = " AND ".join(f"s.{quote(c)} = p.{quote(c)}" for c in table.key_columns)
        extra = ", ".join(f"p.{quote(c)}" for c in prediction_value_columns(pipeline))
        statements.append(
            f"""CREATE OR REPLACE VIEW {quote(pipeline.scored_view)} AS
SELECT s.*, {extra}, p.model_endpoint, p.model_variant, p.scored_at
FROM {quote(pipeline.table)} s LEFT JOIN {quote(pipeline.predictions_table)} p ON {join}"""
        )
    return statements


def _is_text(column_type: str) -> bool:
    return any(t in column_type.lower() for t in ("char", "text", "blob", "binary"))


def init_schema(conn: Connection, spec: ScorerSpec) -> list[str]:
    tables = inspect_tables(conn, spec)
    statements = schema_statements(spec, tables)
    with conn.cursor() as cursor:
        for statement in statements:
            try:
                cursor.execute(statement)
            except pymysql.MySQLError as exc:
                raise map_error(exc, "creating the scorer's tables") from exc
    return statements


def check_schema(conn: Connection, spec: ScorerSpec) -> None:
    """The scorer's own tables exist (``cdc-scorer init`` makes them)."""
    wanted = [*OWN_TABLES, *(p.predictions_table for p in spec.pipelines)]
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s",
            (spec.source.database,),
        )
        present = {str(r[0]) for r in cursor.fetchall()}
    missing = [t for t in wanted if t not in present]
    if missing:
        raise FatalError(
            f"tables {', '.join(missing)} are missing in {spec.source.database}: "
            "run `cdc-scorer init --config FILE` first"
        )
