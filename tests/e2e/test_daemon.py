"""The daemon as a subprocess: fatal start-up errors, kill -9 and restart, the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.db import connect
from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.mariadb import MariaDBServer, PrivateMariaDB
from cdc_scorer.schema import init_schema
from tests.integration.scenario import (
    churn_matches,
    create_database,
    expected_feedback,
    insert_churn,
    stored_churn,
    stored_feedback,
    write_config,
)

CLI = [sys.executable, "-m", "cdc_scorer"]


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[source]\nport = 99999\ndatabse = "x"\n\n[[pipelines]]\nname = "churn"\n'
        'table = "churn"\nservice = "sagemaker"\n'
    )
    result = _run_cli("run", "--config", str(config))
    assert result.returncode == 2
    err = result.stderr
    for expected in (
        "source.port",
        "source.databse: Extra inputs are not permitted",
        "source.database: Field required",
        "source.server_id: Field required",
        "add a [pipelines.sagemaker] section",
    ):
        assert expected in err, err


def test_statement_binlog_is_one_clear_line(tmp_path: Path) -> None:
    with PrivateMariaDB(binlog_args=("--binlog-format=STATEMENT",)) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        write_config(config, server, "mltest", "http://127.0.0.1:9")
        result = _run_cli("run", "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cdc-scorer: binlog_format is STATEMENT, must be ROW"), lines
    assert "set binlog_format=ROW" in lines[-1]


def test_missing_key_is_a_start_up_error(tmp_path: Path, mariadb: MariaDBServer) -> None:
    database = f"nokey_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    config = tmp_path / "s.toml"
    config.write_text(
        write_config(config, mariadb, database, "http://127.0.0.1:9")
        and config.read_text().replace('key_columns = ["phone"]\n', "")
    )
    result = _run_cli("init", "--config", str(config))
    assert result.returncode == 1
    assert "table churn has no primary key" in result.stderr
    assert "key_columns" in result.stderr


@pytest.fixture
def endpoints() -> Iterator[BackgroundModelServer]:
    with BackgroundModelServer() as server:
        yield server


def _wait(
    condition: Any, timeout_s: float, what: str, process: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"daemon exited ({process.returncode}) waiting for {what}: "
                f"{process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill(daemon: subprocess.Popen[str], sig: int = signal.SIGKILL) -> int:
    daemon.send_signal(sig)
    code = daemon.wait(timeout=30)
    if daemon.stderr is not None:
        daemon.stderr.close()
    return code


def _start(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.timeout(240)
def test_kill_9_at_several_points_converges(
    tmp_path: Path, mariadb: MariaDBServer, endpoints: BackgroundModelServer
) -> None:
    database = f"kill_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    config = tmp_path / "s.toml"
    spec = write_config(config, mariadb, database, endpoints.url, max_rows=50)
    conn = connect(spec.source)
    init_schema(conn, spec)
    conn.close()
    db = mariadb.connect(database)
    generator = ChurnRowGenerator(21)
    live: list[dict[str, Any]] = list(generator.rows(3000))
    insert_churn(db, live)
    # Kill during the snapshot, then during a mixed stream, three times over.
    endpoints.set_faults({"sagemaker": {"latency_ms": 20}})
    daemon = _start(config)
    _wait(lambda: len(stored_churn(db)) > 200, 60, "snapshot under way", daemon)
    _kill(daemon)
    assert len(stored_churn(db)) < 3000  # it really died in the middle of the snapshot
    endpoints.set_faults({"sagemaker": {"latency_ms": 0}})
    for round_ in range(3):
        daemon = _start(config)
        with db.cursor() as cursor:
            for i in range(200):
                pick = i % 10
                if pick < 4:
                    row = generator.row()
                    insert_churn(db, [row])
                    live.append(row)
                elif pick < 8:
                    row = live[(i * 7 + round_) % len(live)]
                    cursor.execute(
                        "UPDATE churn SET day_mins=%s, night_calls=%s WHERE phone=%s",
                        (generator.changed(row)["day_mins"], 50 * (i % 9), row["phone"]),
                    )
                else:
                    row = live.pop((i * 13 + round_) % len(live))
                    cursor.execute("DELETE FROM churn WHERE phone=%s", (row["phone"],))
                if i % 20 == 0:
                    cursor.execute(
                        "INSERT INTO feedback (user_feedback) VALUES (%s)",
                        (f"great service, thank you {round_}-{i}",),
                    )
                if i == 120:
                    _kill(daemon)  # mid-stream
                    daemon = _start(config)
        _wait(lambda: churn_matches(db), 90, f"convergence after round {round_}", daemon)
        if round_ < 2:
            _kill(daemon)
    _wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", daemon)
    assert _kill(daemon, signal.SIGTERM) == 0
    assert churn_matches(db)  # the differential check after a clean stop
    db.close()


def test_demo_runs_and_shows_predictions() -> None:
    result = _run_cli("demo", "--seconds", "3", "--no-wait", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "FROM churn_scored LIMIT 5" in out
    assert "unscored rows: churn 0/" in out
    assert "scorer, endpoints and MariaDB are down" in out
