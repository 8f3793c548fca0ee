"""docs/benchmarks.md and its plots, from one run's results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

from benchmarks.harness import portable

matplotlib.use("Agg")  # no screen here
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from benchmarks.run import Bench, Row

COMMANDS = {
    "smoke": "python -m benchmarks.run --mode smoke",
    "quick": "make bench",
    "full": "make bench BENCH=full",
}


def _end_to_end_vs_parse(results: dict[str, Any], rows: list[Row]) -> list[str]:
    """Each decoder's end-to-end rates as a share of its parse-only update rate, and the rows
    per second of scorer CPU (what one dedicated core would sustain, if the database and the
    models kept up)."""
    parse = {
        (d.get("server", "MariaDB"), d["decoder"]): d["rows_per_s"]
        for d in results["decode"]
        if d["operation"] == "update"
    }
    lines = [
        "",
        "## End to end against parse-only",
        "",
        "| run | e2e rows/s | share of its decoder's parse-only update rate | "
        "rows per scorer CPU second | sink busy |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        server = _server_of(r)
        decoder = next(
            (
                k
                for k in parse
                if k[0] == server
                and (f"({k[1]} decoder)" in r.approach or f"({k[1]})" in r.approach)
            ),
            None,
        )
        if decoder is None or r.e2e_rows_per_s is None or "rows/s" in r.load:
            continue
        per_cpu_s = 1000 / r.cpu_s_per_1k if r.cpu_s_per_1k else None
        lines.append(
            f"| {r.approach}, {r.load} | {r.e2e_rows_per_s:,.0f} | "
            f"{r.e2e_rows_per_s / parse[decoder]:.0%} | {_fmt(per_cpu_s, 0)} | "
            f"{_pct(r.sink_busy)} |"
        )
    return lines


def _server_of(row: Row) -> str:
    """The server a row of results ran on (MariaDB unless its approach names another)."""
    for name in ("MySQL", "PostgreSQL"):
        if row.approach.endswith(f", {name}"):
            return name
    return "MariaDB"


def _postgresql_beside_mysql(results: dict[str, Any], rows: list[Row]) -> list[str]:
    """The one big UPDATE on PostgreSQL against MySQL's and MariaDB's, in the same run."""
    big = {_server_of(r): r for r in rows if "UPDATE transaction" in r.approach}
    lines = [
        "",
        "## PostgreSQL beside MySQL",
        "",
        f"PostgreSQL: {results.get('postgresql', 'not run')}.",
        "",
    ]
    pg = big.get("PostgreSQL")
    if pg is None or not pg.e2e_rows_per_s or not pg.cpu_s_per_1k:
        return lines
    lines += [
        "| against | e2e rows/s, PostgreSQL / it | rows per scorer CPU second, PostgreSQL / it |",
        "|---|---:|---:|",
    ]
    for name in ("MySQL", "MariaDB"):
        other = big.get(name)
        if other is None or not other.e2e_rows_per_s or not other.cpu_s_per_1k:
            continue
        lines.append(
            f"| {name} | {pg.e2e_rows_per_s / other.e2e_rows_per_s:.0%} | "
            f"{other.cpu_s_per_1k / pg.cpu_s_per_1k:.0%} |"
        )
    return lines


def _mysql_against_mariadb(results: dict[str, Any], rows: list[Row]) -> list[str]:
    """The one big UPDATE caught up on each server, in the same run."""
    big = {
        _server_of(r): r
        for r in rows
        if "UPDATE transaction" in r.approach and _server_of(r) != "PostgreSQL"
    }
    lines = ["", "## MySQL against MariaDB", "", f"MySQL: {results.get('mysql', 'not run')}.", ""]
    if "MySQL" not in big or "MariaDB" not in big:
        return lines
    mysql, mariadb = big["MySQL"].e2e_rows_per_s, big["MariaDB"].e2e_rows_per_s
    lines += [
        "| server | one UPDATE of | e2e rows/s | scorer CPU s / 1k rows | server CPU s / 1k rows |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in big.items():
        lines.append(
            f"| {name} | {r.load} | {_fmt(r.e2e_rows_per_s, 0)} | {_fmt(r.cpu_s_per_1k, 3)} | "
            f"{_fmt(r.mariadb_cpu_s_per_1k, 3)} |"
        )
    if mysql and mariadb:
        lines += ["", f"MySQL caught up at {mysql / mariadb:.0%} of MariaDB's rate."]
    return lines


def _rescore(results: dict[str, Any]) -> list[str]:
    r = results.get("rescore")
    if not r:
        return []
    without, during, capped = r["without"], r["during"], r.get("capped")
    phases = [("without re-score", without), ("during re-score", during)]
    if capped:
        label = f"during re-score of {capped['where']}, capped at {capped['cap']:,} rows/s"
        phases.append((label, capped))
    return [
        "",
        f"## A {r['table_rows']:,}-row re-score beside the stream",
        "",
        f"The whole churn table ({r['rows_at_request']:,} rows when requested: the preloaded "
        f"{r['table_rows']:,} and the stream's inserts so far) re-scored (a `cdc-scorer "
        "rescore` request: chunks of 1,000 rows between watermarks, DBLog) while the "
        f"application writes {r['stream_rate']:,} rows/s; "
        "the same stream without a re-score just before, in the same scorer process; then, the "
        "scorer restarted with `rescore.max_rows_per_s`, a part of the table re-scored at that "
        "cap. Freshness here counts only predictions that came from the binlog.",
        "",
        "| phase | seconds | stream rows | re-scored rows | re-score rows/s | chunk conflicts | "
        "SageMaker calls | SageMaker rows | stream p50 s | stream p99 s | caught up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {name} | {p['seconds']:.1f} | {p['stream_rows']:,} | {p['rescored_rows']:,.0f} | "
            f"{_fmt(p['rescore_rows_per_s'], 0)} | {p['conflicts']:,.0f} | "
            f"{p['sagemaker_calls']:,} | {p['sagemaker_rows']:,} | {_fmt(p['p50_s'])} | "
            f"{_fmt(p['p99_s'])} | {'yes' if p['caught_up'] else 'no'} |"
            for name, p in phases
        ),
        "",
        f"Rows sent to SageMaker during the re-score: {during['sagemaker_rows']:,} = "
        f"{during['rescored_rows']:,.0f} chunk rows + "
        f"{during['sagemaker_rows'] - during['rescored_rows']:,.0f} of the stream (its churn "
        "inserts and updates); chunk and stream rows share batches, so the calls are the "
        "pipeline's, not the re-score's alone. A chunk conflict is a row the stream changed "
        "inside its chunk's window: scored once, from the stream.",
    ]


def backfill_section(r: dict[str, Any] | None) -> list[str]:
    """The table re-scored through the endpoint, then by batch jobs (``Bench.backfill_phase``)."""
    if not r:
        return []
    lines = [
        "",
        f"## A {r['table_rows']:,}-row re-score: through the endpoint or by batch jobs",
        "",
        f"The churn table re-scored beside a {r['stream_rate']:,} rows/s stream, first through "
        "the real-time endpoint (the default), then — the scorer restarted with "
        '`[pipelines.backfill] mode = "batch"` — by SageMaker Batch Transform jobs of '
        "25,000 records at the local control plane and S3; each against the same stream alone "
        "in the same scorer process just before it. Endpoint rows count every row the "
        "real-time endpoint scored during the phase (the stream's and the re-score's). Here "
        "the transform jobs' scoring (a worker process of `serve-models`) and S3 (moto, a "
        "process of its own) share the machine's two cores with the scorer, the database "
        "and the stream's endpoint; on AWS they run elsewhere. Writer busy: the share of the "
        "phase the pipeline's database writer spent writing batches (its "
        "`cdc_scorer_sink_write_duration_seconds`); the stream's rows queue behind the "
        "re-score's writes as it nears 100 %. The last row runs the batch re-score again "
        f"with `[pipelines.rescore] max_rows_per_s = {r.get('cap', 1000):,}`, which paces the "
        "merge of the jobs' answers: the stream's p99 against the re-score's speed.",
        "",
        "| re-score | seconds | stream p50 s alone | stream p99 s alone | stream p50 s during | "
        "stream p99 s during | p99 ratio | writer busy alone | writer busy during | "
        "endpoint rows during | of them the stream's | re-score rows through the endpoint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"batch_capped": f"batch, max_rows_per_s {r.get('cap', 1000):,}"}
    for name in ("realtime", "batch", "batch_capped"):
        phase = r.get(name)
        if not phase:
            continue
        alone, during = phase["alone"], phase["during"]
        ratio = during["p99_s"] / alone["p99_s"] if during["p99_s"] and alone["p99_s"] else None
        outcomes = phase.get("outcomes") or {}
        through = outcomes.get("realtime") or 0 if name != "realtime" else during["rescored_rows"]
        lines.append(
            f"| {labels.get(name, name)} | {during['seconds']:.1f} | {_fmt(alone['p50_s'])} | "
            f"{_fmt(alone['p99_s'])} | {_fmt(during['p50_s'])} | {_fmt(during['p99_s'])} | "
            f"{_fmt(ratio)} | {_pct(alone.get('writer_busy'))} | "
            f"{_pct(during.get('writer_busy'))} | {during['sagemaker_rows']:,} | "
            f"{during['sagemaker_rows'] - through:,.0f} | {through:,.0f} |"
        )
    batch = r.get("batch") or {}
    outcomes = batch.get("outcomes") or {}
    if outcomes:
        lines += [
            "",
            "Batch records (`cdc_scorer_backfill_records_total`): "
            + ", ".join(f"{k} {v or 0:,.0f}" for k, v in outcomes.items())
            + f"; transform jobs at the service: {batch.get('jobs', {}).get('jobs', '-')}.",
        ]
    if r.get("estimate"):
        command = "cdc-scorer rescore --config FILE --pipeline churn --estimate"
        lines += ["", f"The modelled cost (`{command}`):", "", "```"]
        lines += [line.rstrip() for line in str(r["estimate"]).strip().splitlines()]
        lines += ["```"]
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _freshness_plot(rows: list[Row], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9, 5))
    for row in rows:
        if not row.freshness:
            continue
        values = sorted(row.freshness)
        n = len(values)
        axis.plot(values, [(i + 1) / n for i in range(n)], label=f"{row.approach} @ {row.load}")
    axis.set_xscale("log")
    axis.set_xlabel("freshness: prediction scored_at - row updated_at (s, log scale)")
    axis.set_ylabel("fraction of rows")
    axis.set_title("Freshness CDF per approach and write rate")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput_plot(results: dict[str, Any], rows: list[Row], path: Path) -> None:
    labels: list[str] = []
    values: list[float] = []
    for d in results["decode"]:
        labels.append(
            f"parse only, {d.get('server', 'MariaDB')}, {d['decoder']} decoder, {d['operation']}s"
        )
        values.append(d["rows_per_s"])
    for row in rows:
        if row.write_rows_per_s is not None and row.approach.startswith("MariaDB"):
            labels.append("MariaDB alone, the workload")
            values.append(row.write_rows_per_s)
        elif (row.e2e_rows_per_s is not None and row.load in ("flat out",)) or (
            row.approach.startswith("Row-at-a-time") and row.e2e_rows_per_s is not None
        ):
            labels.append(f"{row.approach}, {row.load}")
            values.append(row.e2e_rows_per_s or 0.0)
    figure, axis = plt.subplots(figsize=(9, 0.5 * len(labels) + 1.5))
    bars = axis.barh(labels, values, color="#4c72b0")
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8, padding=3)
    axis.set_xscale("log")
    axis.set_xlabel("rows per second (log scale)")
    axis.set_title("Throughput, rows/s")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _rss_plot(trace: list[tuple[float, float]], path: Path, label: str) -> None:
    figure, axis = plt.subplots(figsize=(9, 3.5))
    axis.plot([t for t, _ in trace], [r for _, r in trace])
    axis.set_xlabel("seconds since the UPDATE started")
    axis.set_ylabel("scorer RSS (MB)")
    axis.set_title(f"Memory of the scorer through one {label}-row UPDATE transaction")
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render(results: dict[str, Any], rows: list[Row], bench: Bench, out: Path) -> None:
    _freshness_plot(rows, out / "benchmarks-freshness.png")
    _throughput_plot(results, rows, out / "benchmarks-throughput.png")
    big = next((r for r in rows if "UPDATE transaction" in r.approach), None)
    if big is not None and getattr(bench, "rss_trace", None):
        _rss_plot(bench.rss_trace, out / "benchmarks-memory.png", big.load.split()[0])
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; every figure below comes from one run on one machine.",
        "",
        f"- **Command:** `{COMMANDS[results['mode']]}` (mode `{results['mode']}`, "
        f"{results['seconds']:.0f} s)",
        f"- **Machine:** {m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GB, {m['os']}; "
        f"Python {m['python']}; MariaDB {m['mariadb']} (private instance, row binlog, "
        f"{m.get('buffer_pool', '128 MB')} InnoDB buffer pool).",
        "- **Everything shares the machine:** MariaDB, the local model endpoints, the writer and "
        "the scorer compete for the same cores.",
        "- **Model latency emulated** by the local endpoints: SageMaker 15 ms + 0.02 ms/row, "
        "Comprehend 40 ms per batch.",
        "- **Workload:** churn rows (21 columns) — 50 % inserts, 40 % updates of model inputs, "
        "10 % deletes — plus a feedback text for ~5 % of changes. Freshness = prediction "
        "`scored_at` - source `updated_at`, both `NOW(6)` on the database's clock, for the last "
        "version of every row written in the phase.",
        "",
        "![Freshness CDF](benchmarks-freshness.png)",
        "",
        "![Throughput](benchmarks-throughput.png)",
        "",
        "## Results",
        "",
        "| approach | load | rows | e2e rows/s | caught up | p50 s | p95 s | p99 s | "
        "model calls / 1k rows | scorer CPU s / 1k rows | MariaDB CPU s / 1k rows | "
        "endpoints CPU s / 1k rows | sink busy | peak RSS MB | note |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        e2e = r.e2e_rows_per_s if r.e2e_rows_per_s is not None else r.write_rows_per_s
        caught = (
            "-"
            if r.caught_up is None
            else ("yes" if r.caught_up else f"no ({r.backlog_rows:,} behind)")
        )
        lines.append(
            f"| {r.approach} | {r.load} | {r.rows:,} | {_fmt(e2e)} | {caught} | {_fmt(r.p50_s)} | "
            f"{_fmt(r.p95_s)} | {_fmt(r.p99_s)} | {_fmt(r.calls_per_1k)} | "
            f"{_fmt(r.cpu_s_per_1k, 3)} | {_fmt(r.mariadb_cpu_s_per_1k, 3)} | "
            f"{_fmt(r.endpoints_cpu_s_per_1k, 3)} | {_pct(r.sink_busy)} | "
            f"{_fmt(r.peak_rss_mb, 0)} | {r.note} |"
        )
    lines += [
        "",
        '"e2e rows/s" is rows written ÷ time until every pipeline\'s checkpoint passed the '
        "last write (for MariaDB alone: the write rate). MariaDB's CPU includes executing the "
        "writes themselves, the binlog dump and applying the predictions; the endpoints' is the "
        "local models and their HTTP serving - all on the same two cores. A phase that had not "
        "caught up when its drain time ran out shows the rows still behind: its rate is its "
        'ceiling. "sink busy" is the share of the phase the churn pipeline\'s one database '
        "connection spent writing batches (`cdc_scorer_sink_write_duration_seconds`); near 100 % "
        "the database applying the predictions is the limit.",
        "",
        "## Parse-only ceiling (binlog → `RowChange`s, nothing else)",
        "",
        "| server | decoder | operation | rows | rows/s | CPU s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for d in results["decode"]:
        lines.append(
            f"| {d.get('server', 'MariaDB')} | {d['decoder']} | {d['operation']} | "
            f"{d['rows']:,} | {d['rows_per_s']:,.0f} | {d['cpu_s']:.2f} |"
        )
    lines += _end_to_end_vs_parse(results, rows)
    lines += _rescore(results)
    lines += backfill_section(results.get("backfill"))
    lines += _mysql_against_mariadb(results, rows)
    lines += _postgresql_beside_mysql(results, rows)
    if big is not None:
        lines += [
            "",
            "## Memory through one big transaction",
            "",
            f"{big.load} updated by one `UPDATE` statement: {big.note}.",
            "",
            "![Memory](benchmarks-memory.png)",
        ]
    for spy in results.get("scorer_profiles") or []:
        if not spy.get("samples"):
            lines += ["", f"(py-spy could not profile the scorer: {spy.get('error', '')})"]
            continue
        lines += [
            "",
            f"## Where the scorer's time goes: {spy['phase']} (py-spy, all threads)",
            "",
            f"{spy['samples']:,} samples at 100 Hz of the `cdc-scorer run` process while it "
            "caught up. Shares of all samples; a thread waiting on a socket or a lock is "
            "not sampled, so the shares add up to where the CPU (and the GIL) went.",
            "",
            "| share (inclusive) | function | | share (own) | function |",
            "|---:|---|---|---:|---|",
        ]
        for (inc_f, inc_s), (own_f, own_s) in zip(spy["inclusive"], spy["own"], strict=False):
            lines.append(f"| {inc_s:.1%} | `{inc_f}` | | {own_s:.1%} | `{own_f}` |")
    lines += [
        "",
        "## Where the time goes: the stock decoder on updates (cProfile, top 15 by own time)",
        "",
        "```",
        *results["profile"].strip().splitlines()[:45],
        "```",
        "",
    ]
    (out / "benchmarks.md").write_text(portable("\n".join(lines) + "\n"))
