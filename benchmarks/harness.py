"""Benchmark parts: the environment, the workload driver, a process meter, the measurements.

Everything real: the project's private MariaDB, ``cdc-scorer serve-models`` as its own process
with an emulated latency profile, ``cdc-scorer run`` as its own process (so its CPU time and RSS
are its own), and a writer on its own connection. Freshness is measured on one clock — the
database's: prediction ``scored_at`` - source ``updated_at``, both ``NOW(6)`` of the server.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL,
    LABEL_COLUMN,
    ChurnRowGenerator,
    FeedbackGenerator,
)
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.servers import DatabaseServer, free_port

CLI = [sys.executable, "-m", "cdc_scorer"]
# The scorer the phases run: the working tree's, or a baseline revision's (benchmarks/ab.py).
# The model endpoints and the measuring stay the working tree's, so both are measured alike.
_scorer_cli: list[str] = CLI


def scorer_cli() -> list[str]:
    return _scorer_cli


@contextmanager
def running_scorer(cli: list[str]) -> Iterator[None]:
    """Phases inside run the scorer (``init``, ``run``) as ``cli``."""
    global _scorer_cli
    previous, _scorer_cli = _scorer_cli, cli
    try:
        yield
    finally:
        _scorer_cli = previous


CHURN_COLUMNS = (*FEATURE_COLUMNS, LABEL_COLUMN)

# The blog's tables (the same DDL as the demo's) plus what a benchmark needs: the time of the
# row's last write on the database's clock, indexed, and an index on the natural key.
_UPDATED_AT = (
    "ADD COLUMN updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) "
    "ON UPDATE CURRENT_TIMESTAMP(6), ADD KEY updated_at (updated_at)"
)
BENCH_DDL = (
    CHURN_TABLE_DDL,
    f"ALTER TABLE churn {_UPDATED_AT}, ADD KEY phone (phone(16))",
    FEEDBACK_TABLE_DDL,
    f"ALTER TABLE feedback {_UPDATED_AT}",
)

# Emulated model latency: SageMaker 15 ms + 0.02 ms/row, Comprehend 40 ms a batch.
LATENCY_PROFILE = {
    "sagemaker": {"latency_ms": 15, "latency_per_row_ms": 0.02},
    "comprehend": {"latency_ms": 40},
}


@dataclass(frozen=True)
class Batching:
    max_rows: int = 500  # the product default for SageMaker pipelines
    linger_ms: float = 50
    max_in_flight: int = 4

    @property
    def feedback_rows(self) -> int:
        return min(25, self.max_rows)


ROOT = Path(__file__).resolve().parents[1]


def portable(text: str) -> str:
    """A report's text without this machine's paths: files of the checkout relative to it,
    installed packages from their package on (``pymysqlreplication/row_event.py``)."""
    text = re.sub(r"/\S*?/site-packages/", "", text)
    return text.replace(f"{ROOT}/", "").replace(str(ROOT), ".")


def create_bench_database(server: DatabaseServer, database: str) -> None:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        cursor.execute(f"USE {database}")
        for statement in BENCH_DDL:
            cursor.execute(statement)
    conn.close()


def _source(source: dict[str, Any], decoder: str) -> dict[str, Any]:
    """``[source]`` with its log's section: the binlog's (with ``decoder``), or pgoutput's for
    engine postgresql (``source`` may carry either section's keys as a sub-dict)."""
    source = dict(source)
    name = "pgoutput" if source.get("engine") == "postgresql" else "binlog"
    feed: dict[str, Any] = {"heartbeat_interval_s": 0.5, "queue_max_rows": 2000}
    if name == "binlog":
        feed["decoder"] = decoder
    return {**source, name: {**feed, **source.pop(name, {})}}


def write_scorer_config(
    path: Path,
    server: DatabaseServer | PostgresServer,
    database: str,
    endpoint_url: str,
    batching: Batching,
    decoder: str = "fast",
    churn: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
) -> int:
    """Write a config for ``database`` (``churn``: more keys of the churn pipeline; ``source``:
    more keys of ``[source]``, e.g. PostgreSQL's engine and slot; ``top``: more sections, e.g.
    ``aws`` or ``pricing``); returns its operations port."""
    http_port = free_port()
    batching_keys = {"linger_ms": batching.linger_ms, "max_in_flight": batching.max_in_flight}
    path.write_text(
        local_scorer_config(
            port=server.port,
            database=database,
            endpoint_url=endpoint_url,
            http_port=http_port,
            overrides={
                "shutdown_grace_s": 60,
                "source": _source(source or {}, decoder),
                "aws": {"call_timeout_s": 60, **(top or {}).get("aws", {})},
                **{k: v for k, v in (top or {}).items() if k != "aws"},
                "pipelines": {
                    "churn": {
                        "snapshot": "never",
                        "batching": batching_keys | {"max_rows": batching.max_rows},
                        **(churn or {}),
                    },
                    "feedback": {
                        "snapshot": "never",
                        "batching": batching_keys | {"max_rows": batching.feedback_rows},
                    },
                },
            },
        )
    )
    return http_port


def init_scorer_tables(config: Path) -> None:
    subprocess.run(
        [*scorer_cli(), "init", "--config", str(config)], check=True, capture_output=True
    )


# ---------------------------------------------------------------------------- processes
class ProcessMeter(threading.Thread):
    """CPU seconds and RSS of a process, sampled from /proc every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self.samples: list[tuple[float, float]] = []  # (monotonic time, RSS MB)
        self._halt = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return 0.0

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            rss = self.rss_mb()
            self.samples.append((time.monotonic(), rss))
            self.peak_rss_mb = max(self.peak_rss_mb, rss)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class ModelEndpoints:
    """``cdc-scorer serve-models`` in its own process, with the latency profile."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The local S3 of the batch jobs (backfills), beside the endpoints.
        self.s3_port = free_port()
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self._log = (workdir / "endpoints.log").open("w")
        self._process = subprocess.Popen(
            [
                *CLI,
                "serve-models",
                "--port",
                str(self.port),
                "--s3-port",
                str(self.s3_port),
                "--faults",
                json.dumps(LATENCY_PROFILE),
            ],
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("model endpoints did not start") from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self._process.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_local/stats", timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def reset_stats(self) -> None:
        request = urllib.request.Request(f"{self.url}/_local/stats/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)
        self._log.close()


class Process:
    """A child process with its log in a file and a meter on it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self._log = log.open("w")
        self.log_path = log
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=self._log, env={**os.environ, **(env or {})}
        )
        self.meter = ProcessMeter(self.process.pid)
        self.meter.start()

    def alive(self) -> bool:
        """True while the process runs; raises with its log's end once it has exited."""
        self.check_alive()
        return True

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.log_path.stem} exited {self.process.returncode}: "
                f"{self.log_path.read_text()[-2000:]}"
            )

    def stop(self) -> None:
        self.meter.stop()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def scorer_process(config: Path, log: Path) -> Process:
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    command = [*scorer_cli(), "run", "--config", str(config), "--log-format", "json"]
    return Process(command, log, env)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_value(text: str, sample: str) -> float | None:
    """The value of one sample (``name{labels}`` exactly as exposed) in a /metrics text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


SINK_SECONDS = 'cdc_scorer_sink_write_duration_seconds_sum{pipeline="churn"}'


def sink_seconds(port: int) -> float:
    """Seconds the churn pipeline's database connection has spent writing batches."""
    return metric_value(metrics(port), SINK_SECONDS) or 0.0


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


class Profiler:
    """py-spy sampling a running process (all threads, without pausing it) until stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.error = ""
        exe = Path(sys.executable).parent / "py-spy"
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [
                    str(exe),
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--rate",
                    "100",
                    "--nonblocking",
                    # Only the thread holding the GIL: where the CPU goes (without it a thread
                    # waiting for the GIL is sampled in the frame it waits in).
                    "--gil",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            self._process, self.error = None, str(exc)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the summary: samples, top functions by own and inclusive samples."""
        if self._process is None:
            return {"error": self.error}
        self._process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        _, stderr = self._process.communicate(timeout=60)
        if not self.out.exists():
            return {"error": stderr.decode(errors="replace")[-500:]}
        return summarise_profile(self.out.read_text())


def summarise_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Own and inclusive sample shares per function, from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the thread
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    share = (lambda c: c / total) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "own": [(f, share(c)) for f, c in own.most_common(top)],
        "inclusive": [
            (f, share(c)) for f, c in inclusive.most_common() if not f.startswith(_PLUMBING)
        ][:top],
    }


# Frames every sample passes through: thread and event-loop plumbing, not where time goes.
_PLUMBING = (
    "Thread.",
    "_worker ",
    "_WorkItem.run",
    "<module>",
    "_run_code",
    "_run_module_as_main",
    "main (cdc_scorer/cli",
    "_run (cdc_scorer/cli",
    "run (asyncio",
    "Runner.run",
    "BaseEventLoop.",
    "Handle._run",
)


def _frame(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/cdc_scorer/" in path:
        path = "cdc_scorer/" + path.split("/cdc_scorer/", 1)[1]
    return f"{name} ({path})"


# ---------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """The application: churn inserts (50 %), updates of model inputs (40 %), deletes (10 %),
    and a feedback text for every 20 churn changes."""

    conn: Any
    seed: int = 1
    live: list[str] = field(default_factory=list)
    rows_written: int = 0
    last_gtid: str = ""
    # MariaDB's last GTID of the session, for ``caught_up``; None where the server has none
    # (MySQL: its benchmarks compare positions instead).
    gtid_query: str | None = "SELECT @@last_gtid"

    def __post_init__(self) -> None:
        self._churn = ChurnRowGenerator(self.seed)
        self._feedback = FeedbackGenerator(self.seed)
        self._rng = random.Random(self.seed)
        self._insert = (
            f"INSERT INTO churn ({', '.join(CHURN_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(CHURN_COLUMNS))})"
        )

    def preload(self, rows: int, chunk: int = 2000) -> None:
        """Rows that exist before the measured phase (multi-row INSERTs)."""
        with self.conn.cursor() as cursor:
            done = 0
            while done < rows:
                n = min(chunk, rows - done)
                batch = [self._churn.row() for _ in range(n)]
                cursor.executemany(
                    self._insert, [tuple(r[c] for c in CHURN_COLUMNS) for r in batch]
                )
                self.live.extend(r["phone"] for r in batch)
                done += n

    def step(self, rows: int) -> int:
        """One application transaction of about ``rows`` row changes; returns the count."""
        inserts = updates = deletes = 0
        for _ in range(rows):
            draw = self._rng.random()
            if draw < 0.5 or len(self.live) < 100:
                inserts += 1
            elif draw < 0.9:
                updates += 1
            else:
                deletes += 1
        with self.conn.cursor() as cursor:
            self.conn.begin()
            if inserts:
                batch = [self._churn.row() for _ in range(inserts)]
                cursor.executemany(
                    self._insert, [tuple(r[c] for c in CHURN_COLUMNS) for r in batch]
                )
                self.live.extend(r["phone"] for r in batch)
            if updates:
                phones = self._rng.sample(self.live, min(updates, len(self.live)))
                for phone in phones:
                    cursor.execute(
                        "UPDATE churn SET day_mins=%s, day_charge=%s, cust_service_calls=%s "
                        "WHERE phone=%s",
                        (
                            round(self._rng.uniform(0, 350), 1),
                            round(self._rng.uniform(0, 60), 2),
                            self._rng.randint(0, 9),
                            phone,
                        ),
                    )
            for _ in range(deletes):
                if len(self.live) > 100:
                    phone = self.live.pop(self._rng.randrange(len(self.live)))
                    cursor.execute("DELETE FROM churn WHERE phone=%s", (phone,))
            feedback = sum(1 for _ in range(rows) if self._rng.random() < 0.05)
            if feedback:
                cursor.executemany(
                    "INSERT INTO feedback (user_feedback) VALUES (%s)",
                    [(self._feedback.text(),) for _ in range(feedback)],
                )
            self.conn.commit()
            if self.gtid_query is not None:
                cursor.execute(self.gtid_query)
                (gtid,) = cursor.fetchone() or ("",)
                self.last_gtid = str(gtid)
        written = inserts + updates + deletes + feedback
        self.rows_written += written
        return written

    def drive(self, rate: float | None, seconds: float, max_rows: int | None = None) -> float:
        """Write at ``rate`` rows/s (None: flat out) for ``seconds``; returns the time taken."""
        started = time.monotonic()
        written = 0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds or (max_rows is not None and written >= max_rows):
                return elapsed
            if rate is None:
                written += self.step(100)
                continue
            due = int(rate * elapsed) - written
            if due <= 0:
                time.sleep(min(0.005, 1 / rate))
                continue
            written += self.step(min(due, 200))


def gtid_seq(gtid: str) -> int:
    return int(gtid.rsplit("-", 1)[-1]) if gtid else 0


def caught_up(conn: Any, last_gtid: str) -> bool:
    """Every pipeline's checkpoint is at or after the workload's last transaction."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT position FROM cdc_scorer_checkpoint")
        rows = cursor.fetchall()
    if not rows:
        return False
    wanted = gtid_seq(last_gtid)
    for (position,) in rows:
        if not position:
            return False
        seqs = [gtid_seq(g) for g in str(position).split(":", 1)[1].split(",") if g]
        if not seqs or max(seqs) < wanted:
            return False
    return True


def freshness_s(conn: Any, since: str, stream_only: bool = False) -> list[float]:
    """Seconds from each row's last write (since ``since``) to its prediction, both DB time.
    ``stream_only``: rows whose prediction came from the binlog (a re-score chunk's row has no
    source commit time, and its ``scored_at`` is when the chunk reached it, not a freshness)."""
    by_table = freshness_by_table(conn, since, stream_only)
    return by_table["churn"] + by_table["feedback"]


def freshness_by_table(conn: Any, since: str, stream_only: bool = False) -> dict[str, list[float]]:
    """:func:`freshness_s` per source table: ``churn`` (the SageMaker model) and ``feedback``
    (Comprehend)."""
    stream = " AND p.source_committed_at IS NOT NULL" if stream_only else ""
    found: dict[str, list[float]] = {}
    with conn.cursor() as cursor:
        for table, key in (("churn", "phone"), ("feedback", "id")):
            cursor.execute(
                f"SELECT TIMESTAMPDIFF(MICROSECOND, t.updated_at, p.scored_at) FROM {table} t "
                f"JOIN {table}_predictions p ON p.{key} = t.{key} "
                f"WHERE t.updated_at >= %s AND p.scored_at >= t.updated_at{stream}",
                (since,),
            )
            found[table] = [int(r[0]) / 1e6 for r in cursor.fetchall()]
    return found


def db_now(conn: Any) -> str:
    with conn.cursor() as cursor:
        cursor.execute("SELECT NOW(6)")
        (now,) = cursor.fetchone() or ("",)
    return str(now)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
