"""The blog scenario on a private MariaDB: schema, data, config, and the differential oracle."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from cdc_scorer.app import ScorerApp
from cdc_scorer.config import load_config
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL,
    ChurnRowGenerator,
)
from cdc_scorer.local.churn_model import ChurnModel
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.sentiment import SentimentModel
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.stores.registry import build_store


def write_config(
    path: Path,
    server: DatabaseServer,
    database: str,
    endpoint_url: str,
    *,
    server_id: int | None = None,
    snapshot: str = "initial",
    max_rows: int = 100,
    overlong: str = "dead_letter",
    http_port: int = 0,
    positions: str = "auto",
    pipelines: dict[str, Any] | None = None,
) -> ScorerSpec:
    """The embedded default's config for ``server``; ``pipelines`` adds or changes some."""
    binlog: dict[str, Any] = {"heartbeat_interval_s": 0.5, "positions": positions}
    if server_id is not None:
        binlog["server_id"] = server_id
    batching = {"linger_ms": 50, "max_in_flight": 4}
    path.write_text(
        local_scorer_config(
            port=server.port,
            database=database,
            endpoint_url=endpoint_url,
            http_port=http_port,
            overrides={
                "shutdown_grace_s": 20,
                "source": {"binlog": binlog},
                "retry": {"base_ms": 20, "cap_ms": 200},
                "pipelines": {
                    "churn": {"snapshot": snapshot, "batching": batching | {"max_rows": max_rows}},
                    "feedback": {
                        "snapshot": snapshot,
                        "comprehend": {"overlong_text": overlong},
                        "batching": {"max_rows": 25, "linger_ms": 50},
                    },
                    **(pipelines or {}),
                },
            },
        )
    )
    return load_config(path)


def with_debezium(config: dict[str, Any], **keys: Any) -> dict[str, Any]:
    """A parsed configuration of a database's own log, reading Debezium's topics instead:
    ``keys`` become its [source.debezium] (the log's section goes)."""
    source = {k: v for k, v in config["source"].items() if k not in ("binlog", "pgoutput")}
    return {**config, "source": {**source, "debezium": keys}}


def init_scorer(spec: ScorerSpec) -> None:
    """`cdc-scorer init` for ``spec``: the scorer's tables and views."""
    store = build_store(spec.source, spec.retry)
    store.init(spec.pipelines)
    store.close()


def create_database(server: DatabaseServer, database: str) -> None:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        cursor.execute(f"USE {database}")
        cursor.execute(CHURN_TABLE_DDL)
        cursor.execute(FEEDBACK_TABLE_DDL)
    conn.close()


def insert_churn(conn: pymysql.connections.Connection[Any], rows: list[dict[str, Any]]) -> None:
    columns = [*FEATURE_COLUMNS, "Churn"]
    with conn.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO churn ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
            [tuple(r[c] for c in columns) for r in rows],
        )


def expected_churn(conn: Any) -> dict[str, tuple[str, float]]:
    """The differential oracle: a from-scratch scoring of the current source rows."""
    model = ChurnModel.load()
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM churn")
        rows = cursor.fetchall()
    expected = {}
    for row in rows:
        out = io.StringIO()
        csv.writer(out).writerow(
            ["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row]
        )
        record = next(csv.reader(io.StringIO(out.getvalue())))
        try:
            p = model.probability(record)
        except ValueError:
            continue  # the model rejects it: it belongs in the dead-letter table
        expected[str(row[3])] = ("True." if p >= 0.5 else "False.", p)
    return expected


def stored_churn(conn: Any) -> dict[str, tuple[str, float]]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT phone, will_churn, churn_probability FROM churn_predictions")
        return {str(p): (str(label), float(prob)) for p, label, prob in cursor.fetchall()}


def expected_feedback(conn: Any) -> dict[int, str]:
    model = SentimentModel()
    with conn.cursor() as cursor:
        cursor.execute("SELECT id, user_feedback FROM feedback")
        rows = cursor.fetchall()
    return {
        int(i): model.detect(t).sentiment
        for i, t in rows
        if t and t.strip() and len(t.encode()) <= 5000
    }


def stored_feedback(conn: Any) -> dict[int, str]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT id, sentiment FROM feedback_predictions")
        return {int(i): str(s) for i, s in cursor.fetchall()}


def churn_matches(conn: Any) -> bool:
    expected, stored = expected_churn(conn), stored_churn(conn)
    return expected.keys() == stored.keys() and all(
        stored[k][0] == v[0] and abs(stored[k][1] - v[1]) < 1e-9 for k, v in expected.items()
    )


RUNNING: list[asyncio.Task[Any]] = []  # daemons under test: a dead one fails the wait at once


async def wait_for(condition: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    """Poll a condition until it holds (no sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for task in RUNNING:
            if task.done():
                task.result()
                raise AssertionError(f"the scorer stopped while waiting for {what}")
        if await asyncio.to_thread(condition):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")
        await asyncio.sleep(0.05)


class Running:
    """The daemon in-process for the length of an ``async with``; stopped cleanly at its end."""

    def __init__(self, spec: ScorerSpec) -> None:
        self.app = ScorerApp(spec)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScorerApp:
        self.task = asyncio.create_task(self.app.run())
        RUNNING.append(self.task)
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        RUNNING.remove(self.task)
        self.app.request_stop()
        await asyncio.wait_for(self.task, 30)


GRANTS_SQL = Path(__file__).resolve().parents[2] / "deploy" / "grants.sql"


def readme_grants(flavor: str, user: str, password: str, database: str) -> list[str]:
    """deploy/grants.sql as the README gives it, for this flavour, user and database."""
    text = GRANTS_SQL.read_text()
    if flavor == "mariadb":  # the file's MariaDB line replaces its MySQL one
        mariadb = next(line for line in text.splitlines() if "MariaDB 10.5+ instead" in line)
        text = text.replace(
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc_scorer'@'%';",
            mariadb.split("instead: ", 1)[1],
        )
    text = (
        text.replace("'cdc_scorer'@'%'", f"'{user}'@'%'")
        .replace("from-secrets-manager", password)
        .replace("mltest.", f"{database}.")
    )
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def compressed_transactions(db: Any) -> int:
    """TRANSACTION_PAYLOAD events in the server's binlog files so far (none on MariaDB)."""
    count = 0
    with db.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        for log_file, *_ in cursor.fetchall():
            cursor.execute(f"SHOW BINLOG EVENTS IN '{log_file}'")
            count += sum(1 for row in cursor.fetchall() if row[2] == "Transaction_payload")
    return count


class Writer(threading.Thread):
    """Mixed writes to churn and feedback until stopped (MySQL or PostgreSQL): inserts,
    updates and deletes of ``phones`` (rows that exist), feedback inserts."""

    def __init__(
        self, server: DatabaseServer | PostgresServer, database: str, phones: list[str]
    ) -> None:
        super().__init__(daemon=True)
        self._conn = server.connect(database)
        self._halt = threading.Event()
        self._phones = phones
        self._rows = ChurnRowGenerator(77)
        self._random = random.Random(5)
        self.writes = 0

    def run(self) -> None:
        while not self._halt.wait(0.02):
            with self._conn.cursor() as cursor:
                choice = self._random.random()
                if choice < 0.3:
                    insert_churn(self._conn, list(self._rows.rows(2)))
                elif choice < 0.8 and self._phones:
                    phone = self._random.choice(self._phones)
                    cursor.execute(
                        "UPDATE churn SET day_mins = day_mins + 1, night_calls = %s "
                        "WHERE phone = %s",
                        (self._random.randint(0, 200), phone),
                    )
                elif choice < 0.85 and len(self._phones) > 50:
                    phone = self._phones.pop(self._random.randrange(len(self._phones)))
                    cursor.execute("DELETE FROM churn WHERE phone = %s", (phone,))
                else:
                    cursor.execute(
                        "INSERT INTO feedback (user_feedback) VALUES (%s)",
                        (self._random.choice(["great", "awful service", "my bill is wrong"]),),
                    )
            self.writes += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self._conn.close()
