"""`cdc-scorer check` and `cdc-scorer status` as a user runs them, against real servers."""

from __future__ import annotations

import json
import signal
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pymysql
import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.servers import MARIADB, MYSQL, DatabaseServer, private_server
from tests.conftest import Source
from tests.e2e.daemon import kill, run_cli, start, wait
from tests.integration.scenario import (
    create_database,
    init_scorer,
    insert_churn,
    readme_grants,
    stored_churn,
    write_config,
)


def _ready_database(
    server: DatabaseServer,
    tmp_path: Path,
    endpoint_url: str,
    positions: str = "auto",
    init: bool = True,
) -> Path:
    database = f"chk_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    spec = write_config(config, server, database, endpoint_url, positions=positions)
    if init:
        init_scorer(spec)
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(3).rows(5)))
    db.close()
    return config


def _view_columns(db: Any) -> list[str]:
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT * FROM feedback_scored LIMIT 0")
            return [d[0] for d in cursor.description]
    except pymysql.MySQLError:
        return []


def _lines(stdout: str, prefix: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(prefix)]


def test_check_passes_on_a_good_setup(
    tmp_path: Path, source: Source, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(source.server, tmp_path, endpoints.url, source.positions)
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
    # What a failover does with this configuration's positions.
    (failover,) = _lines(result.stdout, "PASS  failover: ")
    if source.name.endswith("file"):
        assert "file:pos (no GTIDs): on another server the checkpoint is refused" in failover
    else:
        assert "resumes the stream" in failover


@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
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
    tmp_path: Path,
    endpoints: BackgroundModelServer,
    server_args: dict[str, Any],
    failing: str,
    flavor: str,
    request: pytest.FixtureRequest,
) -> None:
    if flavor == MYSQL:
        server_args = {**server_args, "distribution": request.getfixturevalue("mysql_distribution")}
    with private_server(flavor, **server_args) as server:
        config = _ready_database(server, tmp_path, endpoints.url)
        result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert failing in result.stdout, result.stdout


def test_check_fails_on_missing_grants(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(server, tmp_path, endpoints.url)
    database = config.read_text().split('database = "')[1].split('"')[0]
    user = f"ro_{uuid.uuid4().hex[:6]}"
    conn = server.connect()
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
) -> None:  # no binlog involved: MariaDB alone
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
    tmp_path: Path, source: Source, endpoints: BackgroundModelServer
) -> None:
    config = _ready_database(source.server, tmp_path, endpoints.url, source.positions)
    before = run_cli("status", "--config", str(config), "--json")
    assert before.returncode == 0, before.stderr
    statuses = {s["pipeline"]: s for s in json.loads(before.stdout)}
    assert statuses["churn"]["snapshot_state"] == "not started"
    assert statuses["churn"]["leader_connection"] is None
    assert statuses["churn"]["dead_letters"] == 0
    text = run_cli("status", "--config", str(config))
    assert text.returncode == 0
    assert text.stdout.startswith("churn: snapshot not started;"), text.stdout
    # While a daemon runs: the checkpoint in the source's kind of position, the leader's
    # connection, the predictions; transactions behind where positions can count them.
    daemon = start(config)
    try:
        wait(lambda: _status(config)["churn"]["predictions"] == 5, 60, "rows scored", daemon)
        churn = _status(config)["churn"]
        kind = {"mariadb-gtid": "gtid:", "mariadb-file": "file:", "mysql-gtid": "mysqlgtid:"}
        assert churn["position"].startswith(kind.get(source.name, "file:")), churn
        assert churn["leader_connection"] is not None
        assert churn["snapshot_state"] == "done"
        if source.positions == "auto" and source.name != "mysql-file":
            assert isinstance(churn["transactions_behind"], int)
        else:
            assert churn["transactions_behind"] is None  # file:pos cannot count transactions
    finally:
        assert kill(daemon, signal.SIGTERM) == 0


def _status(config: Path) -> dict[str, Any]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return {s["pipeline"]: s for s in json.loads(result.stdout)}


def test_readme_grants_are_enough(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    """A user with exactly the README's grants (deploy/grants.sql) runs `init` (twice: it is
    idempotent), passes `check`, scores rows and makes a view again after an ALTER TABLE; on
    MySQL it authenticates with caching_sha2_password over plaintext (the RSA key exchange,
    through the `cryptography` package)."""
    config = _ready_database(server, tmp_path, endpoints.url, init=False)
    database = config.read_text().split('database = "')[1].split('"')[0]
    user, password = f"cdc_{uuid.uuid4().hex[:6]}", "S3cret-pw!"
    admin = server.connect()
    with admin.cursor() as cursor:
        for statement in readme_grants(server.flavor, user, password, database):
            cursor.execute(statement)
        cursor.execute("SELECT plugin FROM mysql.user WHERE user = %s", (user,))
        (plugin,) = cursor.fetchone() or ("",)
    admin.close()
    if server.flavor == MYSQL:
        assert plugin == "caching_sha2_password"
    settings = tomllib.loads(config.read_text())
    settings["source"] |= {"user": user, "password": password}
    config.write_text(tomli_w.dumps(settings))
    for _ in range(2):
        result = run_cli("init", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _lines(result.stdout, "FAIL"), result.stdout
    daemon = start(config)
    try:
        db = server.connect(database)
        insert_churn(db, list(ChurnRowGenerator(5).rows(20)))
        wait(lambda: len(stored_churn(db)) == 25, 60, "rows scored as the granted user", daemon)
        with db.cursor() as cursor:
            cursor.execute("ALTER TABLE feedback ADD COLUMN channel VARCHAR(8)")
        wait(lambda: "channel" in _view_columns(db), 60, "view made again as the user", daemon)
        db.close()
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
