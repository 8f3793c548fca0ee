"""The binlog stream: BinLogStreamReader in a dedicated thread feeding a bounded asyncio queue.

Rows events are decoded in the reader thread and handed over whole, a transaction at a time
(per-row handover costs ~20 %, docs/architecture.md; a hand-over that waited for the event loop on
every event held the reader to ~2k rows/s). Positions are emitted only at transaction
boundaries (XID / COMMIT / DDL); the reader reconnects itself from the last boundary it saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import RotateEvent

from cdc_scorer.core.errors import RetriableError
from cdc_scorer.core.retry import backoff_s
from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.mysql.connection import Connection, connection_settings, mysql_errors, opener
from cdc_scorer.sources import Capture, StreamHooks
from cdc_scorer.sources.binlog.decoder import FastRowsDecoder
from cdc_scorer.sources.binlog.events import READ_EVENTS, TransactionReader
from cdc_scorer.sources.binlog.positions import BinlogPosition
from cdc_scorer.sources.binlog.spec import binlog_spec
from cdc_scorer.sources.handover import ThreadedStream

log = structlog.get_logger("cdc_scorer.source")

_STOP_POLL_S = 0.5  # the heartbeat of the binlog connection: how soon a stop is seen


class BinlogStream(ThreadedStream):
    """Reads from ``start`` and hands tuples of items over to :meth:`changes` until stopped
    (the ``ChangeStream`` of the binlog source)."""

    def __init__(
        self,
        source: SourceSpec,
        capture: Capture,
        start: BinlogPosition,
        *,
        retry: RetrySpec,
        hooks: StreamHooks | None = None,
        verify: Callable[[BinlogPosition], None] | None = None,
    ) -> None:
        log_spec = binlog_spec(source)
        super().__init__(log_spec.queue_max_rows, "binlog-reader")
        hooks = hooks or StreamHooks()
        self._source = source
        self._capture = capture
        self._retry = retry
        decoder = FastRowsDecoder(capture.read_columns) if log_spec.decoder == "fast" else None
        self._events = TransactionReader(
            source.database,
            capture.key_columns,
            capture.read_columns,
            start,
            decoder,
            self._put,
            self._flush,
            hooks.on_rows,
        )
        self._on_disconnect = hooks.on_disconnect
        self._on_connect = hooks.on_connect
        # Before every reconnect: the server the name reaches now must have our position (a
        # failover may have moved the name to another server).
        self._verify = verify

    @property
    def _position(self) -> BinlogPosition:
        """The last commit read: where a new connection starts."""
        return self._events.position

    # ------------------------------------------------------------------ reader thread
    def _stream(self) -> BinLogStreamReader:
        return BinLogStreamReader(
            # The same settings, TLS included, as every other connection of the scorer.
            connection_settings=connection_settings(self._source),
            pymysql_wrapper=_one_binlog_connection(opener(self._source)),
            server_id=binlog_spec(self._source).server_id,
            blocking=True,
            resume_stream=True,
            **self._position.reader_start(),
            # A table map repeats before every statement; parse each table id once (the
            # library clears its table map at each rotation, where a restarted server may reuse
            # ids; _read clears it at every rotate event too).
            freeze_schema=True,
            # only_tables matches bare names: without only_schemas, any database's table.
            only_schemas=[self._source.database],
            only_tables=list(self._capture.key_columns),
            only_events=list(READ_EVENTS),
            filter_non_implemented_events=False,
            # A heartbeat every 0.5 s lets the loop notice the stop flag (close() would hang).
            slave_heartbeat=_STOP_POLL_S,
        )

    def _read_forever(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            stream: BinLogStreamReader | None = None
            try:
                if not first and self._verify is not None:
                    # PositionLost: one line, the process stops; a server still away: retried.
                    self._verify(self._position)
                    log.info(
                        "binlog position checked before reconnecting",
                        position=str(self._position),
                    )
                first = False
                stream = self._stream()
                with mysql_errors(f"binlog position {self._position} cannot be read"):
                    self._read(stream)
                attempt = 0 if self._stop.is_set() else attempt
            except RetriableError as exc:
                # The reconnect replays the transaction that was being read: drop its start.
                self._dropped()
                if self._on_disconnect is not None:
                    self._on_disconnect()
                delay = backoff_s(self._retry, attempt)
                log.warning(
                    "binlog disconnected",
                    code=exc.code,
                    retry_in_s=round(delay, 2),
                    position=str(self._position),
                )
                attempt += 1
                self._stop.wait(delay)
            finally:
                if stream is not None:
                    stream.close()

    def _read(self, stream: BinLogStreamReader) -> None:
        events = self._events
        events.begin(stream)
        connected = False
        # A stop lets the current transaction finish: a clean stop then commits a checkpoint
        # that covers every row it scored.
        while not self._abort.is_set() and not (self._stop.is_set() and events.tx is None):
            event = stream.fetchone()
            if event is None:  # the server closed the stream (shutdown): reconnect
                raise RetriableError("binlog stream ended", code="stream_ended")
            if not connected:
                connected = True
                if self._on_connect is not None:
                    self._on_connect()
            packet = event.packet
            events.handle(stream, event, packet.log_pos - packet.event_size, packet.log_pos)
        self._flush()


def _one_binlog_connection(connect: Callable[..., Connection]) -> Callable[..., Connection]:
    """The library's connect function, refusing the library's own reconnects of the binlog
    connection: it reconnects by itself at the position it last read, to whatever server the
    host name reaches then (after a failover, another one). Refused, the reconnect goes
    through :meth:`BinlogStream._read_forever`, which checks the position first. (The control
    connection names ``information_schema``; the binlog connection names no database.)"""
    opened = 0

    def connect_once(**settings: Any) -> Connection:
        nonlocal opened
        if settings.get("db") is None and settings.get("database") is None:
            opened += 1
            if opened > 1:
                raise RetriableError("the binlog connection was lost", code="binlog_reconnect")
        connection: Connection = connect(**settings)
        return connection

    return connect_once


def probe_replication(source: SourceSpec, start: BinlogPosition) -> None:
    """Open a binlog stream at ``start`` and read what is there (proves the replication grant)."""
    stream = BinLogStreamReader(
        connection_settings=connection_settings(source),
        pymysql_wrapper=opener(source),
        server_id=binlog_spec(source).server_id,
        blocking=False,
        resume_stream=True,
        only_events=[RotateEvent],
        **start.reader_start(),
    )
    try:
        with mysql_errors("reading the binlog"):
            while stream.fetchone() is not None:
                pass
    finally:
        stream.close()
