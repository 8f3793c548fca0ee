"""A database of the tests' own on the shared private PostgreSQL, the blog's tables in it,
and the scorer's config for it."""

from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2.extras

from cdc_scorer.config import load_config
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL_POSTGRES,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL_POSTGRES,
)
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.sources.pgoutput.protocol import parse_lsn

# The blog's public sample, beside the repository (tests may use it; the product never does).
SHARED_CHURN_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "churn.csv"


class PgDatabase:
    """A database of its own on the shared private PostgreSQL, with the blog's tables."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.name = f"t_{uuid.uuid4().hex[:10]}"
        self.slot = f"cdc_scorer_{self.name}"  # slots are the cluster's: one per test
        admin = server.connect()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {self.name}")
        admin.close()
        self.conn = server.connect(self.name)
        self.execute(CHURN_TABLE_DDL_POSTGRES)
        self.execute(FEEDBACK_TABLE_DDL_POSTGRES)

    def reconnect(self) -> None:
        """A new connection (after a restart of the server)."""
        self.conn = self.server.connect(self.name)

    def execute(self, sql: str, params: Any = None) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def insert_churn(self, rows: list[dict[str, Any]]) -> None:
        columns = [*FEATURE_COLUMNS, "Churn"]
        with self.conn.cursor() as cursor:
            psycopg2.extras.execute_values(
                cursor,
                f"INSERT INTO churn ({', '.join(columns)}) VALUES %s",
                [tuple(r[c] for c in columns) for r in rows],
                page_size=1000,
            )

    def drop(self) -> None:
        """The database and its slot gone (a daemon a failed test left still streaming from
        it is cut off first: its walsender holds the slot)."""
        self.conn.close()
        admin = self.server.connect()
        with admin.cursor() as cursor:
            deadline = time.monotonic() + 10
            while True:
                cursor.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                )
                row = cursor.fetchone()
                if row is None or time.monotonic() > deadline:
                    break
                if row[0] is None:
                    cursor.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                    break
                cursor.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.1)  # pacing the retry of a terminated walsender, not a sync
            cursor.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        admin.close()


# ``pg_config``'s keyword arguments that belong to [source.pgoutput] (the others: [source]).
_PGOUTPUT_KEYS = frozenset(
    {"slot_name", "publication", "heartbeat_interval_s", "queue_max_rows", "on_lost_position"}
)


def pg_config(
    path: Path,
    db: PgDatabase,
    endpoint_url: str,
    *,
    http_port: int = 0,
    churn: dict[str, Any] | None = None,
    pipelines: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    **source: Any,
) -> ScorerSpec:
    """The embedded default's config on ``db`` (engine postgresql, the test's own slot);
    ``churn`` replaces keys of the churn pipeline, ``pipelines`` adds pipelines by name,
    ``top`` merges into the rest (e.g. ``{"aws": {...}}``)."""
    path.write_text(
        local_scorer_config(
            port=db.server.port,
            database=db.name,
            endpoint_url=endpoint_url,
            http_port=http_port,
            overrides={
                "shutdown_grace_s": 20,
                "source": {
                    "engine": "postgresql",
                    "user": db.server.user,
                    **{k: v for k, v in source.items() if k not in _PGOUTPUT_KEYS},
                    "pgoutput": {
                        "slot_name": db.slot,
                        "heartbeat_interval_s": 0.5,
                        **{k: v for k, v in source.items() if k in _PGOUTPUT_KEYS},
                    },
                },
                "retry": {"base_ms": 20, "cap_ms": 200},
                "pipelines": {
                    "churn": {"batching": {"max_rows": 100, "linger_ms": 50}, **(churn or {})},
                    "feedback": {"batching": {"max_rows": 25, "linger_ms": 50}},
                    **(pipelines or {}),
                },
                **(top or {}),
            },
        )
    )
    return load_config(path)


# A server that invalidates a slot holding more than 1 MB of WAL (with wal_fill_past_slot).
SMALL_SLOT_SETTINGS = {
    "max_slot_wal_keep_size": "1MB",
    "max_wal_size": "32MB",
    "wal_keep_size": "0",
}


def wal_fill_past_slot(db: PgDatabase) -> str:
    """WAL written and checkpointed past what the slot may keep (a scorer away for long):
    the slot's ``wal_status`` afterwards (``lost`` on a SMALL_SLOT_SETTINGS server)."""
    for _ in range(4):
        db.execute("CREATE TABLE IF NOT EXISTS filler (x text)")
        db.execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)")
        db.execute("SELECT pg_switch_wal()")
        db.execute("CHECKPOINT")
    ((status,),) = db.rows(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (db.slot,)
    )
    return str(status)


def slot_lag(db: PgDatabase) -> tuple[int, int]:
    """(the slot's confirmed flush LSN, the server's current LSN)."""
    ((flushed, now),) = db.rows(
        "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (db.slot,),
    )
    return parse_lsn(flushed), parse_lsn(now)


def public_sample() -> list[dict[str, Any]] | None:
    """The blog's public sample (../shared/data/churn.csv) as churn rows, if it is here."""
    if not SHARED_CHURN_CSV.is_file():
        return None
    with SHARED_CHURN_CSV.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        columns = [*FEATURE_COLUMNS, "Churn"]
        return [dict(zip(columns, record, strict=True)) for record in reader]
