"""Connections to the source database and the mapping of pymysql errors to ours."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import pymysql
import pymysql.cursors

from cdc_scorer.core.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.core.spec import SourceSpec, TlsSpec
from cdc_scorer.rds_iam import tokens_for

if TYPE_CHECKING:
    Connection: TypeAlias = pymysql.connections.Connection[pymysql.cursors.Cursor]
else:
    Connection = pymysql.connections.Connection

_TLS_FIX = (
    "check [source.tls]: ca_file must hold the CA that signed the server's certificate (RDS: "
    "the global bundle), and verify-identity needs [source] host to be a name in that "
    "certificate"
)
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
    1045: "check [source] user and CDC_SCORER_SOURCE__PASSWORD (MariaDB refuses a plaintext "
    "connection this way when it requires TLS, require_secure_transport=ON: then set "
    "[source.tls] mode to required, verify-ca or verify-identity)",
    1049: "create the database or fix [source] database",
    1142: "grant the missing privilege (deploy/grants.sql)",
    1146: "create the table, or run `cdc-scorer init` for the scorer's own tables",
    1227: "grant REPLICATION SLAVE and BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL)",
    3159: "the server requires TLS (require_secure_transport=ON): set [source.tls] mode to "
    "required, verify-ca or verify-identity",
    1236: "the position is no longer on the server (purged, or another server): raise binlog "
    'retention, and set source.binlog.on_lost_position = "rescore" or run `cdc-scorer '
    "reposition --config FILE --pipeline NAME --now --rescore` (docs/how-to/failover.md)",
}


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a pymysql exception (None when it has none)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def map_error(exc: BaseException, doing: str) -> CdcScorerError:
    """Our error for a pymysql exception raised while ``doing`` something."""
    code = error_code(exc)
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    if isinstance(getattr(exc, "original_exception", None), ssl.SSLError) or code == 2026:
        # A certificate that does not verify, or TLS the server cannot do, is not cured by
        # trying again (pymysql reports the first as error 2003, "can't connect").
        return FatalError(f"{doing}: TLS: {message} — {_TLS_FIX}")
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


def tls_settings(tls: TlsSpec) -> dict[str, Any]:
    """pymysql's TLS arguments for a ``[source.tls]`` mode (one place: every connection, the
    binlog stream's included, gets the same)."""
    if tls.mode == "disabled":
        return {"ssl_disabled": True}
    if tls.mode == "preferred":
        return {}  # pymysql's default: TLS when the server offers it, unverified
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.check_hostname = tls.mode == "verify-identity"
    context.verify_mode = ssl.CERT_NONE if tls.mode == "required" else ssl.CERT_REQUIRED
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return {"ssl": context}  # a context makes TLS required: no plaintext fallback


def connection_settings(source: SourceSpec) -> dict[str, Any]:
    """What every connection to the source is opened with (``pymysql.connect`` arguments).
    With RDS IAM authentication the password is a token made now: call this per connection
    (or open connections through :func:`opener`)."""
    try:
        tls = tls_settings(source.tls)
    except (OSError, ssl.SSLError) as exc:
        raise FatalError(
            f"TLS: cannot load the certificates of [source.tls] ({exc}) — fix ca_file, "
            "cert_file or key_file"
        ) from exc
    return {
        "host": source.host,
        "port": source.port,
        "user": source.user,
        "password": tokens_for(source).token() if source.auth == "rds-iam" else source.password,
        "connect_timeout": int(source.connect_timeout_s),
        **tls,
    }


def opener(source: SourceSpec) -> Callable[..., Connection]:
    """``pymysql.connect`` for a library that opens (and reopens) connections itself with the
    same settings — the binlog reader: each connection gets a fresh IAM token."""
    if source.auth != "rds-iam":
        return pymysql.connect

    def connect_with_token(**settings: Any) -> Connection:
        return pymysql.connect(**{**settings, "password": tokens_for(source).token()})

    return connect_with_token


def connect(source: SourceSpec, *, database: bool = True, **extra: Any) -> Connection:
    with mysql_errors(f"connecting to {source.host}:{source.port}"):
        return pymysql.connect(
            **connection_settings(source),
            database=source.database if database else None,
            charset="utf8mb4",
            autocommit=True,
            **extra,
        )


def tls_state(conn: Connection) -> str:
    """The TLS of a connection as the server sees it: protocol and cipher, or plaintext."""
    with mysql_errors("reading the session's TLS state"), conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        status = {str(k).lower(): str(v) for k, v in cursor.fetchall()}
    if not status.get("ssl_cipher"):
        return "plaintext"
    return f"{status.get('ssl_version', 'TLS')} {status['ssl_cipher']}"


def close_quietly(conn: Connection | None) -> None:
    """Close a connection that may be broken already (nothing to report then)."""
    if conn is not None:
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()


def quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def version_tuple(version: str) -> tuple[int, ...]:
    """``8.0.35-log`` → (8, 0, 35); Aurora's ``8.0.mysql_aurora.3.05.2`` → (8, 0)."""
    numbers = []
    for part in version.split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)
