"""The leader lock: a MySQL named lock per pipeline, held on that pipeline's sink connection.

Holding the lock on the very connection that commits predictions and checkpoints is the fence:
if the connection dies the lock goes with it, and a new connection must win the lock again
before it writes. ``GET_LOCK`` needs no privilege and works on Aurora, RDS and MariaDB.
"""

from __future__ import annotations

import hashlib

from cdc_scorer.mysql.connection import Connection, mysql_errors

_MAX_LOCK_NAME = 64  # MySQL's and MariaDB's limit


def lock_name(database: str, pipeline: str) -> str:
    name = f"cdc_scorer.{database}.{pipeline}"
    if len(name) <= _MAX_LOCK_NAME:
        return name
    return "cdc_scorer." + hashlib.sha256(name.encode()).hexdigest()[:40]


def try_lock(conn: Connection, name: str, timeout_s: float) -> bool:
    """Take the lock, waiting up to ``timeout_s``; False if another session holds it."""
    with mysql_errors(f"taking the leader lock {name}"), conn.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, %s)", (name, timeout_s))
        row = cursor.fetchone()
    return row is not None and row[0] == 1


def release_lock(conn: Connection, name: str) -> None:
    """Let the lock go (a connection other pipelines' locks stay on)."""
    with mysql_errors(f"letting the leader lock {name} go"), conn.cursor() as cursor:
        cursor.execute("SELECT RELEASE_LOCK(%s)", (name,))
        cursor.fetchone()


def lock_holder(conn: Connection, name: str) -> int | None:
    """The connection id holding the lock, or None when free."""
    with mysql_errors(f"asking who holds the leader lock {name}"), conn.cursor() as cursor:
        cursor.execute("SELECT IS_USED_LOCK(%s)", (name,))
        row = cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])
