"""Models change under a running scorer: re-scores beside the stream (DBLog), through kill -9;
`cdc-scorer rescore`; ALTERs of model inputs; a pipeline added to a running deployment."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import ChurnRowGenerator, FeedbackGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.servers import DatabaseServer, free_port
from tests.e2e.daemon import Daemon, VersionMonitor, http_get, kill, run_cli, start, wait
from tests.integration.scenario import (
    churn_matches,
    create_database,
    expected_feedback,
    init_scorer,
    insert_churn,
    stored_churn,
    stored_feedback,
    write_config,
)


def churn_pipeline(**keys: Any) -> dict[str, Any]:
    """The churn pipeline's overrides as the tests here use them (``keys`` on top)."""
    return {
        "snapshot": "initial",
        "snapshot_chunk_rows": 200,
        "batching": {"max_rows": 50, "linger_ms": 50, "max_in_flight": 4},
        **keys,
    }


def setup(
    tmp_path: Path,
    server: DatabaseServer,
    endpoints: BackgroundModelServer,
    rows: int,
    prefix: str,
    http_port: int = 0,
    **churn: Any,
) -> tuple[Path, ScorerSpec, Any]:
    database = f"{prefix}_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / f"{database}.toml"
    spec = write_config(
        config,
        server,
        database,
        endpoints.url,
        http_port=http_port,
        pipelines={"churn": churn_pipeline(**churn)},
    )
    init_scorer(spec)
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(31).rows(rows)))
    return config, spec, db


def status(config: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return {s["pipeline"]: s for s in json.loads(result.stdout)}


def versions(db: Any, table: str = "churn_predictions") -> dict[str | None, int]:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT model_version, COUNT(*) FROM {table} GROUP BY model_version")
        return {v: int(n) for v, n in cursor.fetchall()}


def signals(db: Any) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM cdc_scorer_signal")
        (count,) = cursor.fetchone()
    return int(count)


def scored_at(db: Any) -> dict[str, Any]:
    with db.cursor() as cursor:
        cursor.execute("SELECT phone, scored_at FROM churn_predictions")
        return dict(cursor.fetchall())


class Writer(threading.Thread):
    """The application, inserting, updating and deleting churn rows while the scorer runs."""

    def __init__(self, server: DatabaseServer, database: str, seed: int) -> None:
        super().__init__(daemon=True)
        self._conn = server.connect(database)
        self._halt = threading.Event()
        self._generator = ChurnRowGenerator(seed)
        self.writes = 0

    def run(self) -> None:
        with self._conn.cursor() as cursor:
            cursor.execute("SELECT phone FROM churn")
            live = [str(r[0]) for r in cursor.fetchall()]
        i = 0
        while not self._halt.wait(0.01):
            i += 1
            with self._conn.cursor() as cursor:
                if i % 3 == 0:
                    row = self._generator.row()
                    insert_churn(self._conn, [row])
                    live.append(row["phone"])
                elif i % 3 == 1:
                    cursor.execute(
                        "UPDATE churn SET day_mins=%s, cust_service_calls=%s WHERE phone=%s",
                        (round(50 + (i * 7.3) % 250, 1), i % 9, live[(i * 31) % len(live)]),
                    )
                elif len(live) > 100:
                    phone = live.pop((i * 17) % len(live))
                    cursor.execute("DELETE FROM churn WHERE phone=%s", (phone,))
            self.writes += 1

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        with contextlib.suppress(Exception):  # stopped twice: closed already
            self._conn.close()


def job_progress(config: Path, reason: str) -> int:
    """Rows done by the running re-score for ``reason`` (-1: none such running)."""
    job = status(config)["churn"]["rescore"]
    return int(job["rows_done"]) if job and job["reason"] == reason else -1


@pytest.mark.timeout(300)
def test_a_new_model_version_rescores_beside_the_stream_through_kill_9(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config, spec, db = setup(tmp_path, server, endpoints, 3000, "version")
    daemon = start(config)
    wait(lambda: churn_matches(db), 90, "version 1 scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0
    assert versions(db) == {"1": 3000}

    # Version 2 is deployed; the re-score is paced so that it is surely killed half-way.
    pace = {"max_rows_per_s": 400}
    write_config(
        config,
        server,
        spec.source.database,
        endpoints.url,
        pipelines={"churn": churn_pipeline(model_version="2", rescore=pace)},
    )
    writer = Writer(server, spec.source.database, seed=32)
    writer.start()
    monitor = VersionMonitor(server, spec.source.database)
    monitor.start()
    try:
        daemon = start(config)
        wait(
            lambda: job_progress(config, "model version 2") >= 600, 90, "re-score under way", daemon
        )
        kill(daemon)  # kill -9 in the middle of the re-score
        at_kill = job_progress(config, "model version 2")
        assert 0 < at_kill < 3000, at_kill
        daemon = start(config, "after-kill-1")
        wait(lambda: "re-score resuming" in daemon.log(), 30, "resumed at its cursor", daemon)
        wait(lambda: status(config)["churn"]["rescore"] is None, 120, "re-score done", daemon)
        # (the writer runs: a row it just inserted may still wait for its prediction)
        assert set(versions(db)) == {"2"}

        # An operator's re-score while the daemon runs, killed half-way too.
        asked = run_cli("rescore", "--config", str(config), "--pipeline", "churn", "--no-wait")
        assert asked.returncode == 0, asked.stderr
        wait(lambda: job_progress(config, "requested") >= 600, 90, "requested under way", daemon)
        kill(daemon)
        assert 0 < job_progress(config, "requested") < 3000 + writer.writes
        daemon = start(config, "after-kill-2")
        wait(lambda: "re-score resuming" in daemon.log(), 30, "resumed at its cursor", daemon)
        wait(lambda: status(config)["churn"]["rescore"] is None, 120, "requested done", daemon)

        # One more, cancelled half-way (the pace keeps it running for seconds).
        more = run_cli("rescore", "--config", str(config), "--pipeline", "churn", "--no-wait")
        more_id = more.stdout.split()[1]
        wait(lambda: job_progress(config, "requested") >= 200, 60, "it runs", daemon)
        ended = run_cli(
            "rescore", "--config", str(config), "--pipeline", "churn", "--cancel", more_id
        )
        assert ended.returncode == 0, ended.stderr
        assert f"re-score {more_id} of pipeline churn cancelled after" in ended.stdout
        cancelled = status(config)["churn"]["rescores_finished"][-1]
        assert cancelled["id"] == more_id and cancelled["error"] == "cancelled"
        assert cancelled["rows_done"] < 2500, cancelled
        again = run_cli(
            "rescore", "--config", str(config), "--pipeline", "churn", "--cancel", more_id
        )
        assert again.returncode == 1 and "no such re-score is running or waiting" in again.stderr
        writer.stop()
        wait(lambda: churn_matches(db), 90, "convergence", daemon)
        assert versions(db) == {"2": len(stored_churn(db))}
        assert kill(daemon, signal.SIGTERM) == 0
        monitor.stop()
        assert monitor.polls > 10 and writer.writes > 100
        assert not monitor.regressions, monitor.regressions[:5]
        version_job, requested, _ = status(config)["churn"]["rescores_finished"][-3:]
        assert version_job["reason"] == "model version 2" and requested["reason"] == "requested"
        for job in (version_job, requested):
            assert job["error"] is None
            # Resumed at the committed chunk: rows done before the kill are not read again.
            assert 3000 - 200 <= job["rows_done"] < 3000 + writer.writes, job
    finally:  # a failed assertion must not leave the writer writing into the next test
        writer.stop()
        monitor.stop()
    db.close()


@pytest.mark.timeout(240)
def test_rescore_command_while_the_daemon_runs(
    tmp_path: Path, mysql_file: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config, _, db = setup(tmp_path, mysql_file, endpoints, 1000, "cmd")
    early = run_cli("rescore", "--config", str(config), "--pipeline", "churn")
    assert early.returncode == 1 and "pipeline churn has not run yet" in early.stderr
    daemon = start(config)
    wait(lambda: churn_matches(db), 90, "snapshot scored", daemon)
    before = scored_at(db)
    with db.cursor() as cursor:
        cursor.execute("SELECT phone FROM churn WHERE state IN ('KS', 'OH')")
        chosen = {str(r[0]) for r in cursor.fetchall()}
    assert 0 < len(chosen) < 200

    result = run_cli(
        "rescore", "--config", str(config), "--pipeline", "churn",
        "--where", "state IN ('KS', 'OH')", "--timeout", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{len(chosen)} rows of churn where state IN ('KS', 'OH')" in result.stdout
    assert f"done: {len(chosen)} rows re-scored" in result.stdout
    assert "rows" in result.stderr  # the progress bar
    after = scored_at(db)
    assert {p for p in after if after[p] > before[p]} == chosen  # those rows, and only those
    assert churn_matches(db)

    quick = run_cli("rescore", "--config", str(config), "--pipeline", "churn", "--no-wait")
    assert quick.returncode == 0, quick.stderr
    request_id = quick.stdout.split()[1]
    wait(
        lambda: any(j["id"] == request_id for j in status(config)["churn"]["rescores_finished"]),
        60,
        "the --no-wait request done",
        daemon,
    )
    text = run_cli("status", "--config", str(config)).stdout
    assert "re-score running" not in text  # nothing runs any more
    wait(lambda: signals(db) == 0, 10, "requests and watermarks deleted once read", daemon)

    bad = run_cli("rescore", "--config", str(config), "--pipeline", "churn", "--where", "nope=1")
    assert bad.returncode == 1
    assert "--where 'nope=1' is refused by the server" in bad.stderr, bad.stderr
    assert "Unknown column" in bad.stderr
    unknown = run_cli("rescore", "--config", str(config), "--pipeline", "nosuch")
    assert unknown.returncode == 1 and "no such pipeline" in unknown.stderr
    assert kill(daemon, signal.SIGTERM) == 0
    db.close()


@pytest.mark.timeout(240)
def test_alter_of_model_inputs(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config, _, db = setup(tmp_path, server, endpoints, 1000, "alter")
    daemon = start(config)
    wait(lambda: churn_matches(db), 90, "snapshot scored", daemon)

    def alter_jobs() -> list[dict[str, Any]]:
        finished = status(config)["churn"]["rescores_finished"]
        return [j for j in finished if j["reason"] == "ALTER TABLE"]

    before = scored_at(db)
    with db.cursor() as cursor:  # no input changes type: nothing is read again
        cursor.execute("ALTER TABLE churn ADD COLUMN note VARCHAR(20) NULL AFTER area_code")
    wait(lambda: len(alter_jobs()) == 1, 60, "the ADD COLUMN looked at", daemon)
    assert alter_jobs()[0]["rows_done"] == 0
    assert scored_at(db) == before

    with db.cursor() as cursor:  # every row's day_mins changes, without a row event
        cursor.execute("ALTER TABLE churn MODIFY day_mins DECIMAL(10,0)")
    wait(lambda: len(alter_jobs()) == 2, 60, "the MODIFY re-scored", daemon)
    assert alter_jobs()[1]["rows_done"] == 1000
    wait(lambda: churn_matches(db), 60, "predictions of the new values", daemon)
    assert all(at > before[phone] for phone, at in scored_at(db).items())

    with db.cursor() as cursor:  # an input is gone: that pipeline stops, the other goes on
        cursor.execute("ALTER TABLE churn DROP COLUMN eve_mins")
        cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('works well, thanks')")
    wait(lambda: status(config)["churn"]["stopped"] is not None, 60, "churn stopped", daemon)
    reason = status(config)["churn"]["stopped"]
    assert "column eve_mins of table churn is gone" in reason, reason
    wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback goes on", daemon)
    assert daemon.poll() is None
    assert kill(daemon, signal.SIGTERM) == 0
    db.close()


def drop_pipeline(config: Path, name: str) -> None:
    settings = tomllib.loads(config.read_text())
    settings["pipelines"] = [p for p in settings["pipelines"] if p["name"] != name]
    config.write_text(tomli_w.dumps(settings))


class FeedbackFreshness(threading.Thread):
    """Inserts a feedback row every 50 ms and times it until its prediction is there."""

    def __init__(self, server: DatabaseServer, database: str) -> None:
        super().__init__(daemon=True)
        self._conn = server.connect(database)
        self._halt = threading.Event()
        self._texts = FeedbackGenerator(5)
        self.samples: list[tuple[float, float]] = []  # (written at, seconds to its prediction)

    def run(self) -> None:
        pending: dict[int, float] = {}
        while not self._halt.wait(0.05):
            with self._conn.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO feedback (user_feedback) VALUES (%s)", (self._texts.text(),)
                )
                pending[int(cursor.lastrowid)] = time.monotonic()
                cursor.execute(
                    "SELECT id FROM feedback_predictions WHERE id >= %s", (min(pending),)
                )
                now = time.monotonic()
                for (done,) in cursor.fetchall():
                    written = pending.pop(int(done), None)
                    if written is not None:
                        self.samples.append((written, now - written))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        with contextlib.suppress(Exception):  # stopped twice: closed already
            self._conn.close()

    def scored_since(self, at: float) -> bool:
        """Whether a row written at or after ``at`` has its prediction."""
        return any(written >= at for written, _ in self.samples)

    def p99(self, since: float, until: float) -> float:
        values = sorted(s for at, s in self.samples if since <= at < until)
        assert values, "no samples"
        return values[min(len(values) - 1, int(0.99 * len(values)))]


@pytest.mark.timeout(300)
def test_a_pipeline_added_to_a_running_deployment_snapshots_beside_the_stream(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    rows = 100_000
    config, spec, db = setup(
        tmp_path, mariadb, endpoints, rows, "added", http_port=free_port(),
        snapshot_chunk_rows=1000,
        batching={"max_rows": 500, "linger_ms": 50, "max_in_flight": 4},
    )  # fmt: skip
    with db.cursor() as cursor:  # a production table has its key indexed
        cursor.execute("ALTER TABLE churn ADD INDEX (phone(64))")
    full_config = config.read_text()
    drop_pipeline(config, "churn")
    daemon = start(config)  # feedback only
    freshness = FeedbackFreshness(mariadb, spec.source.database)
    freshness.start()
    wait(lambda: len(freshness.samples) > 20, 60, "feedback streaming", daemon)
    streaming_from = time.monotonic()
    seen = len(freshness.samples)
    wait(lambda: len(freshness.samples) >= seen + 60, 30, "the stream alone", daemon)
    quiet_from = time.monotonic()  # rows written from now wait for the restart
    assert kill(daemon, signal.SIGTERM) == 0
    config.write_text(full_config)  # the deployment gains the churn pipeline
    daemon = start(config)
    wait(lambda: status(config)["churn"]["snapshot_state"] == "running", 60, "snapshot", daemon)
    snapshot_started = time.monotonic()
    # The rows written while the scorer restarted are behind it: the window starts after.
    wait(lambda: freshness.scored_since(snapshot_started), 30, "restart caught up", daemon)
    snapshot_from = time.monotonic()
    wait(lambda: status(config)["churn"]["snapshot_state"] == "done", 240, "snapshot done", daemon)
    snapshot_until = time.monotonic()
    wait(lambda: freshness.scored_since(snapshot_until), 30, "the window's rows", daemon)
    freshness.stop()
    assert len(stored_churn(db)) == rows
    assert churn_matches(db)
    during = [s for at, s in freshness.samples if snapshot_from <= at < snapshot_until]
    assert len(during) > 20  # feedback kept being scored while churn snapshotted
    _, body = http_get_metrics(daemon, config)
    assert 'cdc_scorer_rescore_rows_total{pipeline="churn"} 100000.0' in body, body
    assert 'cdc_scorer_rescore_rows_remaining{pipeline="churn"} 0.0' in body, body
    print(
        f"\n100,000-row snapshot beside the stream: {snapshot_until - snapshot_started:.1f} s; "
        f"feedback freshness p99 before {freshness.p99(streaming_from, quiet_from):.3f} s, during "
        f"{freshness.p99(snapshot_from, snapshot_until):.3f} s ({len(during)} rows); {body}"
    )
    assert kill(daemon, signal.SIGTERM) == 0
    db.close()


def http_get_metrics(daemon: Daemon, config: Path) -> tuple[int, str]:
    """The churn pipeline's re-score counters, from the daemon's /metrics (when it serves)."""
    port = tomllib.loads(config.read_text())["http"]["port"]
    if not port:
        return 0, "no /metrics port"
    code, text = http_get(f"http://127.0.0.1:{port}/metrics")
    lines = [line for line in text.splitlines() if line.startswith("cdc_scorer_rescore")]
    return code, "; ".join(lines)
