"""The heartbeat: a tiny transaction every few seconds, so positions move on quiet tables and
lag is measured to the millisecond (binlog event times have one-second resolution)."""

from __future__ import annotations

import asyncio

import structlog

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.spec import SourceSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect, mysql_errors, quote

log = structlog.get_logger("cdc_scorer.stores.mysql.heartbeat")


class MysqlHeartbeat:
    """Writes ``beat_at = NOW(6)`` for ``instance`` until cancelled.

    A lost connection is retried at the next beat; a fatal error (a missing table, a missing
    grant) is raised: the daemon stops with it instead of beating into a wall forever.
    """

    def __init__(self, source: SourceSpec, table: str, instance: str) -> None:
        self._source = source
        self._sql = (
            f"INSERT INTO {quote(table)} (instance, beat_at) VALUES (%s, NOW(6)) "
            "ON DUPLICATE KEY UPDATE beat_at = VALUES(beat_at)"
        )
        self._instance = instance[:64]
        self._conn: Connection | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.to_thread(self._beat)
                except RetriableError as exc:
                    log.warning("heartbeat failed", error=str(exc))
                    self._close()
                await asyncio.sleep(self._source.heartbeat_interval_s)
        finally:
            self._close()

    def _beat(self) -> None:
        if self._conn is None:
            self._conn = connect(self._source)
        with mysql_errors("writing the heartbeat"), self._conn.cursor() as cursor:
            cursor.execute(self._sql, (self._instance,))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)
