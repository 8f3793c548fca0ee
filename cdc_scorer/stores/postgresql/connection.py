"""Connections to PostgreSQL and the mapping of psycopg2 errors to ours (the boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

from cdc_scorer.core.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.core.spec import SourceSpec

Connection = psycopg2.extensions.connection

# SQLSTATE classes a new attempt can cure: connection exceptions, serialization failures and
# deadlocks, lock timeouts, operator intervention (a shutdown).
_RETRIABLE_CLASSES = ("08", "40", "55P03", "57")
_FIXES = {
    "42501": "grant the missing privilege (README: PostgreSQL grants)",
    "42P01": "create the table, or run `cdc-scorer init` for the scorer's own tables",
    "3D000": "create the database or fix [source] database",
    "28P01": "check [source] user and CDC_SCORER_SOURCE__PASSWORD",
}
_SSLMODES = {
    "disabled": "disable",
    "preferred": "prefer",
    "required": "require",
    "verify-ca": "verify-ca",
    "verify-identity": "verify-full",
}


def map_error(exc: BaseException, doing: str) -> CdcScorerError:
    code = str(getattr(exc, "pgcode", "") or "")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg2.OperationalError) and not code:
        return RetriableError(f"{doing}: {message}", code="postgres_connection")
    if any(code.startswith(c) for c in _RETRIABLE_CLASSES):
        return RetriableError(f"{doing}: PostgreSQL {code}: {message}", code=f"postgres_{code}")
    fix = _FIXES.get(code)
    return FatalError(
        f"{doing}: PostgreSQL {code or '-'}: {message}" + (f" — {fix}" if fix else "")
    )


@contextmanager
def pg_errors(doing: str) -> Iterator[None]:
    """The psycopg2 boundary: any ``psycopg2.Error`` inside leaves as ours."""
    try:
        yield
    except psycopg2.Error as exc:
        raise map_error(exc, doing) from exc


def connect(source: SourceSpec, *, autocommit: bool = True) -> Connection:
    """A connection to ``[source]``'s database, TLS by ``[source.tls]`` (libpq's sslmode)."""
    tls = source.tls
    settings: dict[str, Any] = {
        "host": source.host,
        "port": source.port,
        "user": source.user,
        "password": source.password or None,
        "dbname": source.database,
        "connect_timeout": int(source.connect_timeout_s),
        "sslmode": _SSLMODES[tls.mode],
        "application_name": "cdc-scorer",
    }
    if tls.ca_file:
        settings["sslrootcert"] = tls.ca_file
    if tls.cert_file:
        settings |= {"sslcert": tls.cert_file, "sslkey": tls.key_file}
    with pg_errors(f"connecting to {source.host}:{source.port}"):
        conn: Connection = psycopg2.connect(**{k: v for k, v in settings.items() if v is not None})
    conn.autocommit = autocommit
    return conn


def close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
