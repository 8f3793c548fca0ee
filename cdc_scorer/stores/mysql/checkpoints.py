"""The checkpoint table in MySQL: its DDL, its statements, loading and saving. The sink
writes a checkpoint row with every batch (one transaction with the predictions it covers)
through :func:`checkpoint_row` and :data:`CHECKPOINT_UPSERT`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from cdc_scorer.core.own_tables import CHECKPOINT_TABLE
from cdc_scorer.core.records import Checkpoint, RescoreJob
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT, decode_rescores
from cdc_scorer.mysql.connection import Connection, mysql_errors
from cdc_scorer.stores import PositionDecoder, StoredCheckpoint
from cdc_scorer.stores.fenced import checkpoint_row

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


def load_checkpoints(
    conn: Connection, names: Sequence[str], decode: PositionDecoder
) -> dict[str, StoredCheckpoint]:
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
            position=decode(str(identity), str(position)) if position else None,
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
