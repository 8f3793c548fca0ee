"""The MySQL heartbeat row (the loop around it: ``stores/heartbeat.py``)."""

from __future__ import annotations

from cdc_scorer.core.spec import SourceSpec
from cdc_scorer.mysql.connection import Connection, close_quietly, connect, mysql_errors, quote
from cdc_scorer.stores.heartbeat import HeartbeatWriter


class MysqlHeartbeat(HeartbeatWriter):
    """Writes ``beat_at = NOW(6)`` for ``instance`` until cancelled."""

    def __init__(self, source: SourceSpec, table: str, instance: str, interval_s: float) -> None:
        super().__init__(instance, interval_s)
        self._source = source
        self._sql = (
            f"INSERT INTO {quote(table)} (instance, beat_at) VALUES (%s, NOW(6)) "
            "ON DUPLICATE KEY UPDATE beat_at = VALUES(beat_at)"
        )
        self._conn: Connection | None = None

    def _beat(self) -> None:
        if self._conn is None:
            self._conn = connect(self._source)
        with mysql_errors("writing the heartbeat"), self._conn.cursor() as cursor:
            cursor.execute(self._sql, (self._instance,))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)
