"""The signal table in MySQL: its DDL, and the rows the scorer and `rescore` insert into it
(what they mean to the stream: ``core/own_tables.py``)."""

from __future__ import annotations

import json
from typing import Any

from cdc_scorer.core.own_tables import SIGNAL_TABLE
from cdc_scorer.mysql.connection import Connection, mysql_errors

SIGNAL_DDL = f"""CREATE TABLE IF NOT EXISTS {SIGNAL_TABLE} (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  pipeline VARCHAR(64) NOT NULL,
  kind VARCHAR(32) NOT NULL,
  data TEXT NULL,
  created_at DATETIME(6) NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4"""


def insert_signal(conn: Connection, signal_id: str, pipeline: str, kind: str, data: Any) -> None:
    """One signal row, committed (the stream sees it in the binlog)."""
    with mysql_errors(f"writing to {SIGNAL_TABLE}"), conn.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {SIGNAL_TABLE} (id, pipeline, kind, data, created_at) "
            "VALUES (%s, %s, %s, %s, NOW(6))",
            (signal_id, pipeline, kind, json.dumps(data)),
        )
    conn.commit()


def forget_signals(conn: Connection, signal_ids: list[str]) -> None:
    """Delete signal rows that were read (the router reads inserts only)."""
    with mysql_errors(f"deleting used rows of {SIGNAL_TABLE}"), conn.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {SIGNAL_TABLE} WHERE id IN ({', '.join(['%s'] * len(signal_ids))})",
            signal_ids,
        )
    conn.commit()
