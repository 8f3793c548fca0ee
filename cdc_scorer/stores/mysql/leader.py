"""The leader lock: a MySQL named lock per pipeline, held on that pipeline's sink connection.

Holding the lock on the very connection that commits predictions and checkpoints is the fence:
if the connection dies the lock goes with it, and a new connection must win the lock again
before it writes. ``GET_LOCK`` needs no privilege and works on Aurora, RDS and MariaDB.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Protocol

import structlog

from cdc_scorer.mysql.connection import Connection, mysql_errors

log = structlog.get_logger("cdc_scorer.stores.mysql.leader")

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


def lock_holder(conn: Connection, name: str) -> int | None:
    """The connection id holding the lock, or None when free."""
    with mysql_errors(f"asking who holds the leader lock {name}"), conn.cursor() as cursor:
        cursor.execute("SELECT IS_USED_LOCK(%s)", (name,))
        row = cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


class Contender(Protocol):
    """Something that holds a leader lock on its own connection (the pipeline's sink)."""

    lock: str

    def try_lead(self, wait_s: float) -> bool: ...


async def lead(
    contenders: Sequence[Contender], stopping: asyncio.Event, poll_s: float = 1.0
) -> bool:
    """Take every lock, in lock-name order (two instances cannot deadlock), each re-asked every
    ``poll_s``: a standby waits here until the leader dies or stops. False if ``stopping`` is
    set first."""
    waiting_logged = False
    for contender in sorted(contenders, key=lambda c: c.lock):
        while not await asyncio.to_thread(contender.try_lead, poll_s):
            if stopping.is_set():
                return False
            if not waiting_logged:
                log.info("standby: another instance holds the leader lock", lock=contender.lock)
                waiting_logged = True
        if stopping.is_set():
            return False
    log.info("leader", locks=sorted(c.lock for c in contenders))
    return True
