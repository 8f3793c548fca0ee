"""`cdc-scorer check` and `cdc-scorer status` as a user runs them, against real servers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_scorer.db import connect
from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.servers import DatabaseServer, PrivateMariaDB
from cdc_scorer.schema import init_schema
from tests.e2e.daemon import run_cli
from tests.integration.scenario import create_database, insert_churn, write_config


@pytest.fixture
def endpoints() -> Iterator[BackgroundModelServer]:
    with BackgroundModelServer() as server:
        yield server


def _ready_database(server: DatabaseServer, tmp_path: Path, endpoint_url: str) -> Path:
    database = f"chk_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    spec = write_config(config, server, database, endpoint_url)
    conn = connect(spec.source)
    init_schema(conn, spec)
    conn.close()
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(3).rows(5)))
    db.close()
    return config


def _lines(stdout: str, prefix: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(prefix)]


def test_check_passes_on_a_good_setup(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(mariadb, tmp_path, endpoints.url)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _lines(result.stdout, "FAIL"), result.stdout
    passed = "\n".join(_lines(result.stdout, "PASS"))
    for name in (
        "database connection",
        "binlog binlog_format",
        "grant: binlog replication",
        "table churn (pipeline churn)",
        "grant: write churn_predictions",
        "endpoint churn-autopilot-endpoint (pipeline churn): answered",
        "endpoint comprehend (pipeline feedback): answered",
    ):
        assert name in passed, result.stdout


@pytest.mark.parametrize(
    ("server_args", "failing"),
    [
        ({"log_bin": False}, "FAIL  binlog log_bin: binary log is off (log_bin=OFF): enable it"),
        (
            {"binlog_args": ("--binlog-format=STATEMENT",)},
            "FAIL  binlog binlog_format: binlog_format is STATEMENT, must be ROW: "
            "set binlog_format=ROW",
        ),
    ],
    ids=["binlog-off", "statement-format"],
)
def test_check_fails_on_binlog_settings(
    tmp_path: Path, endpoints: BackgroundModelServer, server_args: dict[str, object], failing: str
) -> None:
    with PrivateMariaDB(**server_args) as server:  # type: ignore[arg-type]
        config = _ready_database(server, tmp_path, endpoints.url)
        result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert failing in result.stdout, result.stdout


def test_check_fails_on_missing_grants(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(mariadb, tmp_path, endpoints.url)
    database = config.read_text().split('database = "')[1].split('"')[0]
    user = f"ro_{uuid.uuid4().hex[:6]}"
    conn = mariadb.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
        cursor.execute(f"GRANT SELECT ON {database}.* TO '{user}'@'%'")
    conn.close()
    config.write_text(
        config.read_text().replace('user = "root"', f'user = "{user}"\npassword = "pw"')
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    out = result.stdout
    replication = _lines(out, "FAIL  grant: binlog replication")
    assert replication and "REPLICATION SLAVE" in replication[0], out
    write = _lines(out, "FAIL  grant: write churn_predictions")
    assert write and "INSERT command denied" in write[0], out
    assert "PASS  table churn (pipeline churn)" in out  # SELECT alone is enough to read


def test_check_fails_on_missing_table_and_unreachable_endpoint(
    tmp_path: Path, mariadb: DatabaseServer
) -> None:
    config = _ready_database(mariadb, tmp_path, "http://127.0.0.1:9")
    database = config.read_text().split('database = "')[1].split('"')[0]
    db = mariadb.connect(database)
    with db.cursor() as cursor:
        cursor.execute("DROP VIEW churn_scored")
        cursor.execute("DROP TABLE churn")
    db.close()
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    out = result.stdout
    table = _lines(out, "FAIL  table churn (pipeline churn)")
    assert table and "does not exist" in table[0], out
    for pipeline in ("churn", "feedback"):
        endpoint = [
            line for line in _lines(out, "FAIL  endpoint") if f"pipeline {pipeline}" in line
        ]
        assert endpoint and "unreachable" in endpoint[0], out


def test_status_reports_each_pipeline(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(mariadb, tmp_path, endpoints.url)
    before = run_cli("status", "--config", str(config), "--json")
    assert before.returncode == 0, before.stderr
    statuses = {s["pipeline"]: s for s in json.loads(before.stdout)}
    assert statuses["churn"]["snapshot_state"] == "not started"
    assert statuses["churn"]["leader_connection"] is None
    assert statuses["churn"]["dead_letters"] == 0
    text = run_cli("status", "--config", str(config))
    assert text.returncode == 0
    assert text.stdout.startswith("churn: snapshot not started;"), text.stdout
