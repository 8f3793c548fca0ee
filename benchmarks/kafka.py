"""The Kafka path against the binlog path, in one run on one MySQL:

- **rows per scorer CPU-second**, the same flat-out workload scored through the binlog and
  through Debezium's topics (target: the Kafka path at >= 70 % of the binlog's), with what
  the Connect worker and the broker spend per row beside it;
- **end-to-end freshness** p50/p99 at 1,000 rows/s, on the database's clock: the row's write
  (``updated_at``) → its prediction committed (``scored_at``), both paths;
- **a group of one, two and three processes** on the same topics (6 partitions), each
  starting from the topic's beginning with empty prediction and offset tables: each process's
  partitions, rows and CPU, and the group's rows per second against one process.

    python -m benchmarks.kafka [--mode smoke|quick|full] [--out docs]

``make bench`` runs it after the main benchmark (docs/kafka-benchmarks.md). Everything is
real: MySQL (Debian sid's, unpacked), the KRaft broker and the Connect worker with Debezium's
MySQL connector (``cdc_scorer/local/kafka``), ``cdc-scorer serve-models`` with the main
benchmark's latency profile, and each scorer as its own ``cdc-scorer run`` process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from confluent_kafka import Consumer, TopicPartition

from benchmarks.harness import (
    Batching,
    ModelEndpoints,
    Process,
    ProcessMeter,
    Workload,
    create_bench_database,
    db_now,
    freshness_s,
    init_scorer_tables,
    metric_value,
    metrics,
    percentile,
    portable,
    scorer_process,
    wait_until,
    write_scorer_config,
)
from benchmarks.run import _covers, _position, _ready
from cdc_scorer.local.kafka import KafkaStack, KafkaUnavailable
from cdc_scorer.local.kafka.connectors import mysql_connector
from cdc_scorer.local.mysql_dist import MysqlUnavailable, ensure_mysql
from cdc_scorer.local.servers import DatabaseServer, PrivateMySQL
from cdc_scorer.stores.offsets import OFFSETS_TABLE

PARTITIONS = 6
PIPELINES = ("churn", "feedback")
# The broker waits this long for more members of a new group before its first assignment
# (Kafka's default): processes started together share the backlog from the start.
GROUP_JOIN_MS = 3000


@dataclass(frozen=True)
class KafkaMode:
    name: str
    flat_out_rows: int  # the workload both paths score flat out
    fresh_rate: int  # rows/s of the freshness phase
    fresh_s: float  # its writing time
    preload_rows: int  # churn rows before the phases (Debezium's snapshot of them)
    group_rows: int  # more changes written before the group phases
    drain_s: float  # how long a phase may take to catch up


MODES = {
    "smoke": KafkaMode("smoke", 600, 200, 2, 200, 400, 90),
    "quick": KafkaMode("quick", 50_000, 1000, 10, 5_000, 20_000, 240),
    "full": KafkaMode("full", 100_000, 1000, 60, 20_000, 100_000, 600),
}


@dataclass
class PathResult:
    """One path (binlog or Kafka) on one workload."""

    path: str
    load: str
    rows: int
    seconds: float
    caught_up: bool
    scorer_cpu_s: float
    rows_per_cpu_s: float | None
    others_cpu_s_per_1k: dict[str, float] = field(default_factory=dict)
    p50_s: float | None = None
    p99_s: float | None = None
    samples: int = 0


@dataclass
class Member:
    partitions: dict[str, int]
    rows: int
    cpu_s: float


@dataclass
class GroupResult:
    processes: int
    messages: int
    seconds: float  # first offset committed → every offset at the end of its partition
    messages_per_s: float
    rows_per_s: float
    members: list[Member]


Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"[bench kafka {time.strftime('%H:%M:%S')}] {message}", flush=True)


class KafkaBench:
    def __init__(
        self,
        mode: KafkaMode,
        workdir: Path,
        server: DatabaseServer,
        stack: KafkaStack,
        endpoints: ModelEndpoints,
        server_pid: int | None = None,
        log: Log = _log,
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.server = server
        self.stack = stack
        self.endpoints = endpoints
        self.log = log
        self.others = {
            **({"mysql": ProcessMeter(server_pid)} if server_pid else {}),
            "endpoints": ProcessMeter(endpoints.pid),
            **{name: ProcessMeter(pid) for name, pid in stack.pids().items()},
        }
        self.paths: list[PathResult] = []
        self.groups: list[GroupResult] = []

    # ------------------------------------------------------------------ the binlog path
    def binlog_path(self) -> None:
        database = f"kb_{uuid.uuid4().hex[:6]}"
        create_bench_database(self.server, database)
        config = self.workdir / f"{database}.toml"
        port = write_scorer_config(config, self.server, database, self.endpoints.url, Batching())
        init_scorer_tables(config)
        conn = self.server.connect(database)
        workload = Workload(conn, seed=5, gtid_query=None)
        workload.preload(self.mode.preload_rows)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            _wait_ready(port, scorer)

            # The preloaded rows are not the binlog scorer's (a new pipeline without a
            # snapshot starts at the log's end); each phase counts the rows written in it.
            since = db_now(conn)

            def caught_up() -> Callable[[], bool]:
                # The position is taken once, when the writing stopped: the scorer's own
                # commits move the server's position on, past any checkpoint it can write.
                wanted = _position(conn)

                def done() -> bool:
                    scorer.check_alive()
                    return _backlog(conn, since) == 0 and _covers(conn, wanted)

                return done

            self.paths.append(self._phase("binlog", scorer, conn, workload, None, caught_up))
            self.paths.append(
                self._phase("binlog", scorer, conn, workload, self.mode.fresh_rate, caught_up)
            )
        finally:
            scorer.stop()
            conn.close()

    # ------------------------------------------------------------------ the Kafka path
    def kafka_path(self) -> None:
        database = f"kk_{uuid.uuid4().hex[:6]}"
        create_bench_database(self.server, database)
        conn = self.server.connect(database)
        workload = Workload(conn, seed=5, gtid_query=None)
        workload.preload(self.mode.preload_rows)
        prefix = f"b{uuid.uuid4().hex[:6]}"
        self.stack.put_connector(
            prefix,
            {
                **mysql_connector(
                    self.server,
                    prefix=prefix,
                    database=database,
                    tables=list(PIPELINES),
                    bootstrap=self.stack.bootstrap_servers,
                    partitions=PARTITIONS,
                    keys={"churn": "phone"},
                    server_id=6100 + os.getpid() % 800,
                ),
            },
        )
        self.topics = [f"{prefix}.{database}.{table}" for table in PIPELINES]
        config = self.workdir / f"{database}.toml"
        port = self._kafka_config(config, database, prefix, f"bench-{prefix}-1")
        init_scorer_tables(config)
        scorer = scorer_process(config, self.workdir / f"{database}.log")
        try:
            _wait_ready(port, scorer)

            def done() -> bool:
                scorer.check_alive()
                return _backlog(conn) == 0 and self._offsets_at_end(conn)

            if not wait_until(done, self.mode.drain_s):
                raise RuntimeError("the Kafka scorer did not score Debezium's snapshot")
            self.paths.append(self._phase("kafka", scorer, conn, workload, None, lambda: done))
            self.paths.append(
                self._phase("kafka", scorer, conn, workload, self.mode.fresh_rate, lambda: done)
            )
        finally:
            scorer.stop()
        # More changes for the group phases, written while no scorer runs.
        workload.drive(None, 3600, self.mode.group_rows)
        self._settle()
        self._group_phases(conn, database, prefix)
        conn.close()
        self.stack.delete_connector(prefix)

    def _kafka_config(self, path: Path, database: str, prefix: str, group: str) -> int:
        port = write_scorer_config(path, self.server, database, self.endpoints.url, Batching())
        config = tomllib.loads(path.read_text())
        source = {k: v for k, v in config["source"].items() if k != "binlog"}
        config["source"] = source | {
            "debezium": {
                "bootstrap_servers": self.stack.bootstrap_servers,
                "topic_prefix": prefix,
                "group_id": group,
                "session_timeout_ms": 10000,
            }
        }
        path.write_text(tomli_w.dumps(config))
        return port

    def _phase(
        self,
        path: str,
        scorer: Process,
        conn: Any,
        workload: Workload,
        rate: int | None,
        caught_up: Callable[[], Callable[[], bool]],
    ) -> PathResult:
        """The workload at ``rate`` rows/s for the freshness time, or flat out for the
        flat-out rows; the scorer's CPU from the first write until ``caught_up()``, made
        when the writing stopped, is true."""
        since = db_now(conn)
        cpu0 = scorer.meter.cpu_s()
        others0 = {name: meter.cpu_s() for name, meter in self.others.items()}
        written0 = workload.rows_written
        started = time.monotonic()
        if rate is None:
            workload.drive(None, 3600, self.mode.flat_out_rows)
        else:
            workload.drive(rate, self.mode.fresh_s)
        caught = wait_until(caught_up(), self.mode.drain_s, poll_s=0.05)
        seconds = time.monotonic() - started
        rows = workload.rows_written - written0
        cpu = scorer.meter.cpu_s() - cpu0
        fresh = freshness_s(conn, since)
        result = PathResult(
            path,
            "flat out" if rate is None else f"{rate:,} rows/s",
            rows,
            seconds,
            caught,
            cpu,
            rows / cpu if cpu else None,
            {
                name: 1000 * (meter.cpu_s() - others0[name]) / rows
                for name, meter in self.others.items()
            },
            percentile(fresh, 50),
            percentile(fresh, 99),
            len(fresh),
        )
        self.log(
            f"{path} @ {result.load}: {rows:,} rows in {seconds:.1f} s, caught up={caught}, "
            f"scorer {cpu:.2f} CPU-s ({_fmt(result.rows_per_cpu_s, 0)} rows/CPU-s), "
            f"p50 {_fmt(result.p50_s)} s p99 {_fmt(result.p99_s)} s"
        )
        return result

    # ------------------------------------------------------------------ the group
    def _group_phases(self, conn: Any, database: str, prefix: str) -> None:
        messages = sum(sum(_end_offsets(self.stack, topic).values()) for topic in self.topics)
        for processes in (1, 2, 3):
            _empty_own_tables(conn)
            group = f"bench-{prefix}-{processes}x{uuid.uuid4().hex[:4]}"
            scorers: list[tuple[Process, int]] = []
            for n in range(processes):
                config = self.workdir / f"{database}-g{processes}-{n}.toml"
                port = self._kafka_config(config, database, prefix, group)
                log = self.workdir / f"{database}-g{processes}-{n}.log"
                scorers.append((scorer_process(config, log), port))
            try:
                first = _first_commit(conn, scorers, self.mode.drain_s)
                # CPU from the first commit on: not each process's start-up.
                cpu0 = [process.meter.cpu_s() for process, _ in scorers]

                def done(scorers: list[tuple[Process, int]] = scorers) -> bool:
                    for process, _ in scorers:
                        process.check_alive()
                    return self._offsets_at_end(conn)

                caught = wait_until(done, self.mode.drain_s, poll_s=0.05)
                finished = time.monotonic()
                if not caught:
                    raise RuntimeError(f"a group of {processes} did not reach the topics' end")
                members = [
                    _member(process, port, cpu)
                    for (process, port), cpu in zip(scorers, cpu0, strict=True)
                ]
            finally:
                for process, _ in scorers:
                    process.stop()
            seconds = finished - first
            rows = sum(m.rows for m in members)
            result = GroupResult(
                processes, messages, seconds, messages / seconds, rows / seconds, members
            )
            self.groups.append(result)
            self.log(
                f"group of {processes}: {messages:,} messages, {rows:,} rows in {seconds:.1f} s "
                f"({result.messages_per_s:,.0f} messages/s); "
                + "; ".join(f"{m.partitions} {m.rows:,} rows {m.cpu_s:.1f} CPU-s" for m in members)
            )

    def _offsets_at_end(self, conn: Any) -> bool:
        """Every partition's stored next offset is its end offset (all read and committed)."""
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT topic, kafka_partition, next_offset FROM {OFFSETS_TABLE}")
            stored = {(str(t), int(p)): int(o) for t, p, o in cursor.fetchall()}
        for topic in self.topics:
            for partition, end in _end_offsets(self.stack, topic).items():
                if end and stored.get((topic, partition)) != end:
                    return False
        return True

    def _settle(self) -> None:
        """Until Debezium has written every change: the topics' end offsets stop moving."""
        last: dict[str, dict[int, int]] = {}
        while True:
            now = {topic: _end_offsets(self.stack, topic) for topic in self.topics}
            if now == last:
                return
            last = now
            time.sleep(2.0)


def _member(process: Process, port: int, cpu0: float) -> Member:
    text = metrics(port)
    rows = sum(
        int(metric_value(text, f'cdc_scorer_rows_scored_total{{pipeline="{p}"}}') or 0)
        + int(metric_value(text, f'cdc_scorer_rows_deleted_total{{pipeline="{p}"}}') or 0)
        for p in PIPELINES
    )
    partitions = {
        p: int(metric_value(text, f'cdc_scorer_source_partitions{{pipeline="{p}"}}') or 0)
        for p in PIPELINES
    }
    return Member(partitions, rows, process.meter.cpu_s() - cpu0)


def _first_commit(conn: Any, scorers: list[tuple[Process, int]], timeout_s: float) -> float:
    """When the group's first offset row appeared (the processes started and joined)."""

    def committed() -> bool:
        for process, _ in scorers:
            process.check_alive()
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {OFFSETS_TABLE} WHERE next_offset > 0")
            (count,) = cursor.fetchone() or (0,)
        return int(count) > 0

    if not wait_until(committed, timeout_s, poll_s=0.02):
        raise RuntimeError("no offset was committed")
    return time.monotonic()


def _empty_own_tables(conn: Any) -> None:
    """The scorer's tables emptied: predictions, dead letters, offsets and model versions —
    the next group starts at the topics' beginning, as a new pipeline does."""
    with conn.cursor() as cursor:
        cursor.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
        tables = [str(t) for (t, _) in cursor.fetchall() if str(t) not in PIPELINES]
        for table in tables:
            cursor.execute(f"DELETE FROM `{table}`")
    conn.commit()


def _end_offsets(stack: KafkaStack, topic: str) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "bench-probe"})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        probe.close()


def _backlog(conn: Any, since: str | None = None) -> int:
    """Rows (written since ``since``) whose prediction is missing or older than the row, and
    predictions of deleted rows (churn and feedback)."""
    churn = feedback = ""
    if since is not None:
        churn, feedback = " AND c.updated_at >= %(since)s", " AND f.updated_at >= %(since)s"
    conn.commit()  # a new snapshot of the tables (REPEATABLE READ)
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COUNT(*) FROM churn c LEFT JOIN churn_predictions p "
            "ON p.phone = c.phone WHERE (p.scored_at IS NULL OR p.scored_at < c.updated_at)"
            f"{churn}) + "
            "(SELECT COUNT(*) FROM churn_predictions p LEFT JOIN churn c "
            "ON c.phone = p.phone WHERE c.phone IS NULL) + "
            "(SELECT COUNT(*) FROM feedback f LEFT JOIN feedback_predictions p "
            "ON p.id = f.id WHERE (p.scored_at IS NULL OR p.scored_at < f.updated_at)"
            f"{feedback})",
            {"since": since},
        )
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _wait_ready(port: int, scorer: Process) -> None:
    if not wait_until(lambda: _ready(port, scorer), 90):
        raise RuntimeError(f"scorer not ready: {scorer.log_path.read_text()[-2000:]}")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# ---------------------------------------------------------------------------- the report
def report(bench: KafkaBench, mode: KafkaMode, seconds: float, version: str) -> str:
    flat = {p.path: p for p in bench.paths if p.load == "flat out"}
    ratio = (
        flat["kafka"].rows_per_cpu_s / flat["binlog"].rows_per_cpu_s
        if "kafka" in flat
        and "binlog" in flat
        and flat["kafka"].rows_per_cpu_s
        and flat["binlog"].rows_per_cpu_s
        else None
    )
    lines = [
        "# Kafka path benchmarks",
        "",
        f"`python -m benchmarks.kafka --mode {mode.name}` (run by `make bench`), "
        f"{seconds:.0f} s, on {os.cpu_count()} CPUs; {version}; Kafka and Debezium from "
        "`cdc_scorer/local/kafka/pom.xml`; the model endpoints with the main benchmark's "
        "latency profile (SageMaker 15 ms + 0.02 ms/row, Comprehend 40 ms). Every number "
        "comes from this one run; compare them only with each other.",
        "",
        "## Rows per scorer CPU-second, and freshness",
        "",
        "The same workload (100-row transactions: 50 % insert, 40 % update, 10 % delete, "
        "+5 % feedback) on the same MySQL, scored through the binlog and through Debezium's "
        f"topics ({PARTITIONS} partitions, one scorer process). CPU: the scorer's, from the "
        "first write until every row's prediction is committed; beside it what the other "
        "processes spent per 1,000 rows (`connect` is the Connect worker running Debezium, "
        "`broker` Kafka). Freshness: the row's write → its prediction committed, both on the "
        "database's clock.",
        "",
        "| path | load | rows | caught up | scorer CPU-s | rows per CPU-s | p50 s | p99 s | "
        "other CPU-s per 1k rows |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for p in bench.paths:
        others = ", ".join(f"{k} {v:.3f}" for k, v in p.others_cpu_s_per_1k.items())
        lines.append(
            f"| {p.path} | {p.load} | {p.rows:,} | {'yes' if p.caught_up else 'NO'} | "
            f"{p.scorer_cpu_s:.2f} | {_fmt(p.rows_per_cpu_s, 0)} | {_fmt(p.p50_s)} | "
            f"{_fmt(p.p99_s)} | {others} |"
        )
    lines += [
        "",
        f"**The Kafka path scores {_fmt(100 * ratio if ratio else None, 0)} % of the binlog "
        "path's rows per scorer CPU-second** (target: >= 70 %).",
        "",
        "Both paths follow the same writer, so their batches are as large as what arrives "
        "between two of them: each gets its changes within tens of milliseconds (the "
        "connector files' `poll.interval.ms` = 50; the scorer takes what its consumer has "
        "queued without waiting for a full batch), so at 1,000 rows/s batches are small and "
        "cost the most CPU per row. Flat out, the Connect worker (on the same two cores) is "
        "the slowest part: the Kafka path's p50 is how far Debezium fell behind the writer.",
        "",
        "## A group of one, two and three processes",
        "",
        "Each group starts with empty prediction and offset tables and reads the topics from "
        "their beginning (Debezium's snapshot and every change written since: "
        "a backlog), all its processes started at once (the broker waits "
        f"{GROUP_JOIN_MS} ms, Kafka's default, for a new group's members before the first "
        "assignment); time from the first committed offset to every partition's offset at "
        "its end. Rows: the predictions each process wrote or deleted (a batch keeps the last "
        "version of a key, so rows are fewer than messages and vary with the batching); "
        "CPU-s from the first commit on.",
        "",
        "| processes | messages | seconds | group messages/s | against one | "
        "each process: partitions (churn/feedback), rows, CPU-s |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    one = bench.groups[0].messages_per_s if bench.groups else None
    for g in bench.groups:
        members = "; ".join(
            f"{m.partitions['churn']}/{m.partitions['feedback']}, {m.rows:,}, {m.cpu_s:.1f}"
            for m in g.members
        )
        against = f"{g.messages_per_s / one:.2f}x" if one else "-"
        lines.append(
            f"| {g.processes} | {g.messages:,} | {g.seconds:.1f} | {g.messages_per_s:,.0f} | "
            f"{against} | {members} |"
        )
    lines += [
        "",
        f"On this machine's {os.cpu_count()} cores the processes share the CPU with MySQL, "
        "the broker, the Connect worker and the model endpoints: a group spreads the "
        "partitions and the work (the shares above), and the total grows only as far as "
        "free cores allow.",
        "",
    ]
    return "\n".join(lines)


def run(
    mode: KafkaMode,
    out: Path,
    server: DatabaseServer,
    stack: KafkaStack,
    endpoints: ModelEndpoints,
    server_pid: int | None = None,
    log: Log = _log,
) -> dict[str, Any]:
    """Every phase on ``server`` and ``stack``; writes kafka-benchmarks.md/.json in ``out``."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-bench-kafka-"))
    try:
        bench = KafkaBench(mode, workdir, server, stack, endpoints, server_pid, log)
        bench.binlog_path()
        bench.kafka_path()
        conn = server.connect()
        with conn.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            (version,) = cursor.fetchone() or ("",)
        conn.close()
        seconds = time.monotonic() - started
        results = {
            "mode": mode.name,
            "seconds": seconds,
            "mysql": str(version),
            "paths": [asdict(p) for p in bench.paths],
            "groups": [asdict(g) for g in bench.groups],
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "kafka-benchmarks.json").write_text(portable(json.dumps(results, indent=2) + "\n"))
        text = report(bench, mode, seconds, f"MySQL {version}")
        (out / "kafka-benchmarks.md").write_text(portable(text))
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_standalone(mode: KafkaMode, out: Path, endpoints: ModelEndpoints | None = None) -> str:
    """``run`` on servers of its own (MySQL, the Kafka stack); the report's path, or why the
    benchmark could not run."""
    try:
        distribution = ensure_mysql()
    except MysqlUnavailable as exc:
        return f"not run: {exc}"
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-bench-kafka-"))
    own = endpoints is None
    launcher = PrivateMySQL(gtid=True, distribution=distribution)
    try:
        with (
            launcher as server,
            KafkaStack(partitions=PARTITIONS, initial_rebalance_delay_ms=GROUP_JOIN_MS) as stack,
        ):
            models = endpoints or ModelEndpoints(workdir)
            try:
                run(mode, out, server, stack, models, launcher.pid)
            finally:
                if own:
                    models.close()
        return str(out / "kafka-benchmarks.md")
    except KafkaUnavailable as exc:
        return f"not run: {exc}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    print(f"[bench kafka] {run_standalone(MODES[args.mode], Path(args.out))}")


if __name__ == "__main__":
    main()
