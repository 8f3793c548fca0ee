"""Checkpoints: what each pipeline has durably applied, and where the stream resumes.

The one home of the checkpoint table: its DDL, its statements, loading and saving, the checks
that a stored position can still be read on this server, the position "now", and where a
shared reader must start. The sink writes a checkpoint row with every batch (one transaction
with the predictions it covers) through :func:`checkpoint_row` and :data:`CHECKPOINT_UPSERT`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.positions import (
    FilePosition,
    MariadbGtidPosition,
    MysqlGtidSetPosition,
    Position,
    decode_position,
    oldest_position,
)
from cdc_scorer.core.records import Checkpoint, RescoreJob, Rescores
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT, decode_rescores, encode_rescores, now_iso
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.mysql.connection import Connection, mysql_errors
from cdc_scorer.sources.binlog.server import ServerInfo, binlog_status_sql

CHECKPOINT_TABLE = "cdc_scorer_checkpoint"
START_OVER = f"delete the pipeline rows in {CHECKPOINT_TABLE} to start over with a snapshot"

CHECKPOINT_DDL = f"""CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (
  pipeline VARCHAR(64) NOT NULL PRIMARY KEY,
  position VARCHAR(4096) NULL,
  server_identity VARCHAR(255) NOT NULL,
  snapshot_state VARCHAR(16) NOT NULL,
  snapshot_cursor TEXT NULL,
  snapshot_position VARCHAR(4096) NULL,
  updated_at DATETIME(6) NOT NULL,
  stopped_reason TEXT NULL,
  rescore MEDIUMTEXT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4"""
# snapshot_cursor and snapshot_position belong to the snapshot before re-scores were
# incremental: read once from a row an older version left (it becomes a re-score job), then
# written NULL.

CHECKPOINT_UPSERT = f"""INSERT INTO {CHECKPOINT_TABLE}
 (pipeline, position, server_identity, snapshot_state, rescore, snapshot_cursor,
  snapshot_position, updated_at)
 VALUES (%s, %s, %s, %s, %s, NULL, NULL, NOW(6))
 ON DUPLICATE KEY UPDATE position=VALUES(position), server_identity=VALUES(server_identity),
 snapshot_state=VALUES(snapshot_state), rescore=VALUES(rescore), snapshot_cursor=NULL,
 snapshot_position=NULL, updated_at=VALUES(updated_at)"""


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as the table holds it."""

    checkpoint: Checkpoint
    server_identity: str
    updated_at: datetime | None
    stopped_reason: str | None = None  # why the pipeline stopped, until it runs again


def checkpoint_row(name: str, checkpoint: Checkpoint, identity: str) -> tuple[Any, ...]:
    """The values of :data:`CHECKPOINT_UPSERT` (also what a fenced sink compares)."""
    return (
        name,
        checkpoint.position.encode() if checkpoint.position else None,
        identity,
        checkpoint.snapshot_state,
        encode_rescores(checkpoint.rescores),
    )


def load_checkpoints(conn: Connection, names: Sequence[str]) -> dict[str, StoredCheckpoint]:
    """Checkpoints by pipeline name (pipelines without one are absent)."""
    if not names:
        return {}
    with mysql_errors("reading checkpoints"), conn.cursor() as cursor:
        cursor.execute(
            f"SELECT pipeline, position, server_identity, snapshot_state, snapshot_cursor, "
            f"snapshot_position, updated_at, stopped_reason, rescore FROM {CHECKPOINT_TABLE} "
            f"WHERE pipeline IN "
            f"({','.join(['%s'] * len(names))})",
            list(names),
        )
        rows = cursor.fetchall()
    found: dict[str, StoredCheckpoint] = {}
    for row in rows:
        name, position, identity, state, snap_cursor, snap_position, updated_at, stop, rescore = row
        rescores = decode_rescores(rescore)
        if position is None and snap_position:
            # A snapshot begun by a version whose snapshot ran before streaming: it goes on as
            # an incremental one, and the stream resumes where that snapshot began.
            position = snap_position
            if state == "running" and rescores.running is None:
                rescores = replace(
                    rescores,
                    running=RescoreJob(
                        id="snapshot",
                        reason=FIRST_SNAPSHOT,
                        model_version=None,
                        cursor=tuple(json.loads(snap_cursor)) if snap_cursor else None,
                    ),
                )
        checkpoint = Checkpoint(
            position=decode_position(identity, position) if position else None,
            snapshot_state=str(state),
            rescores=rescores,
        )
        found[str(name)] = StoredCheckpoint(
            checkpoint, str(identity), updated_at, None if stop is None else str(stop)
        )
    return found


def record_stop(conn: Connection, name: str, reason: str | None) -> None:
    """Why a pipeline stopped, for `cdc-scorer status` (cleared when it starts again)."""
    with mysql_errors(f"recording that {name} stopped"), conn.cursor() as cursor:
        cursor.execute(
            f"UPDATE {CHECKPOINT_TABLE} SET stopped_reason=%s WHERE pipeline=%s", (reason, name)
        )


def save_checkpoint(conn: Connection, name: str, checkpoint: Checkpoint, identity: str) -> None:
    with mysql_errors(f"saving the checkpoint of {name}"), conn.cursor() as cursor:
        cursor.execute(CHECKPOINT_UPSERT, checkpoint_row(name, checkpoint, identity))


# ---------------------------------------------------------------- the server's position now
def _mariadb_now(conn: Connection, server: ServerInfo) -> Position:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        (state,) = cursor.fetchone() or ("",)
    return MariadbGtidPosition.parse(server.identity, str(state or ""))


def _mysql_gtid_now(conn: Connection, server: ServerInfo) -> Position:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_executed")
        (executed,) = cursor.fetchone() or ("",)
    return MysqlGtidSetPosition.parse(server.identity, str(executed or ""))


def _file_now(conn: Connection, server: ServerInfo) -> Position:
    statement = binlog_status_sql(server)
    with conn.cursor() as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
    if row is None:
        raise FatalError(f"{statement} returned nothing: is the binary log on?")
    return FilePosition(server.identity, str(row[0]), int(row[1]))


_NOW: dict[str, Callable[[Connection, ServerInfo], Position]] = {
    MariadbGtidPosition.kind: _mariadb_now,
    MysqlGtidSetPosition.kind: _mysql_gtid_now,
    FilePosition.kind: _file_now,
}


def current_position(conn: Connection, server: ServerInfo) -> Position:
    """The binlog position now (a transaction boundary), of the kind this run keeps."""
    with mysql_errors("reading the binlog position"):
        return _NOW[server.positions](conn, server)


# ---------------------------------------------------------------- can a checkpoint be resumed?
def _check_mariadb(conn: Connection, server: ServerInfo, position: Position) -> None:
    assert isinstance(position, MariadbGtidPosition)
    if not position.gtids:
        return
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_state")
        (state,) = cursor.fetchone() or ("",)
    server_state = MariadbGtidPosition.parse(server.identity, str(state or ""))
    for gtid in position.gtids:
        if not server_state.includes(gtid):
            raise FatalError(
                f"checkpoint GTID {gtid} is not in this server's binlog state "
                f"({state or 'empty'}): the binlog was reset or this is another server — "
                f"{START_OVER}"
            )


def _check_mysql_gtid(conn: Connection, server: ServerInfo, position: Position) -> None:
    """MySQL: the checkpoint's GTIDs were executed here and what follows is not purged."""
    checkpoint = position.value()
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
            f"binlog was reset or this is another server — {START_OVER}"
        )
    if purged_after:
        raise FatalError(
            f"transactions after checkpoint GTID set {checkpoint} were purged ({purged_after}): "
            f"raise the binlog retention, and {START_OVER}"
        )


def _check_file(conn: Connection, server: ServerInfo, position: Position) -> None:
    assert isinstance(position, FilePosition)
    with conn.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        files = {str(row[0]): int(row[1]) for row in cursor.fetchall()}
    size = files.get(position.log_file)
    if size is None:
        raise FatalError(
            f"checkpoint binlog file {position.log_file} is no longer on the server (purged; "
            f"it has {', '.join(sorted(files)) or 'none'}): raise the binlog retention, and "
            f"{START_OVER}"
        )
    if position.log_pos > size:
        raise FatalError(
            f"checkpoint {position.log_file}:{position.log_pos} is past the end of that file "
            f"({size} bytes): the binlog was reset or this is another server — {START_OVER}"
        )


_RESUMABLE: dict[str, Callable[[Connection, ServerInfo, Position], None]] = {
    MariadbGtidPosition.kind: _check_mariadb,
    MysqlGtidSetPosition.kind: _check_mysql_gtid,
    FilePosition.kind: _check_file,
}


def check_resumable(conn: Connection, server: ServerInfo, position: Position) -> None:
    """Refuse a checkpoint of another server, of another kind, or one no longer on the server."""
    if position.server_identity != server.identity:
        raise FatalError(
            f"checkpoint belongs to {position.server_identity}, but this server is "
            f"{server.identity}: point [source] at the original server, or {START_OVER}"
        )
    if position.kind != server.positions:
        raise FatalError(
            f"checkpoint position {position} is kept by {position.kind}, but source.positions "
            f"makes this run keep them by {server.positions}: set source.positions back, or "
            f"{START_OVER}"
        )
    with mysql_errors("checking the checkpoint's position"):
        _RESUMABLE[position.kind](conn, server, position)


# ---------------------------------------------------------------- start-up
def prepare_checkpoints(
    conn: Connection, server: ServerInfo, pipelines: Sequence[PipelineSpec]
) -> dict[str, Checkpoint]:
    """Each pipeline's checkpoint: the stored one, checked resumable, or a new one streaming
    from now (with its first snapshot to run, unless ``snapshot = "never"``) where none is
    stored. Call it holding the pipelines' locks: nobody else writes them then."""
    saved = load_checkpoints(conn, [p.name for p in pipelines])
    for name in (n for n, s in saved.items() if s.stopped_reason is not None):
        record_stop(conn, name, None)  # it runs again
    now = current_position(conn, server)
    checkpoints: dict[str, Checkpoint] = {}
    for pipeline in pipelines:
        stored = saved.get(pipeline.name)
        if stored is not None and stored.checkpoint.position is not None:
            checkpoint = stored.checkpoint
            check_resumable(conn, server, stored.checkpoint.position)
        elif pipeline.snapshot == "initial":
            first = RescoreJob(
                id=uuid.uuid4().hex,
                reason=FIRST_SNAPSHOT,
                model_version=pipeline.model_version,
                requested_at=now_iso(),
            )
            checkpoint = Checkpoint(now, snapshot_state="running", rescores=Rescores(first))
            save_checkpoint(conn, pipeline.name, checkpoint, server.identity)
        else:
            checkpoint = Checkpoint(position=now, snapshot_state="skipped")
            save_checkpoint(conn, pipeline.name, checkpoint, server.identity)
        checkpoints[pipeline.name] = checkpoint
    return checkpoints


def stream_start(checkpoints: Sequence[Checkpoint]) -> Position:
    """The oldest position any pipeline still needs (each has one after
    :func:`prepare_checkpoints`)."""
    return oldest_position([c.position for c in checkpoints if c.position is not None])
