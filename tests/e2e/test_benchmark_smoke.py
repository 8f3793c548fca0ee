"""The benchmark harness runs end to end (smoke sizes); no speed is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdc_scorer.local.kafka import KafkaStack
from cdc_scorer.local.servers import DatabaseServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_smoke_benchmark_writes_the_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--mode", "smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| approach | load |" in report
    assert "## End to end against parse-only" in report
    assert "| cdc-scorer (fast decoder), flat out |" in report
    for plot in ("benchmarks-freshness.png", "benchmarks-throughput.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    approaches = {row["approach"] for row in results["rows"]}
    assert any(a.startswith("cdc-scorer") for a in approaches)
    assert any(a.startswith("Polling") for a in approaches)
    assert any(a.startswith("Row-at-a-time") for a in approaches)
    # Every scoring phase caught up and measured freshness on real rows.
    scored = [r for r in results["rows"] if r["caught_up"] is not None]
    assert scored and all(r["caught_up"] for r in scored), scored
    assert all(r["rows"] > 0 for r in scored)
    assert {(d["decoder"], d["operation"]) for d in results["decode"]} >= {
        ("stock", "insert"),
        ("stock", "update"),
    }
    assert all(d["rows"] > 0 for d in results["decode"])
    # The same run measured MySQL: parse-only with both decoders, and the big UPDATE.
    assert {(d["server"], d["decoder"]) for d in results["decode"]} == {
        (server, decoder) for server in ("MariaDB", "MySQL") for decoder in ("stock", "fast")
    } | {("PostgreSQL", "pgoutput")}
    assert any(r["approach"].endswith("UPDATE transaction, MySQL") for r in scored)
    assert "## MySQL against MariaDB" in report and "MySQL caught up at" in report
    # And PostgreSQL: parse-only through the slot, the big UPDATE, its own mixed workload.
    assert any(r["approach"].endswith("UPDATE transaction, PostgreSQL") for r in scored)
    assert any(r["approach"] == "cdc-scorer (pgoutput), PostgreSQL" for r in scored)
    assert "## PostgreSQL beside MySQL" in report and "| MySQL |" in report


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kafka_benchmark_runs(
    tmp_path: Path, mysql_gtid: DatabaseServer, kafka: KafkaStack
) -> None:
    """``benchmarks/kafka.py`` at smoke sizes on the run's MySQL and Kafka stack: both paths
    catch up and are measured, the group phases spread every partition over 1, 2 and 3
    processes (the shares are the benchmark's: this stack assigns a new group at once)."""
    from benchmarks.harness import ModelEndpoints
    from benchmarks.kafka import MODES, PARTITIONS, run

    endpoints = ModelEndpoints(tmp_path)
    try:
        results = run(MODES["smoke"], tmp_path, mysql_gtid, kafka, endpoints, log=print)
    finally:
        endpoints.close()
    paths = results["paths"]
    assert {(p["path"], p["load"]) for p in paths} == {
        (path, load) for path in ("binlog", "kafka") for load in ("flat out", "200 rows/s")
    }
    for p in paths:
        assert p["caught_up"] and p["rows"] > 0 and p["rows_per_cpu_s"] > 0, p
        assert p["samples"] > 0 and p["p50_s"] is not None, p
    assert [g["processes"] for g in results["groups"]] == [1, 2, 3]
    for g in results["groups"]:
        assert len(g["members"]) == g["processes"]
        for pipeline in ("churn", "feedback"):
            assert sum(m["partitions"][pipeline] for m in g["members"]) == PARTITIONS, g
        assert sum(m["rows"] for m in g["members"]) > 0
    report = (tmp_path / "kafka-benchmarks.md").read_text()
    assert "% of the binlog path's rows per scorer CPU-second" in report
    assert "| 3 | " in report


@pytest.mark.timeout(300)
def test_sink_capacity_runs() -> None:
    """``make bench-sink`` on a few rows: both variants write and report a rate."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sink_capacity", "--rows", "2000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sink ")]
    assert [line.split(":")[0] for line in lines] == [
        "sink alone",
        "sink with a busy Python thread",
    ]
    assert all("existing keys" in line for line in lines)
