"""Connections to the source database and the mapping of pymysql errors to ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import pymysql
import pymysql.cursors

from cdc_scorer.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.spec import SourceSpec

if TYPE_CHECKING:
    Connection: TypeAlias = pymysql.connections.Connection[pymysql.cursors.Cursor]
else:
    Connection = pymysql.connections.Connection

# Client/server codes that a new attempt can cure.
RETRIABLE_CODES = {
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    2002,
    2003,  # cannot connect
    2006,
    2013,  # gone away / lost during query
    2014,
    2027,
    2055,
}
FIXES = {
    1044: "grant the scorer's user access to the database",
    1045: "check [source] user and CDC_SCORER_SOURCE__PASSWORD",
    1049: "create the database or fix [source] database",
    1142: "grant the missing privilege (README: Grants)",
    1146: "create the table, or run `cdc-scorer init` for the scorer's own tables",
    1227: "grant REPLICATION SLAVE and BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL)",
    1236: "the position is no longer on the server (purged, or another server): raise binlog "
    "retention, and start the pipeline over from a snapshot by deleting its checkpoint row "
    "(README: Server flavours and positions)",
}


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a pymysql exception (None when it has none)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def map_error(exc: BaseException, doing: str) -> CdcScorerError:
    """Our error for a pymysql exception raised while ``doing`` something."""
    code = error_code(exc)
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    if isinstance(exc, pymysql.err.InterfaceError) or code in RETRIABLE_CODES:
        return RetriableError(f"{doing}: MySQL error {code}: {message}", code=f"mysql_{code}")
    fix = FIXES.get(code or 0)
    return FatalError(f"{doing}: MySQL error {code}: {message}" + (f" — {fix}" if fix else ""))


@contextmanager
def mysql_errors(doing: str) -> Iterator[None]:
    """The pymysql boundary: any ``pymysql.MySQLError`` inside leaves as ours (``map_error``)."""
    try:
        yield
    except pymysql.MySQLError as exc:
        raise map_error(exc, doing) from exc


def connect(source: SourceSpec, *, database: bool = True, **extra: Any) -> Connection:
    with mysql_errors(f"connecting to {source.host}:{source.port}"):
        return pymysql.connect(
            host=source.host,
            port=source.port,
            user=source.user,
            password=source.password,
            database=source.database if database else None,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=int(source.connect_timeout_s),
            **extra,
        )


def close_quietly(conn: Connection | None) -> None:
    """Close a connection that may be broken already (nothing to report then)."""
    if conn is not None:
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()


def quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"
