"""Many pipelines in one process: the server connections it holds, its RSS, and the freshness of
one insert per table, all in one transaction, to its readable prediction.

    python -m benchmarks.many [--tables 2,20,60,100] [--rounds 10] [--engine mariadb|postgresql]

Each table is a feedback table scored through Comprehend (the local endpoint with the main
benchmark's latency profile), one pipeline each, in one ``cdc-scorer run`` on a private
MariaDB (its binlog) or PostgreSQL (one publication, one slot). Connections are counted in the
server's process list (``pg_stat_activity`` on PostgreSQL; the scorer's, by the difference
from before it started); freshness is prediction ``scored_at`` minus row ``updated_at``, both
on the database's clock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from benchmarks.harness import (
    ModelEndpoints,
    init_scorer_tables,
    percentile,
    scorer_process,
    wait_until,
)
from benchmarks.run import _ready
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from cdc_scorer.local.servers import DatabaseServer, PrivateMariaDB, free_port

TABLE_DDL = (
    "CREATE TABLE {name} (id BIGINT AUTO_INCREMENT PRIMARY KEY, user_feedback TEXT NOT NULL, "
    "updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) "
    "ON UPDATE CURRENT_TIMESTAMP(6))"
)
# PostgreSQL: inserts only here, so the default is the row's write time.
TABLE_DDL_POSTGRES = (
    "CREATE TABLE {name} (id bigserial PRIMARY KEY, user_feedback text NOT NULL, "
    "updated_at timestamp(6) NOT NULL DEFAULT clock_timestamp())"
)


@dataclass
class ManyRow:
    tables: int
    connections: int  # the scorer's, at most, while it scored the rounds
    peak_rss_mb: float
    p50_s: float | None
    p99_s: float | None
    samples: int
    note: str = ""
    engine: str = "MariaDB"

    @property
    def approach(self) -> str:  # as benchmarks/ab.py names rows
        return f"cdc-scorer, a pipeline per table, one process, {self.engine}"

    @property
    def load(self) -> str:
        return f"{self.tables} tables"


def _tables(n: int) -> list[str]:
    return [f"fb{i:03d}" for i in range(n)]


def _postgres_database(server: PostgresServer, database: str, tables: list[str]) -> None:
    admin = server.connect()
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database}")
    admin.close()
    conn = server.connect(database)
    with conn.cursor() as cursor:
        for table in tables:
            cursor.execute(TABLE_DDL_POSTGRES.format(name=table))
    conn.close()


def _database(server: DatabaseServer, database: str, tables: list[str]) -> None:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        cursor.execute(f"USE {database}")
        for table in tables:
            cursor.execute(TABLE_DDL.format(name=table))
    conn.close()


def _config(
    path: Path, server: DatabaseServer | PostgresServer, database: str, url: str, tables: list[str]
) -> int:
    http_port = free_port()
    source: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.user,
        "database": database,
    }
    if isinstance(server, PostgresServer):
        source |= {
            "engine": "postgresql",
            "pgoutput": {"heartbeat_interval_s": 0.5, "slot_name": f"many_{database}"},
        }
    else:
        source["binlog"] = {"heartbeat_interval_s": 0.5}
    config: dict[str, Any] = {
        "source": source,
        "http": {"host": "127.0.0.1", "port": http_port},
        "aws": {"region": "us-east-1", "endpoint_url": url},
        "pipelines": [
            {
                "name": table,
                "table": table,
                "service": "comprehend",
                "snapshot": "never",
                "comprehend": {"text_column": "user_feedback", "language": "en"},
            }
            for table in tables
        ],
    }
    path.write_text(tomli_w.dumps(config))
    return http_port


def _connections(conn: Any, postgres: bool) -> int:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
            "('client backend', 'walsender')"
            if postgres
            else "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
        )
        (count,) = cursor.fetchone() or (0,)
    conn.commit()
    return int(count)


def _slots(conn: Any) -> int:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        )
        (count,) = cursor.fetchone() or (0,)
    conn.commit()
    return int(count)


def _freshness(
    conn: Any, tables: list[str], since: str, postgres: bool = False
) -> tuple[list[float], int]:
    """Seconds from each row written since ``since`` to its prediction; and the rows still
    without one."""
    values: list[float] = []
    missing = 0
    with conn.cursor() as cursor:
        for table in tables:
            cursor.execute(
                (
                    "SELECT (EXTRACT(EPOCH FROM p.scored_at - t.updated_at) * 1e6)::bigint "
                    if postgres
                    else "SELECT TIMESTAMPDIFF(MICROSECOND, t.updated_at, p.scored_at) "
                )
                + f"FROM {table} t LEFT JOIN {table}_predictions p ON p.id = t.id "
                "WHERE t.updated_at >= %s",
                (since,),
            )
            for (micros,) in cursor.fetchall():
                if micros is None:
                    missing += 1
                else:
                    values.append(int(micros) / 1e6)
    conn.commit()
    return values, missing


def measure(
    server: DatabaseServer | PostgresServer,
    endpoints: ModelEndpoints,
    workdir: Path,
    n: int,
    rounds: int,
) -> ManyRow:
    postgres = isinstance(server, PostgresServer)
    database = f"many{n}"
    tables = _tables(n)
    if isinstance(server, PostgresServer):
        _postgres_database(server, database, tables)
    else:
        _database(server, database, tables)
    config = workdir / f"{database}.toml"
    port = _config(config, server, database, endpoints.url, tables)
    init_scorer_tables(config)
    conn = server.connect(database)
    before = _connections(conn, postgres)
    scorer = scorer_process(config, workdir / f"{database}.log")
    try:
        if not wait_until(lambda: _ready(port, scorer), 120):
            raise RuntimeError(f"scorer not ready: {scorer.log_path.read_text()[-2000:]}")
        with conn.cursor() as cursor:
            cursor.execute("SELECT LOCALTIMESTAMP(6)" if postgres else "SELECT NOW(6)")
            (since,) = cursor.fetchone() or ("",)
        conn.commit()
        most = _connections(conn, postgres) - before
        for round_ in range(rounds):
            with conn.cursor() as cursor:
                # One transaction: both servers' test connections are autocommit.
                cursor.execute("BEGIN")
                for table in tables:
                    cursor.execute(
                        f"INSERT INTO {table} (user_feedback) VALUES (%s)",
                        (f"round {round_}: the service was great, thank you",),
                    )
                cursor.execute("COMMIT")
            time.sleep(1.0)
            most = max(most, _connections(conn, postgres) - before)
        done = wait_until(lambda: _freshness(conn, tables, str(since), postgres)[1] == 0, 60, 0.2)
        values, missing = _freshness(conn, tables, str(since), postgres)
        notes = [] if done else [f"{missing} rows without a prediction after 60 s"]
        if postgres:
            notes.append(f"{_slots(conn)} replication slot(s)")
        return ManyRow(
            tables=n,
            connections=most,
            peak_rss_mb=scorer.meter.peak_rss_mb,
            p50_s=percentile(values, 50),
            p99_s=percentile(values, 99),
            samples=len(values),
            note="; ".join(notes),
            engine="PostgreSQL" if postgres else "MariaDB",
        )
    finally:
        scorer.stop()
        conn.close()


def render(rows: list[ManyRow]) -> str:
    lines = [
        "| tables (pipelines) | server connections | peak RSS | freshness p50 / p99 | rows "
        "| note |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        fresh = "-" if r.p50_s is None or r.p99_s is None else f"{r.p50_s:.2f} / {r.p99_s:.2f} s"
        lines.append(
            f"| {r.tables} | {r.connections} | {r.peak_rss_mb:.0f} MB | {fresh} | {r.samples} | "
            f"{r.note} |"
        )
    return "\n".join(lines) + "\n"


def run(sizes: list[int], rounds: int, engine: str) -> list[ManyRow]:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-many-"))
    try:
        endpoints = ModelEndpoints(workdir)
        try:
            with ExitStack() as stack:
                server: DatabaseServer | PostgresServer
                if engine == "postgresql":
                    launcher = PrivatePostgreSQL(settings={"max_connections": "300"})
                    server = launcher.start()
                    stack.callback(launcher.stop)
                else:
                    server = stack.enter_context(PrivateMariaDB())
                rows = []
                for n in sizes:
                    row = measure(server, endpoints, workdir, n, rounds)
                    print(f"[many] {row}", flush=True)
                    rows.append(row)
                return rows
        finally:
            endpoints.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", default="2,20,60,100")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine", choices=("mariadb", "postgresql"), default="mariadb")
    args = parser.parse_args()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    rows = run([int(n) for n in args.tables.split(",")], args.rounds, args.engine)
    print(render(rows), end="")


if __name__ == "__main__":
    main()
