"""``make bench``: freshness, throughput, model calls, CPU and memory — cdc-scorer and the
alternatives, in one run on this machine — written to docs/benchmarks.md with plots.

    python -m benchmarks.run [--mode quick|full|smoke] [--out docs]
    python -m benchmarks.run --baseline REV [--phases rate,flat,idle,big-update] [--rounds 2]

The second form is an A/B in one run (benchmarks/ab.py): the phases for git revision REV and
for the working tree, alternated on the same servers, and the ratios.

Modes differ only in sizes and durations: ``quick`` (under 3 minutes), ``full`` (the long one,
with the 1M-row transaction), ``smoke`` (seconds; what the test suite runs).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.decode import DECODERS, DecodeResult, read_range
from benchmarks.harness import (
    Batching,
    ModelEndpoints,
    Process,
    ProcessMeter,
    Profiler,
    Workload,
    caught_up,
    create_bench_database,
    db_now,
    freshness_by_table,
    freshness_s,
    init_scorer_tables,
    metric_value,
    metrics,
    percentile,
    portable,
    scorer_cli,
    scorer_process,
    sink_seconds,
    wait_until,
    write_scorer_config,
)
from cdc_scorer.core.own_tables import RESCORE
from cdc_scorer.core.positions import Position
from cdc_scorer.local.endpoints import DEFAULT_ENDPOINT
from cdc_scorer.local.mysql_dist import MysqlUnavailable, ensure_mysql
from cdc_scorer.local.s3 import s3_client
from cdc_scorer.local.servers import DatabaseServer, PrivateMariaDB, PrivateMySQL
from cdc_scorer.sources.binlog.positions import decode_binlog_position
from cdc_scorer.sources.binlog.resume import current_position
from cdc_scorer.sources.binlog.server import server_info
from cdc_scorer.stores.mysql.checkpoints import load_checkpoints
from cdc_scorer.stores.mysql.chunks import count_rows
from cdc_scorer.stores.mysql.signals import insert_signal

BUFFER_POOL = "2G"


@dataclass(frozen=True)
class Mode:
    name: str
    phase_s: float  # writing time of each fixed-rate phase
    drain_s: float  # how long a phase may take to catch up after writing stops
    rates: tuple[int, ...]
    flat_out_rows: int
    decode_rows: int
    big_update_rows: int
    preload_rows: int
    rescore_rows: int  # the table re-scored beside the stream
    backfill_rows: int  # the table re-scored real-time, then by batch jobs
    profile: bool = True  # py-spy on the scorer in the flat-out phase


MODES = {
    "smoke": Mode("smoke", 2, 20, (100,), 500, 2_000, 2_000, 500, 2_000, 2_000, profile=False),
    "quick": Mode("quick", 8, 40, (100, 1000), 20_000, 20_000, 50_000, 5_000, 200_000, 100_000),
    "full": Mode(
        "full", 30, 300, (100, 1000, 5000), 200_000, 200_000, 1_000_000, 50_000, 200_000, 100_000
    ),
}
RESCORE_STREAM_RATE = 1000  # rows/s the application writes while the table is re-scored
BACKFILL_BUCKET = "cdc-scorer-bench"
BACKFILL_RECORDS_PER_JOB = 25_000
# The modelled prices (per instance-hour, USD): an ml.m5.large endpoint and transform
# instance in us-east-1 as listed when this was written; set your own in [pricing].
BACKFILL_PRICES = {"on_demand": 0.115, "batch": 0.115}
RESCORE_CAP = 2000  # rescore.max_rows_per_s of the capped phase
BACKFILL_CAP = 1000  # rescore.max_rows_per_s of the capped batch re-score: the merge's pace
CAPPED_WHERE = "acc_length < 50"  # about a quarter of the rows


@dataclass
class Row:
    """One line of the results table."""

    approach: str
    load: str
    rows: int = 0
    write_rows_per_s: float | None = None
    e2e_rows_per_s: float | None = None
    caught_up: bool | None = None
    backlog_rows: int | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    calls_per_1k: float | None = None
    cpu_s_per_1k: float | None = None
    mariadb_cpu_s_per_1k: float | None = None
    endpoints_cpu_s_per_1k: float | None = None
    peak_rss_mb: float | None = None
    sink_busy: float | None = None  # share of the phase the churn sink connection was writing
    churn_p99_s: float | None = None  # the churn pipeline's alone: the 15 ms SageMaker model
    note: str = ""
    freshness: list[float] = field(default_factory=list, repr=False)


class Bench:
    def __init__(
        self,
        mode: Mode,
        workdir: Path,
        server: DatabaseServer,
        mariadb_pid: int | None = None,
        endpoints: ModelEndpoints | None = None,
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.server = server
        self.endpoints = endpoints or ModelEndpoints(workdir)
        # The other processes on the same cores: where the rest of the CPU goes per row.
        self.others = {
            "mariadb": ProcessMeter(mariadb_pid or 0),
            "endpoints": ProcessMeter(self.endpoints.pid),
        }
        self.label = "MariaDB" if server.flavor == "mariadb" else "MySQL"
        self.rows: list[Row] = []
        self.decode: list[DecodeResult] = []
        self._databases = 0
        self.scorer_profiles: list[dict[str, Any]] = []

    def _database(self, name: str) -> str:
        self._databases += 1
        database = f"{self.label[:2].lower()}{self._databases}_{name}"
        create_bench_database(self.server, database)
        return database

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # ------------------------------------------------------------------ (d) MariaDB alone
    def mariadb_write_rate(self) -> None:
        database = self._database("write")
        conn = self.server.connect(database)
        workload = Workload(conn, seed=2)
        workload.preload(self.mode.preload_rows)
        elapsed = workload.drive(None, self.mode.phase_s)
        rate = workload.rows_written / elapsed
        self.rows.append(
            Row(
                "MariaDB alone (the workload, flat out)",
                "flat out",
                workload.rows_written,
                write_rows_per_s=rate,
                note="100-row transactions: 50 % insert, 40 % update, 10 % delete, +5 % feedback",
            )
        )
        self.log(f"MariaDB write rate: {rate:,.0f} rows/s")
        conn.close()

    # ------------------------------------------------------------------ (a) parse only
    def parse_only(self) -> None:
        database = self._database("decode")
        conn = self.server.connect(database)
        workload = Workload(conn, seed=3)
        start = _position(conn)
        t0 = time.perf_counter()
        workload.preload(self.mode.decode_rows, chunk=1000)
        insert_rate = self.mode.decode_rows / (time.perf_counter() - t0)
        after_inserts = _position(conn)
        t0 = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.execute("UPDATE churn SET day_mins = day_mins + 1")  # one transaction
        update_rate = self.mode.decode_rows / (time.perf_counter() - t0)
        after_updates = _position(conn)
        conn.close()
        self.rows.append(
            Row(
                f"{self.label} alone (bulk INSERT / one UPDATE)",
                "flat out",
                2 * self.mode.decode_rows,
                write_rows_per_s=None,
                note=f"INSERT {insert_rate:,.0f} rows/s (1000-row statements); "
                f"UPDATE {update_rate:,.0f} rows/s (one statement)",
            )
        )
        self.log(
            f"{self.label} bulk: insert {insert_rate:,.0f} rows/s, update {update_rate:,.0f}/s"
        )
        for decoder in DECODERS:
            for operation, begin, end in (
                ("insert", start, after_inserts),
                ("update", after_inserts, after_updates),
            ):
                result = read_range(self.server, database, begin, end, decoder, operation)
                self.decode.append(result)
                self.log(
                    f"parse-only {self.label} {decoder} {operation}: {result.rows:,} rows, "
                    f"{result.rows_per_s:,.0f} rows/s"
                )
        if self.label != "MariaDB":
            return
        # The profile of the stock decoder on updates: where the ceiling comes from.
        profile = cProfile.Profile()
        profile.enable()
        read_range(self.server, database, after_inserts, after_updates, "stock", "update")
        profile.disable()
        out = self.workdir / "profile.txt"
        with out.open("w") as stream:
            stats = pstats.Stats(profile, stream=stream)
            stats.sort_stats("tottime").print_stats(15)
        self.profile_text = out.read_text()

    def _others_cpu(self) -> dict[str, float]:
        return {name: meter.cpu_s() for name, meter in self.others.items()}

    def _others_per_1k(self, before: dict[str, float], rows: int) -> dict[str, float | None]:
        now = self._others_cpu()
        return {k: (1000 * (now[k] - before[k]) / rows if rows else None) for k in now}

    # ------------------------------------------------------------------ scorer phases
    def scorer_phase(
        self,
        approach: str,
        batching: Batching,
        rate: float | None,
        max_rows: int | None = None,
        decoder: str = "fast",
        seconds: float | None = None,
    ) -> Row:
        name = approach.split(" ")[0].lower().replace("-", "")
        database = self._database(name)
        config = self.workdir / f"{database}.toml"
        port = write_scorer_config(
            config, self.server, database, self.endpoints.url, batching, decoder
        )
        init_scorer_tables(config)
        conn = self.server.connect(database)
        workload = Workload(conn, seed=5)
        workload.preload(self.mode.preload_rows)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            if not wait_until(lambda: _ready(port, scorer), 60):
                raise RuntimeError(
                    f"scorer did not get ready: {scorer.log_path.read_text()[-2000:]}"
                )
            return self._measure(approach, scorer, conn, workload, rate, max_rows, port, seconds)
        finally:
            scorer.stop()
            conn.close()

    def polling_phase(self, rate: float) -> Row:
        database = self._database("polling")
        config = self.workdir / f"{database}.toml"
        write_scorer_config(config, self.server, database, self.endpoints.url, Batching())
        init_scorer_tables(config)  # the same prediction tables
        conn = self.server.connect(database)
        workload = Workload(conn, seed=5)
        workload.preload(self.mode.preload_rows)
        poller = Process(
            [
                sys.executable,
                "-m",
                "benchmarks.polling",
                "--port",
                str(self.server.port),
                "--database",
                database,
                "--endpoint-url",
                self.endpoints.url,
            ],
            self.workdir / f"{database}.log",
            {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
        )
        try:
            time.sleep(1.0)
            poller.check_alive()
            return self._measure(
                "Polling every 1 s (MindsDB JOBS / cron)", poller, conn, workload, rate, None
            )
        finally:
            poller.stop()
            conn.close()

    def _measure(
        self,
        approach: str,
        process: Process,
        conn: Any,
        workload: Workload,
        rate: float | None,
        max_rows: int | None,
        port: int | None = None,
        phase_s: float | None = None,
    ) -> Row:
        polling = approach.startswith("Polling")
        self.endpoints.reset_stats()
        since = db_now(conn)
        cpu0 = process.meter.cpu_s()
        others0 = self._others_cpu()
        sink0 = sink_seconds(port) if port else 0.0
        started = time.monotonic()
        seconds = phase_s or (self.mode.phase_s if max_rows is None else 3600.0)
        written_before = workload.rows_written
        # The flat-out phase is where the ceiling shows: sample where the scorer's time goes.
        profiler = (
            Profiler(process.process.pid, self.workdir / f"{process.log_path.stem}.spy")
            if rate is None and self.mode.profile
            else None
        )
        writing = workload.drive(rate, seconds, max_rows)
        written = workload.rows_written - written_before
        done = wait_until(
            lambda: (
                process.alive()
                and (_polled_up(conn, since) if polling else caught_up(conn, workload.last_gtid))
            ),
            self.mode.drain_s,
            poll_s=0.05,
        )
        elapsed = time.monotonic() - started
        sink_busy = (sink_seconds(port) - sink0) / elapsed if port else None
        if profiler is not None:
            self.scorer_profiles.append(profiler.stop() | {"phase": f"{approach} @ flat out"})
        cpu = process.meter.cpu_s() - cpu0
        others = self._others_per_1k(others0, written)
        calls = self.endpoints.stats()["total_calls"]
        by_table = freshness_by_table(conn, since)
        fresh = by_table["churn"] + by_table["feedback"]
        backlog = 0 if done else _backlog(conn, since)
        load = "flat out" if rate is None else f"{rate:,.0f} rows/s"
        row = Row(
            approach,
            load,
            written,
            write_rows_per_s=written / writing,
            e2e_rows_per_s=written / elapsed if done else (written - backlog) / elapsed,
            caught_up=done,
            backlog_rows=backlog,
            p50_s=percentile(fresh, 50),
            p95_s=percentile(fresh, 95),
            p99_s=percentile(fresh, 99),
            calls_per_1k=1000 * calls / written if written else None,
            cpu_s_per_1k=1000 * cpu / written if written else None,
            mariadb_cpu_s_per_1k=others["mariadb"],
            endpoints_cpu_s_per_1k=others["endpoints"],
            peak_rss_mb=process.meter.peak_rss_mb,
            sink_busy=sink_busy,
            freshness=fresh,
            churn_p99_s=percentile(by_table["churn"], 99),
            note=_by_model(by_table) if not polling else "",
        )
        self.log(
            f"{approach} @ {load}: {written:,} rows, e2e {row.e2e_rows_per_s:,.0f} rows/s, "
            f"caught up={done}, p50={_fmt(row.p50_s)} p99={_fmt(row.p99_s)} s, "
            f"calls/1k={_fmt(row.calls_per_1k)}, cpu/1k={_fmt(row.cpu_s_per_1k)} s; {row.note}"
        )
        return row

    # ------------------------------------------------------------------ a re-score
    def rescore_phase(self, rate: float, capped: bool = True) -> dict[str, Any]:
        """The whole churn table re-scored (`cdc-scorer rescore`'s request) while the
        application writes ``rate`` rows/s: the re-score's pace, and the stream's freshness
        during it against a phase of the same stream without it, in one scorer process; then,
        restarted with ``rescore.max_rows_per_s``, a quarter of the table re-scored at that
        cap (what the cap buys the stream)."""
        rows = self.mode.rescore_rows
        database = self._database("rescore")
        config = self.workdir / f"{database}.toml"
        port = write_scorer_config(config, self.server, database, self.endpoints.url, Batching())
        init_scorer_tables(config)
        conn = self.server.connect(database)
        workload = Workload(conn, seed=9)
        workload.preload(rows)
        phases: dict[str, Any] = {}
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            self._wait_ready(port, scorer)
            phases["without"] = self._rescore_measure(conn, workload, port, scorer, rate)
            phases["rows_at_request"] = count_rows(conn, "churn", None)
            phases["during"] = self._rescore_measure(conn, workload, port, scorer, rate, "TRUE")
        finally:
            scorer.stop()
        if not capped:
            conn.close()
            return {"table_rows": rows, "stream_rate": rate, **phases}
        port = write_scorer_config(
            config,
            self.server,
            database,
            self.endpoints.url,
            Batching(),
            churn={"rescore": {"max_rows_per_s": RESCORE_CAP}},
        )
        scorer = scorer_process(config, self.workdir / f"{database}-capped.log")
        try:
            self._wait_ready(port, scorer)
            at_cap = self._rescore_measure(conn, workload, port, scorer, rate, CAPPED_WHERE)
            phases["capped"] = at_cap | {"cap": RESCORE_CAP, "where": CAPPED_WHERE}
        finally:
            scorer.stop()
            conn.close()
        return {"table_rows": rows, "stream_rate": rate, **phases}

    # ------------------------------------------------------------------ a backfill
    def backfill_phase(self, rate: float) -> dict[str, Any]:
        """The churn table re-scored beside a ``rate`` rows/s stream twice in one run: through
        the endpoint, then by SageMaker Batch Transform jobs (the local control plane and S3);
        each against the same stream alone in the same scorer process before it. The stream's
        p99 during each, the endpoint rows the re-score took, and the modelled cost
        (``rescore --estimate`` at the prices below)."""
        rows = self.mode.backfill_rows
        database = self._database("backfill")
        config = self.workdir / f"{database}.toml"
        top = {
            "aws": {"s3_endpoint_url": self.endpoints.s3_url},
            "pricing": {DEFAULT_ENDPOINT: BACKFILL_PRICES},
        }
        batch = {
            "backfill": {
                "mode": "batch",
                "s3_uri": f"s3://{BACKFILL_BUCKET}/backfills/",
                "role_arn": "arn:aws:iam::123456789012:role/cdc-scorer-bench",
                "records_per_job": BACKFILL_RECORDS_PER_JOB,
                "max_jobs_in_flight": 2,
                "poll_s": 1,
            }
        }
        s3 = s3_client(self.endpoints.s3_url)
        if BACKFILL_BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=BACKFILL_BUCKET)  # once per run: A/B calls this again
        conn = self.server.connect(database)
        workload = Workload(conn, seed=19)
        result: dict[str, Any] = {"table_rows": rows, "stream_rate": rate, "cap": BACKFILL_CAP}
        capped = batch | {"rescore": {"max_rows_per_s": BACKFILL_CAP}}
        for name, churn in (("realtime", {}), ("batch", batch), ("batch_capped", capped)):
            port = write_scorer_config(
                config, self.server, database, self.endpoints.url, Batching(), churn=churn, top=top
            )
            if name == "realtime":
                init_scorer_tables(config)
                workload.preload(rows)
            scorer = scorer_process(config, self.workdir / f"{database}-{name}.log")
            try:
                self._wait_ready(port, scorer)
                alone = self._rescore_measure(conn, workload, port, scorer, rate)
                during = self._rescore_measure(conn, workload, port, scorer, rate, "TRUE")
                text = metrics(port)
                outcomes = {
                    o: metric_value(
                        text, f'cdc_scorer_backfill_records_total{{outcome="{o}",pipeline="churn"}}'
                    )
                    for o in ("submitted", "answered", "superseded", "realtime", "dead_letter")
                }
            finally:
                scorer.stop()
            result[name] = {"alone": alone, "during": during, "outcomes": outcomes}
            if name == "batch":  # (the service's counts are the run's: the capped adds to them)
                result[name]["jobs"] = self.endpoints.stats().get("sagemaker_batch", {})
        # The count and the cost both ways, as `rescore --estimate` models them.
        estimate = subprocess.run(
            [
                *scorer_cli(),
                "rescore",
                "--estimate",
                "--config",
                str(config),
                "--pipeline",
                "churn",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        result["estimate"] = estimate.stdout or estimate.stderr
        conn.close()
        self.log(f"backfill phases: {result}")
        return result

    def _wait_ready(self, port: int, scorer: Process) -> None:
        if not wait_until(lambda: _ready(port, scorer), 60):
            raise RuntimeError(f"scorer not ready: {scorer.log_path.read_text()[-2000:]}")

    def _rescore_measure(
        self,
        conn: Any,
        workload: Workload,
        port: int,
        scorer: Process,
        rate: float,
        where: str | None = None,
    ) -> dict[str, Any]:
        """The stream at ``rate`` for the phase's time (``where`` None), or until a re-score of
        the rows ``where`` selects is done; what the stream and the re-score did meanwhile."""
        since = db_now(conn)
        self.endpoints.reset_stats()
        rescored0 = metric_value(metrics(port), RESCORED) or 0.0
        conflicts0 = metric_value(metrics(port), CONFLICTS) or 0.0
        sink0 = sink_seconds(port)
        started = time.monotonic()
        written0 = workload.rows_written
        if where is None:
            workload.drive(rate, self.mode.phase_s)
        else:
            request = uuid.uuid4().hex
            insert_signal(conn, request, "churn", RESCORE, {"where": where, "reason": "bench"})
            while not _rescored(conn, request):
                workload.drive(rate, 1.0)
                scorer.check_alive()
        seconds = time.monotonic() - started
        caught = wait_until(lambda: caught_up(conn, workload.last_gtid), self.mode.drain_s, 0.05)
        # The share of the phase (its drain too) the pipeline's writer spent writing batches:
        # the stream's rows queue behind the re-score's writes as it nears 1.
        writer_busy = (sink_seconds(port) - sink0) / (time.monotonic() - started)
        fresh = freshness_s(conn, since, stream_only=True)
        invoke = self.endpoints.stats()["operations"].get("InvokeEndpoint", {})
        rescored = (metric_value(metrics(port), RESCORED) or 0.0) - rescored0
        measured = {
            "seconds": seconds,
            "stream_rows": workload.rows_written - written0,
            "caught_up": caught,
            "p50_s": percentile(fresh, 50),
            "p99_s": percentile(fresh, 99),
            "samples": len(fresh),
            "sagemaker_calls": sum(e["calls"] for e in invoke.values()),
            "sagemaker_rows": sum(e["rows"] for e in invoke.values()),
            "rescored_rows": rescored,
            "conflicts": (metric_value(metrics(port), CONFLICTS) or 0.0) - conflicts0,
            "rescore_rows_per_s": rescored / seconds if where is not None else None,
            "writer_busy": writer_busy,
        }
        self.log(f"re-score phase (where {where}): {measured}")
        return measured

    # ------------------------------------------------------------------ one big transaction
    def big_update(self, decoder: str = "fast") -> Row:
        rows = self.mode.big_update_rows
        database = self._database("bigtxn")
        config = self.workdir / f"{database}.toml"
        port = write_scorer_config(
            config, self.server, database, self.endpoints.url, Batching(), decoder
        )
        init_scorer_tables(config)
        conn = self.server.connect(database)
        workload = Workload(conn, seed=7)
        workload.preload(rows, chunk=5000)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            wait_until(lambda: _ready(port, scorer), 60)
            time.sleep(1.0)
            baseline = scorer.meter.rss_mb()
            self.endpoints.reset_stats()
            cpu0 = scorer.meter.cpu_s()
            others0 = self._others_cpu()
            sink0 = sink_seconds(port)
            profiler = (
                Profiler(scorer.process.pid, self.workdir / "bigtxn.spy")
                if self.mode.profile
                else None
            )
            started = time.monotonic()
            with conn.cursor() as cursor:
                cursor.execute("UPDATE churn SET day_mins = day_mins + 1")
            after = _position(conn)
            done = wait_until(lambda: _covers(conn, after), self.mode.drain_s * 4, 0.1)
            elapsed = time.monotonic() - started
            sink_busy = (sink_seconds(port) - sink0) / elapsed
            others = self._others_per_1k(others0, rows)
            if profiler is not None:
                phase = f"cdc-scorer ({decoder} decoder), one {rows:,}-row UPDATE, {self.label}"
                self.scorer_profiles.append(profiler.stop() | {"phase": phase})
            row = Row(
                f"cdc-scorer ({decoder} decoder), one UPDATE transaction, {self.label}",
                f"{rows:,} rows",
                rows,
                e2e_rows_per_s=rows / elapsed if done else None,
                caught_up=done,
                calls_per_1k=1000 * self.endpoints.stats()["total_calls"] / rows,
                cpu_s_per_1k=1000 * (scorer.meter.cpu_s() - cpu0) / rows,
                mariadb_cpu_s_per_1k=others["mariadb"],
                endpoints_cpu_s_per_1k=others["endpoints"],
                peak_rss_mb=scorer.meter.peak_rss_mb,
                sink_busy=sink_busy,
                note=f"RSS {baseline:.0f} MB before the transaction, "
                f"{scorer.meter.peak_rss_mb:.0f} MB peak during it",
            )
            self.rss_trace = [
                (t - started, rss) for t, rss in scorer.meter.samples if t >= started - 2
            ]
            self.log(
                f"big update on {self.label}: {rows:,} rows, "
                f"{_fmt(row.e2e_rows_per_s, 0)} rows/s, {row.note}, caught up={done}"
            )
            return row
        finally:
            scorer.stop()
            conn.close()


IDLE_RATE = 2  # rows/s: a transaction of one row every half second
PRODUCT_LINGER = Batching(linger_ms=200)  # the product's default linger_ms


def idle_phase(bench: Bench) -> Row:
    """One row at a time into idle tables (two pipelines, the product's 200 ms linger): the
    time a lone change waits for a batch that nothing else will fill."""
    seconds = bench.mode.phase_s * 2.5  # quick: 40 transactions for the percentiles
    return bench.scorer_phase(
        "cdc-scorer (one row at a time)", PRODUCT_LINGER, IDLE_RATE, seconds=seconds
    )


RESCORED = 'cdc_scorer_rescore_rows_total{pipeline="churn"}'
CONFLICTS = 'cdc_scorer_rescore_conflicts_total{pipeline="churn"}'


def _rescored(conn: Any, request: str) -> bool:
    """Whether the re-score ``request`` is done (its job among the finished ones)."""
    found = load_checkpoints(conn, ["churn"], decode_binlog_position).get("churn")
    return found is not None and any(j.id == request for j in found.checkpoint.rescores.finished)


def _position(conn: Any) -> Position:
    """The server's position now (the benchmark servers keep GTIDs: MariaDB's or MySQL's)."""
    return current_position(conn, server_info(conn)[0])


def _covers(conn: Any, wanted: Position) -> bool:
    """Every pipeline's checkpoint is at or after ``wanted``."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT position, server_identity FROM cdc_scorer_checkpoint")
        rows = cursor.fetchall()
    return bool(rows) and all(
        position and wanted.transactions_since(decode_binlog_position(identity, position)) == 0
        for position, identity in rows
    )


def _by_model(by_table: dict[str, list[float]]) -> str:
    """The freshness of each model's predictions: the 15 ms SageMaker model's (churn) apart
    from Comprehend's 40 ms (feedback, ~5 % of the rows)."""
    churn, feedback = by_table["churn"], by_table["feedback"]
    if not churn or not feedback:
        return ""
    return (
        f"p50 / p99: churn (SageMaker) {_fmt(percentile(churn, 50), 3)} / "
        f"{_fmt(percentile(churn, 99), 3)} s, feedback (Comprehend) "
        f"{_fmt(percentile(feedback, 50), 3)} / {_fmt(percentile(feedback, 99), 3)} s"
    )


def _ready(port: int, process: Process) -> bool:
    process.check_alive()
    try:
        text = metrics(port)
    except OSError:
        return False
    return "\ncdc_scorer_source_connected 1.0" in text


def _polled_up(conn: Any, since: str) -> bool:
    return _backlog(conn, since) == 0


def _backlog(conn: Any, since: str) -> int:
    """Rows written since ``since`` whose prediction is missing or older than the row."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM churn c LEFT JOIN churn_predictions p ON p.phone = c.phone "
            "WHERE c.updated_at >= %s AND (p.scored_at IS NULL OR p.scored_at < c.updated_at)",
            (since,),
        )
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def run(mode: Mode, out: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-bench-"))
    started = time.monotonic()
    try:
        # A production database keeps its working set in memory (Aurora gives the buffer pool
        # ~3/4 of the instance); the launcher's 128 MB default, fine for tests, made the 1M-row
        # transaction a buffer-pool benchmark (10k rows/s there against 15k with 2 GB).
        launcher = PrivateMariaDB(extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",))
        with launcher as server:
            bench = Bench(mode, workdir, server, launcher.pid)
            try:
                bench.mariadb_write_rate()
                bench.parse_only()
                rows = bench.rows
                for rate in mode.rates:
                    rows.append(bench.scorer_phase("cdc-scorer (fast decoder)", Batching(), rate))
                rows.append(idle_phase(bench))
                # Flat out, both decoders in the same run: where the ceiling is, and what the
                # decoder changes of it.
                for decoder in DECODERS:
                    rows.append(
                        bench.scorer_phase(
                            f"cdc-scorer ({decoder} decoder)",
                            Batching(),
                            None,
                            mode.flat_out_rows,
                            decoder,
                        )
                    )
                row_at_a_time = Batching(max_rows=1, linger_ms=0, max_in_flight=1)
                rows.append(
                    bench.scorer_phase(
                        "Row-at-a-time (Aurora ML non-batched)", row_at_a_time, mode.rates[0]
                    )
                )
                for rate in mode.rates[:2]:
                    rows.append(bench.polling_phase(rate))
                rows.append(bench.big_update())
                rescore = bench.rescore_phase(RESCORE_STREAM_RATE)
                backfill = bench.backfill_phase(RESCORE_STREAM_RATE)
                # The same parse-only and big-UPDATE phases on MySQL, in the same run.
                mysql_note = _mysql_phases(mode, workdir, bench)
                # And on PostgreSQL (pgoutput), with its own mixed workload.
                postgresql_note = _postgresql_phases(mode, workdir, bench)
                # Bedrock against its budget: minutes by definition, so not in smoke mode.
                bedrock_note = _bedrock_phases(mode, workdir, server, out)
                # Kafka against the binlog, and groups (benchmarks/kafka.py): its own MySQL
                # and Kafka stack, the same endpoints.
                kafka_note = _kafka_phases(mode, out, bench)
            finally:
                bench.endpoints.close()
            results = {
                "mode": mode.name,
                "seconds": time.monotonic() - started,
                "machine": _machine(server),
                "rows": [{k: v for k, v in asdict(r).items() if k != "freshness"} for r in rows],
                "decode": [asdict(d) | {"rows_per_s": d.rows_per_s} for d in bench.decode],
                "profile": bench.profile_text,
                "mysql": mysql_note,
                "postgresql": postgresql_note,
                "bedrock": bedrock_note,
                "kafka": kafka_note,
                "scorer_profiles": bench.scorer_profiles,
                "rescore": rescore,
                "backfill": backfill,
            }
            write_report(results, rows, bench, out)
            return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _mysql_phases(mode: Mode, workdir: Path, bench: Bench) -> str:
    """Parse-only and the one big UPDATE on MySQL (GTIDs on, the same buffer pool); their rows
    join ``bench``'s. Returns the MySQL version, or why it did not run."""
    try:
        distribution = ensure_mysql()
    except MysqlUnavailable as exc:
        bench.log(f"MySQL phases skipped: {exc}")
        return f"not run: {exc}"
    launcher = PrivateMySQL(
        gtid=True,
        distribution=distribution,
        extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",),
    )
    with launcher as server:
        mysql = Bench(mode, workdir, server, launcher.pid, bench.endpoints)
        mysql.parse_only()
        bench.decode += mysql.decode
        bench.rows += mysql.rows
        bench.rows.append(mysql.big_update())
        return distribution.version()


def _postgresql_phases(mode: Mode, workdir: Path, bench: Bench) -> str:
    """Parse-only, the one big UPDATE and the mixed workload on PostgreSQL; their rows join
    ``bench``'s. Returns the PostgreSQL version, or why it did not run."""
    from benchmarks.postgresql import PgBench
    from cdc_scorer.local.postgres import PostgresUnavailable

    try:
        with PgBench(mode, workdir, bench.endpoints, bench.log) as postgresql:
            postgresql.parse_only()
            bench.decode += postgresql.decode
            bench.rows.append(postgresql.big_update(Row))
            bench.rows += postgresql.mixed(Row)
            return f"PostgreSQL {postgresql.version()}"
    except PostgresUnavailable as exc:
        bench.log(f"PostgreSQL phases skipped: {exc}")
        return f"not run: {exc}"


def _bedrock_phases(mode: Mode, workdir: Path, server: DatabaseServer, out: Path) -> str:
    """benchmarks/bedrock.py on this run's MariaDB; its report is bedrock-benchmarks.md."""
    if mode.name == "smoke":
        return "not run in smoke mode (each phase measures a minute)"
    import asyncio

    from benchmarks.bedrock import run_phases, write

    rows = asyncio.run(run_phases(server, workdir))
    write(rows, out)
    return f"{out / 'bedrock-benchmarks.md'}"


def _kafka_phases(mode: Mode, out: Path, bench: Bench) -> str:
    """benchmarks/kafka.py in the same mode; its report is kafka-benchmarks.md (smoke mode:
    not run here, tests/e2e/test_benchmark_smoke.py runs it on the suite's servers)."""
    if mode.name == "smoke":
        return "not run in smoke mode"
    from benchmarks.kafka import MODES as KAFKA_MODES
    from benchmarks.kafka import run_standalone

    note = run_standalone(KAFKA_MODES[mode.name], out, bench.endpoints)
    bench.log(f"Kafka benchmarks: {note}")
    return note


def _machine(server: DatabaseServer) -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute("SELECT VERSION(), @@innodb_buffer_pool_size")
        version, pool = cursor.fetchone() or ("", 0)
    conn.close()
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory_gb": f"{int(memory) / 1024 / 1024:.0f}",
        "python": platform.python_version(),
        "mariadb": str(version),
        "buffer_pool": f"{int(pool) / 2**20:,.0f} MB",
        "os": platform.platform(),
    }


def write_report(results: dict[str, Any], rows: list[Row], bench: Bench, out: Path) -> None:
    from benchmarks.report import render

    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(
        portable(json.dumps(results, indent=2, default=str) + "\n")
    )
    render(results, rows, bench, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument(
        "--out", help="where benchmarks.md and the plots go (default: docs, docs/full for full)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="A/B: run --phases for git revision REV and for the working tree, alternated in "
        "this run, and print the ratios (benchmarks/ab.py) instead of the full report",
    )
    parser.add_argument(
        "--phases",
        default="rate,flat,idle,big-update",
        help="with --baseline: comma-separated, of rate, flat, idle, big-update, "
        "big-update-mysql, rescore, backfill, many, postgresql",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --baseline")
    args = parser.parse_args()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    if args.baseline is not None:
        from benchmarks.ab import run_ab

        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
        print(run_ab(MODES[args.mode], phases, args.baseline, args.rounds), end="")
        return
    if args.out is None:
        args.out = "docs/full" if args.mode == "full" else "docs"
    mode = MODES[args.mode]
    results = run(mode, Path(args.out))
    print(f"[bench] done in {results['seconds']:.0f} s: {Path(args.out) / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
