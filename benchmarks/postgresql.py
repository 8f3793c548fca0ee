"""The PostgreSQL phases of ``make bench``, beside MySQL's in the same run: parse only (pgoutput
read into ``RowChange``s and nothing else), one big UPDATE caught up by the daemon (rows/s, rows
per scorer CPU-second, peak RSS), and a mixed workload against PostgreSQL's own write rate."""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import psycopg2.extras

from benchmarks.decode import DecodeResult
from benchmarks.harness import (
    Batching,
    ModelEndpoints,
    ProcessMeter,
    init_scorer_tables,
    percentile,
    scorer_process,
    wait_until,
    write_scorer_config,
)
from cdc_scorer.core.records import Commit, RowChange
from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL_POSTGRES,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL_POSTGRES,
    ChurnRowGenerator,
)
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from cdc_scorer.sources import Capture, StreamHooks
from cdc_scorer.sources.pgoutput import PgoutputSource
from cdc_scorer.sources.pgoutput.positions import LsnPosition
from cdc_scorer.sources.pgoutput.protocol import parse_lsn
from cdc_scorer.sources.pgoutput.spec import PgoutputSpec

COLUMNS = [*FEATURE_COLUMNS, "Churn"]
LABEL = "PostgreSQL"
# A production server keeps its working set in memory, as the MySQL phases' buffer pool does.
SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "4GB", "synchronous_commit": "off"}


class PgBench:
    """The PostgreSQL phases; their rows and decode results join the run's."""

    def __init__(self, mode: Any, workdir: Path, endpoints: ModelEndpoints, log: Any) -> None:
        self.mode = mode
        self.workdir = workdir
        self.endpoints = endpoints
        self.log = log
        self.launcher = PrivatePostgreSQL(settings=SETTINGS)
        self.server: PostgresServer | None = None
        self._databases = 0
        self.decode: list[DecodeResult] = []
        self.rows: list[Any] = []

    def __enter__(self) -> PgBench:
        self.server = self.launcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.launcher.stop()

    def version(self) -> str:
        assert self.server is not None
        conn = self.server.connect()
        with conn.cursor() as cursor:
            cursor.execute("SHOW server_version")
            (version,) = cursor.fetchone() or ("",)
        conn.close()
        return str(version)

    def _database(self, name: str) -> tuple[str, Any]:
        assert self.server is not None
        self._databases += 1
        database = f"pg{self._databases}_{name}"
        admin = self.server.connect()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {database}")
        admin.close()
        conn = self.server.connect(database)
        with conn.cursor() as cursor:
            for ddl in (CHURN_TABLE_DDL_POSTGRES, FEEDBACK_TABLE_DDL_POSTGRES):
                for statement in (s for s in ddl.split(";") if s.strip()):
                    cursor.execute(statement)
        return database, conn

    def _source(self, database: str) -> SourceSpec:
        assert self.server is not None
        return SourceSpec(
            database=database,
            engine="postgresql",
            host=self.server.host,
            port=self.server.port,
            user=self.server.user,
            feed=PgoutputSpec(slot_name=f"bench_{database}"),
        )

    # ------------------------------------------------------------------ parse only
    def parse_only(self) -> None:
        """One transaction of N inserts and one UPDATE of every row, each read through the slot
        by the source's own stream (decoded, typed, handed over) and timed apart."""
        from cdc_scorer.core.spec import PipelineSpec
        from cdc_scorer.services.sagemaker import SageMakerSpec
        from cdc_scorer.stores.registry import build_store

        database, conn = self._database("decode")
        source = self._source(database)
        pipeline = PipelineSpec("churn", "churn", SageMakerSpec("e", FEATURE_COLUMNS), ("phone",))
        store = build_store(source, RetrySpec())
        store.init([pipeline])
        tables = store.inspect_tables([pipeline])
        store.close()
        reader = PgoutputSource(source, RetrySpec())
        reader.prepare([pipeline], tables)
        start = reader.current_position()
        rows = self.mode.decode_rows
        t0 = time.perf_counter()
        _insert(conn, list(ChurnRowGenerator(3).rows(rows)), one_transaction=True)
        insert_rate = rows / (time.perf_counter() - t0)
        after_inserts = reader.current_position()
        t0 = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.execute("UPDATE churn SET day_mins = day_mins + 1")
        update_rate = rows / (time.perf_counter() - t0)
        conn.close()
        self.log(f"{LABEL} bulk: insert {insert_rate:,.0f} rows/s, update {update_rate:,.0f}/s")
        for operation, begin in (("insert", start), ("update", after_inserts)):
            result = asyncio.run(_read_one_transaction(reader, begin, operation))
            self.decode.append(result)
            self.log(
                f"parse-only {LABEL} pgoutput {operation}: {result.rows:,} rows, "
                f"{result.rows_per_s:,.0f} rows/s, {result.cpu_s:.2f} CPU s"
            )

    # ------------------------------------------------------------------ one big UPDATE
    def big_update(self, row_type: Any) -> Any:
        rows = self.mode.big_update_rows
        database, conn = self._database("bigtxn")
        _insert(conn, list(ChurnRowGenerator(7).rows(rows)))
        config, port = self._config(database)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            wait_until(lambda: _ready(port, scorer), 60)
            time.sleep(1.0)  # pacing: the RSS baseline after start-up, not a synchronisation
            baseline = scorer.meter.rss_mb()
            self.endpoints.reset_stats()
            cpu0 = scorer.meter.cpu_s()
            server_cpu0 = self._server_cpu()
            started = time.monotonic()
            with conn.cursor() as cursor:
                cursor.execute("UPDATE churn SET day_mins = day_mins + 1")
            target = _lsn_now(conn)
            done = wait_until(lambda: _covered(conn, target), self.mode.drain_s * 4, 0.1)
            elapsed = time.monotonic() - started
            scorer_cpu = scorer.meter.cpu_s() - cpu0
            row = row_type(
                f"cdc-scorer (pgoutput), one UPDATE transaction, {LABEL}",
                f"{rows:,} rows",
                rows,
                e2e_rows_per_s=rows / elapsed if done else None,
                caught_up=done,
                calls_per_1k=1000 * self.endpoints.stats()["total_calls"] / rows,
                cpu_s_per_1k=1000 * scorer_cpu / rows,
                mariadb_cpu_s_per_1k=1000 * (self._server_cpu() - server_cpu0) / rows,
                peak_rss_mb=scorer.meter.peak_rss_mb,
                note=f"RSS {baseline:.0f} MB before the transaction, "
                f"{scorer.meter.peak_rss_mb:.0f} MB peak during it; rows per scorer CPU "
                f"second {rows / scorer_cpu:,.0f}",
            )
            self.log(
                f"big update on {LABEL}: {rows:,} rows, {row.e2e_rows_per_s or 0:,.0f} rows/s, "
                f"{row.note}, caught up={done}"
            )
            return row
        finally:
            scorer.stop()
            conn.close()

    # ------------------------------------------------------------------ a mixed workload
    def mixed(self, row_type: Any) -> list[Any]:
        """PostgreSQL's own write rate for the mixed workload (100-row transactions, flat
        out), then the scorer following that rate: does it keep up, and how fresh."""
        database, conn = self._database("mixed")
        _insert(conn, list(ChurnRowGenerator(5).rows(self.mode.preload_rows)))
        workload = PgWorkload(conn, self.mode.preload_rows)
        elapsed = workload.drive(None, self.mode.phase_s)
        rate = workload.rows_written / elapsed
        self.log(f"{LABEL} alone, mixed workload: {rate:,.0f} rows/s")
        alone = row_type(
            f"{LABEL} alone (the workload, flat out)",
            "flat out",
            workload.rows_written,
            write_rows_per_s=rate,
            note="100-row transactions: 50 % insert, 40 % update, 10 % delete",
        )
        config, port = self._config(database)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            wait_until(lambda: _ready(port, scorer), 60)
            cpu0 = scorer.meter.cpu_s()
            since = _db_now(conn)
            written0 = workload.rows_written
            elapsed = workload.drive(rate, self.mode.phase_s)
            target = _lsn_now(conn)
            written = workload.rows_written - written0
            done = wait_until(lambda: _covered(conn, target), self.mode.drain_s, 0.1)
            fresh = _freshness(conn, since)
            following = row_type(
                f"cdc-scorer (pgoutput), {LABEL}",
                f"{rate:,.0f} rows/s (its own write rate)",
                written,
                write_rows_per_s=written / elapsed,
                caught_up=done,
                p50_s=percentile(fresh, 50),
                p95_s=percentile(fresh, 95),
                p99_s=percentile(fresh, 99),
                cpu_s_per_1k=1000 * (scorer.meter.cpu_s() - cpu0) / max(written, 1),
                peak_rss_mb=scorer.meter.peak_rss_mb,
                note="the workload at PostgreSQL's own flat-out rate, the scorer following",
            )
            self.log(
                f"{LABEL} mixed at {rate:,.0f} rows/s: caught up={done}, "
                f"p50 {following.p50_s}, p99 {following.p99_s}"
            )
            return [alone, following]
        finally:
            scorer.stop()
            conn.close()

    def _config(self, database: str) -> tuple[Path, int]:
        """The bench's scorer config (``harness.write_scorer_config``) on this server."""
        assert self.server is not None
        config = self.workdir / f"{database}.toml"
        source = {
            "engine": "postgresql",
            "user": self.server.user,
            "pgoutput": {"slot_name": f"bench_{database}"},
        }
        port = write_scorer_config(
            config, self.server, database, self.endpoints.url, Batching(), source=source
        )
        init_scorer_tables(config)
        return config, port

    def _server_cpu(self) -> float:
        """CPU seconds of every process of the private server (postmaster and backends)."""
        assert self.server is not None
        total = 0.0
        for pid in _server_pids(self.server):
            total += ProcessMeter(pid).cpu_s()
        return total


class PgWorkload:
    """The mixed workload on PostgreSQL: 50 % inserts, 40 % updates of model inputs, 10 %
    deletes, in transactions of about 100 rows."""

    def __init__(self, conn: Any, preloaded: int, seed: int = 5) -> None:
        self._conn = conn
        self._churn = ChurnRowGenerator(seed + 100)
        self._rng = random.Random(seed)
        with conn.cursor() as cursor:
            cursor.execute("SELECT phone FROM churn")
            self._live = [str(r[0]) for r in cursor.fetchall()]
        self.rows_written = 0

    def step(self, rows: int) -> int:
        rng, conn = self._rng, self._conn
        draws = [rng.random() for _ in range(rows)]
        inserts = [self._churn.row() for d in draws if d < 0.5]
        updates = sum(1 for d in draws if 0.5 <= d < 0.9)
        deletes = sum(1 for d in draws if d >= 0.9)
        conn.autocommit = False
        with conn.cursor() as cursor:
            if inserts:
                psycopg2.extras.execute_values(
                    cursor,
                    f"INSERT INTO churn ({', '.join(COLUMNS)}) VALUES %s",
                    [tuple(r[c] for c in COLUMNS) for r in inserts],
                )
                self._live.extend(r["phone"] for r in inserts)
            for phone in rng.sample(self._live, min(updates, len(self._live))):
                cursor.execute(
                    "UPDATE churn SET day_mins = %s, cust_service_calls = %s WHERE phone = %s",
                    (round(rng.uniform(0, 350), 1), rng.randint(0, 9), phone),
                )
            for _ in range(deletes):
                if len(self._live) > 100:
                    phone = self._live.pop(rng.randrange(len(self._live)))
                    cursor.execute("DELETE FROM churn WHERE phone = %s", (phone,))
        conn.commit()
        conn.autocommit = True
        self.rows_written += rows
        return rows

    def drive(self, rate: float | None, seconds: float) -> float:
        started = time.monotonic()
        written = 0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                return elapsed
            if rate is None:
                written += self.step(100)
                continue
            due = int(rate * elapsed) - written
            if due <= 0:
                time.sleep(min(0.005, 1 / rate))  # pacing the writer to its rate
                continue
            written += self.step(min(due, 200))


async def _read_one_transaction(reader: PgoutputSource, start: Any, operation: str) -> DecodeResult:
    stream = reader.open(start, Capture({"churn": ("phone",)}, {"churn": None}), StreamHooks())
    rows = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    async with aclosing(stream.changes()) as changes:
        async for items in changes:
            rows += sum(1 for i in items if isinstance(i, RowChange) and i.table == "churn")
            if rows and any(isinstance(i, Commit) for i in items):
                wall, cpu = time.perf_counter(), time.process_time()
                stream.stop()
    return DecodeResult("pgoutput", operation, rows, wall - wall0, cpu - cpu0, LABEL)


def _insert(conn: Any, rows: list[dict[str, Any]], one_transaction: bool = False) -> None:
    conn.autocommit = not one_transaction
    with conn.cursor() as cursor:
        psycopg2.extras.execute_values(
            cursor,
            f"INSERT INTO churn ({', '.join(COLUMNS)}) VALUES %s",
            [tuple(r[c] for c in COLUMNS) for r in rows],
            page_size=1000,
        )
    if one_transaction:
        conn.commit()
    conn.autocommit = True


def _lsn_now(conn: Any) -> LsnPosition:
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
        (lsn,) = cursor.fetchone() or ("0/0",)
    return LsnPosition("", parse_lsn(str(lsn)))


def _covered(conn: Any, target: LsnPosition) -> bool:
    """Whether every pipeline's checkpoint is at or past ``target``."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT position FROM cdc_scorer_checkpoint")
        positions = [str(r[0]) for r in cursor.fetchall()]
    return bool(positions) and all(
        parse_lsn(p.removeprefix("lsn:")) >= target.lsn for p in positions
    )


def _db_now(conn: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp() AT TIME ZONE 'UTC'")
        (now,) = cursor.fetchone() or (None,)
    return now


def _freshness(conn: Any, since: Any) -> list[float]:
    """Seconds from a row version's commit to its prediction (both the server's clock, UTC)."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM scored_at - source_committed_at) FROM churn_predictions "
            "WHERE source_committed_at >= %s",
            (since,),
        )
        return [float(r[0]) for r in cursor.fetchall()]


def _ready(port: int, scorer: Any) -> bool:
    from benchmarks.run import _ready as ready

    return bool(ready(port, scorer))


def _server_pids(server: PostgresServer) -> list[int]:
    lines = (server.datadir / "postmaster.pid").read_text().splitlines()
    postmaster = int(lines[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children")
    found = [postmaster]
    if children.exists():
        found += [int(p) for p in children.read_text().split()]
    return found
