"""The parse-only ceiling: read a stretch of binlog into ``RowChange``s and nothing else.

The same reader settings as the daemon (one connection, only the churn table), bounded by
positions (MariaDB GTIDs or MySQL GTID sets) so inserts and updates are timed apart. Each
decoder the project has is timed on the same binlog in the same run, on each server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import GtidEvent, HeartbeatLogEvent, MariadbGtidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc_scorer.core.positions import Position, TxId
from cdc_scorer.local.churn_data import FEATURE_COLUMNS
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.sources.binlog.decoder import FastRowsDecoder
from cdc_scorer.sources.binlog.events import row_changes
from cdc_scorer.sources.binlog.positions import BinlogPosition, Gtid, MysqlGtid


@dataclass(frozen=True)
class DecodeResult:
    decoder: str
    operation: str
    rows: int
    wall_s: float
    cpu_s: float
    server: str = "MariaDB"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def _binlog(position: Position) -> BinlogPosition:
    assert isinstance(position, BinlogPosition)
    return position


def read_range(
    server: DatabaseServer,
    database: str,
    start: Position,
    stop: Position,
    decoder: str,
    operation: str,
) -> DecodeResult:
    """Decode the churn rows events after ``start`` up to and including ``stop``."""
    stream = BinLogStreamReader(
        connection_settings={
            "host": server.host,
            "port": server.port,
            "user": "root",
            "password": "",
        },
        server_id=987_654,
        # Non-blocking MariaDB streams end in a reconnect loop at the end of the binlog: block,
        # and stop at the first transaction past ``stop``.
        blocking=True,
        slave_heartbeat=0.5,
        **_binlog(start).reader_start(),
        freeze_schema=True,  # as the daemon reads
        only_schemas=[database],
        only_tables=["churn"],
        only_events=[
            MariadbGtidEvent,
            GtidEvent,
            HeartbeatLogEvent,
            WriteRowsEvent,
            UpdateRowsEvent,
            DeleteRowsEvent,
        ],
    )
    rows = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    wall, cpu = wall0, cpu0  # as of the last rows event: the heartbeat wait is not counted
    try:
        for event in stream:
            if isinstance(event, HeartbeatLogEvent):
                if rows:  # MySQL sends one at once when auto-positioning skips
                    break
                continue
            if isinstance(event, MariadbGtidEvent | GtidEvent):
                if not stop.includes(_tx(event)):
                    break
                continue
            rows += len(_decode(event, decoder))
            wall, cpu = time.perf_counter(), time.process_time()
    finally:
        stream.close()
    label = "MariaDB" if server.flavor == "mariadb" else "MySQL"
    return DecodeResult(decoder, operation, rows, wall - wall0, cpu - cpu0, label)


def _tx(event: Any) -> TxId:
    if isinstance(event, MariadbGtidEvent):
        return Gtid(event.domain_id, event.server_id, event.gtid_seq_no)
    uuid, _, seq = str(event.gtid).rpartition(":")
    return MysqlGtid(uuid.lower(), int(seq))


def _decode(event: Any, decoder: str) -> list[Any]:
    if decoder == "stock":
        return row_changes(event, ("phone",), None)
    if decoder == "fast":
        return row_changes(event, ("phone",), None, _FAST)
    raise ValueError(f"unknown decoder {decoder!r}")


# What the daemon's churn pipeline reads: the key and the model's features.
_FAST = FastRowsDecoder({"churn": frozenset({"phone", *FEATURE_COLUMNS})})
DECODERS = ("stock", "fast")
