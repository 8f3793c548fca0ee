"""Running it as a service: metrics scraped by a real Prometheus, health, leader lock, SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.servers import DatabaseServer, free_port
from tests.e2e.daemon import Daemon, http_get, metric, run_cli, start, wait
from tests.integration.scenario import (
    churn_matches,
    create_database,
    expected_feedback,
    init_scorer,
    insert_churn,
    readme_grants,
    stored_churn,
    stored_feedback,
    write_config,
)

REQUIRED_METRICS = (
    "cdc_scorer_source_rows_total",
    "cdc_scorer_rows_scored_total",
    "cdc_scorer_rows_deleted_total",
    "cdc_scorer_rows_skipped_total",
    "cdc_scorer_rows_dead_lettered_total",
    "cdc_scorer_batch_rows",
    "cdc_scorer_inference_duration_seconds",
    "cdc_scorer_model_calls_total",
    "cdc_scorer_inference_errors_total",
    "cdc_scorer_retries_total",
    "cdc_scorer_freshness_seconds",
    "cdc_scorer_sink_write_duration_seconds",
    "cdc_scorer_source_lag_seconds",
    "cdc_scorer_source_connected",
    "cdc_scorer_queue_depth",
    "cdc_scorer_batches_in_flight",
    "cdc_scorer_checkpoint_age_seconds",
    "cdc_scorer_source_disconnects_total",
    "cdc_scorer_snapshot_rows_total",
    "cdc_scorer_snapshot_state",
    "cdc_scorer_leader",
    "cdc_scorer_leader_acquisitions_total",
    "cdc_scorer_build_info",
)


def _setup(mariadb: DatabaseServer) -> tuple[str, Any]:
    database = f"ops_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    return database, mariadb.connect(database)


def _config(
    tmp_path: Path,
    mariadb: DatabaseServer,
    database: str,
    endpoint_url: str,
    name: str = "a",
    **options: Any,
) -> tuple[Path, int]:
    """A daemon's config with its own operations port (two daemons share one host)."""
    port = free_port()
    path = tmp_path / f"{name}.toml"
    spec = write_config(path, mariadb, database, endpoint_url, http_port=port, **options)
    init_scorer(spec)
    return path, port


def _metrics(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return body


def _prometheus(tmp_path: Path, target_port: int) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make test` (installs it) or apt-get it"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: cdc-scorer\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    return process, port


def _promql(port: int, query: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(query)}"
    try:
        status, body = http_get(url)
    except OSError:
        return None  # not listening yet
    if status != 200:
        return None
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_metrics_are_valid_and_scraped_by_prometheus(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    database, db = _setup(server)
    config, port = _config(tmp_path, server, database, endpoints.url)
    # The daemon runs as a user with exactly the README's grants; the password comes from the
    # environment, as ECS injects secrets, and never reaches the log.
    user, password = f"scorer_{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    with db.cursor() as cursor:
        for statement in readme_grants(server.flavor, user, password, database):
            cursor.execute(statement)
    config.write_text(config.read_text().replace('user = "root"', f'user = "{user}"'))
    rows = list(ChurnRowGenerator(5).rows(300))
    insert_churn(db, rows)
    daemon = start(config, env={"CDC_SCORER_SOURCE__PASSWORD": password})
    try:
        wait(lambda: len(stored_churn(db)) == 300, 60, "snapshot scored", daemon)
        generator = ChurnRowGenerator(6)
        endpoints.set_faults({"sagemaker": {"throttle_rate": 0.5}})
        for _ in range(50):  # one transaction each: many model calls, some throttled
            insert_churn(db, [generator.row()])
        with db.cursor() as cursor:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('')")  # a dead letter
            cursor.execute("UPDATE churn SET Churn = 'x' LIMIT 3")  # skipped: not an input
        wait(lambda: len(stored_churn(db)) == 350, 60, "stream scored", daemon)
        assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        wait(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "ready", daemon)
        wait(
            lambda: (
                metric(
                    _metrics(port),
                    'cdc_scorer_rows_skipped_total{pipeline="churn",reason="unchanged_inputs"}',
                )
                == 3.0
            ),
            30,
            "skips counted",
            daemon,
        )
        text = _metrics(port)
        for name in REQUIRED_METRICS:
            assert f"# HELP {name} " in text, name
        throttled = (
            'cdc_scorer_inference_errors_total{code="ThrottlingException",service="sagemaker"}'
        )
        assert (metric(text, throttled) or 0) > 0
        assert (
            metric(text, 'cdc_scorer_retries_total{code="ThrottlingException",stage="sagemaker"}')
            or 0
        ) > 0
        assert metric(text, 'cdc_scorer_rows_scored_total{pipeline="churn"}') == 350.0
        # One sink write per run of the pipeline's batches (a batch, or those scored while the
        # one before them was written; a checkpoint-only batch has no rows to count).
        batches = metric(text, 'cdc_scorer_batch_rows_count{pipeline="churn"}') or 0
        writes = metric(text, 'cdc_scorer_sink_write_duration_seconds_count{pipeline="churn"}')
        assert batches > 0 and writes is not None and writes > 0
        assert metric(text, 'cdc_scorer_snapshot_rows_total{pipeline="churn"}') == 300.0
        assert metric(text, 'cdc_scorer_source_rows_total{operation="insert",table="churn"}') == 50
        assert metric(text, "cdc_scorer_leader") == 1.0
        assert metric(text, 'cdc_scorer_snapshot_state{pipeline="churn",state="done"}') == 1.0
        lag = metric(text, "cdc_scorer_source_lag_seconds")
        assert lag is not None and 0 <= lag < 30
        dead = 'cdc_scorer_rows_dead_lettered_total{pipeline="feedback",reason="empty_text"}'
        assert metric(text, dead) == 1.0
        # promtool: the exposition is valid and follows the naming conventions.
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        # A real Prometheus scrapes it and answers PromQL.
        prometheus, prom_port = _prometheus(tmp_path, port)
        try:
            wait(
                lambda: (
                    _promql(prom_port, 'sum(cdc_scorer_rows_scored_total{pipeline="churn"})')
                    == 350.0
                ),
                60,
                "Prometheus to scrape rows scored",
                daemon,
            )
            up = _promql(prom_port, 'up{job="cdc-scorer"}')
            assert up == 1.0
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        log = daemon.log()
        assert password not in log
        assert not any(row["phone"] in log for row in rows)  # no row payloads at info level
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()[-2000:]
        db.close()


def _leader(port: int) -> float | None:
    try:
        return metric(_metrics(port), "cdc_scorer_leader")
    except OSError:
        return None


@pytest.mark.timeout(240)
def test_two_daemons_one_leader_and_takeover_after_kill_9(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    database, db = _setup(server)
    config_a, port_a = _config(tmp_path, server, database, endpoints.url, "a", max_rows=50)
    config_b, port_b = _config(tmp_path, server, database, endpoints.url, "b", max_rows=50)
    generator = ChurnRowGenerator(8)
    insert_churn(db, list(generator.rows(500)))
    first = start(config_a, "a")
    wait(lambda: _leader(port_a) == 1.0, 30, "first daemon leads", first)
    second = start(config_b, "b")
    try:
        wait(lambda: _leader(port_b) == 0.0, 30, "second daemon up as standby", second)
        insert_churn(db, list(generator.rows(200)))
        wait(lambda: len(stored_churn(db)) == 700, 60, "leader scores", first)
        status, body = http_get(f"http://127.0.0.1:{port_b}/readyz")
        assert status == 503 and "not the leader" in body
        b_metrics = _metrics(port_b)
        assert metric(b_metrics, 'cdc_scorer_rows_scored_total{pipeline="churn"}') is None
        assert metric(b_metrics, "cdc_scorer_source_connected") == 0.0
        # The leader dies mid-stream; the standby takes over and converges.
        with db.cursor() as cursor:
            for i in range(100):
                insert_churn(db, [generator.row()])
                cursor.execute(
                    "UPDATE churn SET day_mins = day_mins + 1 WHERE phone IN "
                    "(SELECT phone FROM (SELECT phone FROM churn LIMIT %s, 1) t)",
                    (i,),
                )
        first.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait(lambda: _leader(port_b) == 1.0, 30, "standby takes over", second)
        takeover_s = time.monotonic() - killed_at
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM churn LIMIT 20")
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('works great')")
        wait(lambda: churn_matches(db), 90, "differential check after takeover", second)
        wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", second)
        print(f"takeover after kill -9: {takeover_s:.2f}s")
        assert takeover_s < 10, takeover_s  # the stated bound: lock poll 1 s + start-up
    finally:
        if first.poll() is None:
            first.stop()
        assert second.stop(signal.SIGTERM) == 0, second.log()[-2000:]
        db.close()


@pytest.mark.timeout(180)
def test_sigterm_during_busy_stream_commits_in_flight_work(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:  # MariaDB's @@last_gtid names each row's transaction: the subject is the shutdown
    database, db = _setup(mariadb)
    config, port = _config(
        tmp_path, mariadb, database, endpoints.url, max_rows=20, snapshot="never"
    )
    daemon: Daemon = start(config)
    wait(lambda: _leader(port) == 1.0, 30, "daemon leads", daemon)
    wait(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "streaming", daemon)
    endpoints.set_faults({"sagemaker": {"latency_ms": 500}})
    generator = ChurnRowGenerator(9)
    gtid_of: dict[str, int] = {}
    with db.cursor() as cursor:
        for row in generator.rows(400):  # one transaction each: a GTID per row
            insert_churn(db, [row])
            cursor.execute("SELECT @@last_gtid")
            (gtid,) = cursor.fetchone() or ("",)
            gtid_of[row["phone"]] = int(str(gtid).split("-")[-1])

    def busy() -> bool:
        text = _metrics(port)
        in_flight = metric(text, 'cdc_scorer_batches_in_flight{pipeline="churn"}') or 0
        return in_flight >= 2 and len(stored_churn(db)) > 0

    wait(busy, 30, "batches committed and more in flight", daemon)
    assert len(stored_churn(db)) < 400  # really in the middle
    stopped_at = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=60)
    elapsed = time.monotonic() - stopped_at
    assert code == 0, daemon.log()[-2000:]
    assert elapsed < 20, elapsed  # shutdown_grace_s of the test config
    log = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    stopped = [entry for entry in log if entry.get("event") == "stopped"]
    assert stopped, daemon.log()[-2000:]
    # Everything the daemon scored is committed, and the checkpoint covers exactly that.
    stored = stored_churn(db)
    assert stopped[0]["rows_scored"]["churn"] == len(stored)
    with db.cursor() as cursor:
        cursor.execute("SELECT position FROM cdc_scorer_checkpoint WHERE pipeline='churn'")
        (position,) = cursor.fetchone() or ("",)
    checkpoint_seq = max(int(g.split("-")[-1]) for g in str(position).split(":")[1].split(","))
    covered = {phone for phone, seq in gtid_of.items() if seq <= checkpoint_seq}
    assert covered == set(stored)
    # And a restart finishes the rest.
    endpoints.set_faults({"sagemaker": {"latency_ms": 0}})
    again = start(config, "again")
    try:
        wait(lambda: _leader(port) == 1.0, 30, "restarted daemon leads", again)
        wait(lambda: churn_matches(db), 60, "rest scored after restart", again)
    finally:
        assert again.stop(signal.SIGTERM) == 0
        db.close()


@pytest.mark.timeout(240)
def test_two_processes_split_one_config_by_pipeline_subsets(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    """`run --pipelines`: one process scores churn, another feedback, from one config; each
    takes only its own leader lock and checkpoint row; the churn one is killed -9 mid-stream
    and restarted; both tables converge."""
    database, db = _setup(mariadb)
    config = tmp_path / "split.toml"  # no operations port: two processes share the config
    init_scorer(write_config(config, mariadb, database, endpoints.url, max_rows=50))
    generator = ChurnRowGenerator(12)
    insert_churn(db, list(generator.rows(300)))
    churn = start(config, "churn", args=("--pipelines", "churn"))
    feedback = start(config, "feedback", args=("--pipelines", "feedback"))
    try:
        wait(lambda: len(stored_churn(db)) == 300, 60, "churn scored", churn)
        wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", feedback)
        status = {s["pipeline"]: s for s in _status_json(config)}
        assert set(status) == {"churn", "feedback"}  # status shows every pipeline
        leaders = {status[p]["leader_connection"] for p in ("churn", "feedback")}
        assert None not in leaders and len(leaders) == 2  # each process holds its own lock
        with db.cursor() as cursor:
            for i in range(150):
                insert_churn(db, [generator.row()])
                cursor.execute(
                    "INSERT INTO feedback (user_feedback) VALUES (%s)", (f"fine service {i}",)
                )
                if i == 60:
                    churn.stop(signal.SIGKILL)
                if i == 100:
                    churn = start(config, "churn-again", args=("--pipelines", "churn"))
        wait(lambda: churn_matches(db), 90, "churn converges after kill -9", churn)
        wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", feedback)
        started = [
            json.loads(line)
            for name in ("churn", "feedback")
            for line in (tmp_path / f"{name}.log").read_text().splitlines()
            if '"starting"' in line
        ]
        assert [entry["pipelines"] for entry in started] == [["churn"], ["feedback"]]
    finally:
        if churn.poll() is None:
            assert churn.stop(signal.SIGTERM) == 0, churn.log()[-2000:]
        assert feedback.stop(signal.SIGTERM) == 0, feedback.log()[-2000:]
        db.close()


def test_an_unknown_pipeline_subset_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        local_scorer_config(port=1, database="mltest", endpoint_url="http://127.0.0.1:1")
    )
    result = run_cli("run", "--config", str(config), "--pipelines", "churn,nope")
    assert result.returncode == 2
    assert "--pipelines: 'nope' is not a pipeline of the configuration" in result.stderr
    assert "churn, feedback" in result.stderr


def _status_json(config: Path) -> list[dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))
