"""Connections to PostgreSQL and the mapping of psycopg2 errors to ours (the boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from cdc_scorer.core.errors import CdcScorerError, FatalError, RetriableError
from cdc_scorer.core.spec import SourceSpec
from cdc_scorer.rds_iam import tokens_for

Connection = psycopg2.extensions.connection

# SQLSTATE classes a new attempt can cure: connection exceptions, serialization failures and
# deadlocks, lock timeouts, operator intervention (a shutdown).
_RETRIABLE_CLASSES = ("08", "40", "55P03", "57")
_FIXES = {
    "42501": "grant the missing privilege (deploy/grants-postgresql.sql)",
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
    # A connection the server closed (a restart, a failover): OperationalError at the first
    # use that notices, InterfaceError ("connection already closed") at any later one.
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and not code:
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


def settings(source: SourceSpec) -> dict[str, Any]:
    """libpq's keywords for ``[source]``: TLS by ``[source.tls]`` (libpq's sslmode ladder), the
    password or, with ``auth = "rds-iam"``, a token made now (call it per connection)."""
    tls = source.tls
    password = tokens_for(source).token() if source.auth == "rds-iam" else source.password
    found: dict[str, Any] = {
        "host": source.host,
        "port": source.port,
        "user": source.user,
        "password": password or None,
        "dbname": source.database,
        "connect_timeout": max(1, int(source.connect_timeout_s)),
        "sslmode": _SSLMODES[tls.mode],
        "application_name": "cdc-scorer",
        "client_encoding": "UTF8",
        # Times in UTC in every session of the scorer's, the replication one included: a
        # timestamptz input reads the same from the log and from a SELECT, and the heartbeat's
        # localtimestamp is UTC, as the lag measurement takes it.
        "options": "-c TimeZone=UTC",
    }
    if tls.ca_file:
        found["sslrootcert"] = tls.ca_file
    if tls.cert_file:
        found |= {"sslcert": tls.cert_file, "sslkey": tls.key_file}
    return {k: v for k, v in found.items() if v is not None}


def refused(exc: psycopg2.Error, doing: str) -> CdcScorerError:
    """A connection attempt that failed: what no retry cures (TLS that does not verify, a
    pg_hba.conf rule that refuses it) is one fatal line with the fix; the rest as mapped."""
    message = str(exc).strip().replace("\n", " ")
    if "certificate" in message or "SSL" in message:
        return FatalError(
            f"{doing}: TLS: {message} — check [source.tls] mode and ca_file (for RDS / "
            "Aurora the global bundle), and that source.host is the name the certificate has"
        )
    if "pg_hba.conf" in message:
        fix = (
            "set [source.tls] mode to required or verify-identity (the server accepts TLS "
            "connections only)"
            if "no encryption" in message
            else "the server's pg_hba.conf must allow this user, database and address"
        )
        return FatalError(f"{doing}: {message} — {fix}")
    return map_error(exc, doing)


def connect(source: SourceSpec, *, autocommit: bool = True) -> Connection:
    """A connection to ``[source]``'s database."""
    doing = f"connecting to {source.host}:{source.port}"
    try:
        conn: Connection = psycopg2.connect(**settings(source))
    except psycopg2.Error as exc:
        raise refused(exc, doing) from exc
    conn.autocommit = autocommit
    return conn


def connect_replication(source: SourceSpec) -> psycopg2.extras.LogicalReplicationConnection:
    """A logical replication connection (``replication=database``) to ``[source]``'s
    database: the walsender that streams pgoutput (IAM tokens work for it on Aurora with
    ``rds.iam_auth_for_replication = 1``)."""
    doing = f"opening a replication connection to {source.host}:{source.port}"
    try:
        conn: psycopg2.extras.LogicalReplicationConnection = psycopg2.connect(
            **settings(source), connection_factory=psycopg2.extras.LogicalReplicationConnection
        )
    except psycopg2.Error as exc:
        raise refused(exc, doing) from exc
    return conn


def close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
