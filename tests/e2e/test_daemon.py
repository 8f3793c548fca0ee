"""The daemon as a subprocess: fatal start-up errors, kill -9 and restart, the demo."""

from __future__ import annotations

import json
import signal
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.mysql_dist import MysqlDistribution
from cdc_scorer.local.servers import (
    MARIADB,
    MYSQL,
    DatabaseServer,
    PrivateMariaDB,
    PrivateMySQL,
    private_server,
)
from cdc_scorer.local.vector_servers import MariadbDistribution
from cdc_scorer.sources.binlog.server import binlog_status_sql, server_info
from tests.conftest import Source
from tests.e2e.daemon import VersionMonitor, kill, purge_binlogs, run_cli, start, wait
from tests.integration.scenario import (
    churn_matches,
    compressed_transactions,
    create_database,
    expected_feedback,
    init_scorer,
    insert_churn,
    stored_churn,
    stored_feedback,
    write_config,
)
from tests.integration.test_bedrock import converse_pipeline, write_spec


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[source]\nport = 99999\ndatabse = "x"\n\n[[pipelines]]\nname = "churn"\n'
        'table = "churn"\nservice = "sagemaker"\n'
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    err = result.stderr
    for expected in (
        "source.port",
        "source.databse: Extra inputs are not permitted",
        "source.database: Field required",
        "add a [pipelines.sagemaker] section",
    ):
        assert expected in err, err


def test_statement_binlog_is_one_clear_line(tmp_path: Path) -> None:
    with PrivateMariaDB(binlog_args=("--binlog-format=STATEMENT",)) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        write_config(config, server, "mltest", "http://127.0.0.1:9")
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cdc-scorer: binlog_format is STATEMENT, must be ROW"), lines
    assert "set binlog_format=ROW" in lines[-1]


def test_missing_key_is_a_start_up_error(tmp_path: Path, mariadb: DatabaseServer) -> None:
    database = f"nokey_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    config = tmp_path / "s.toml"
    write_config(config, mariadb, database, "http://127.0.0.1:9")
    settings = tomllib.loads(config.read_text())
    del settings["pipelines"][0]["key_columns"]  # churn: no primary key, no key_columns
    config.write_text(tomli_w.dumps(settings))
    result = run_cli("init", "--config", str(config))
    assert result.returncode == 1
    assert "table churn has no primary key" in result.stderr
    assert "key_columns" in result.stderr


def test_a_wrong_bedrock_model_id_stops_the_daemon_with_one_line(
    tmp_path: Path, mariadb: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    database = f"bedrock_{uuid.uuid4().hex[:6]}"
    create_database(mariadb, database)
    db = mariadb.connect(database)
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('my bill is wrong')")
    db.close()
    config = tmp_path / "s.toml"
    wrong = "amazon.nova-nonexistent-v9:0"
    write_spec(config, mariadb, database, endpoints.url, [converse_pipeline(model_id=wrong)])
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"cdc-scorer: Converse {wrong}: ResourceNotFoundException (HTTP 404): Model not found."
    ), result.stderr[-2000:]


@pytest.fixture
def compressed(source: Source) -> Iterator[bool]:
    """On MySQL, every transaction of the test is compressed (binlog_transaction_compression,
    a TRANSACTION_PAYLOAD event each); MariaDB has no such setting."""
    if not source.mysql:
        yield False
        return
    admin = source.server.connect()
    with admin.cursor() as cursor:
        cursor.execute("SET GLOBAL binlog_transaction_compression = ON")
    try:
        yield True
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL binlog_transaction_compression = OFF")
        admin.close()


@pytest.mark.timeout(240)
def test_kill_9_at_several_points_converges(
    tmp_path: Path, source: Source, compressed: bool, endpoints: BackgroundModelServer
) -> None:
    server = source.server
    database = f"kill_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    spec = write_config(
        config, server, database, endpoints.url, max_rows=50, positions=source.positions
    )
    init_scorer(spec)
    db = server.connect(database)
    payloads_before = compressed_transactions(db)
    generator = ChurnRowGenerator(21)
    live: list[dict[str, Any]] = list(generator.rows(5000))  # the scenario's 5,000 rows
    insert_churn(db, live)
    # Kill during the snapshot, then during a mixed stream, three times over.
    endpoints.set_faults({"sagemaker": {"latency_ms": 20}})
    daemon = start(config)
    wait(lambda: len(stored_churn(db)) > 200, 60, "snapshot under way", daemon)
    kill(daemon)
    assert len(stored_churn(db)) < 5000  # it really died in the middle of the snapshot
    endpoints.set_faults({"sagemaker": {"latency_ms": 0}})
    monitor = VersionMonitor(server, database)
    for round_ in range(3):
        if round_ == 1:  # the snapshot's catch-up is over: from now on versions only move on
            monitor.start()
        daemon = start(config)
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
                    kill(daemon)  # mid-stream
                    daemon = start(config)
        wait(lambda: churn_matches(db), 90, f"convergence after round {round_}", daemon)
        if round_ < 2:
            kill(daemon)
    wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", daemon)
    assert kill(daemon, signal.SIGTERM) == 0
    assert churn_matches(db)  # the differential check after a clean stop
    monitor.stop()
    assert monitor.polls > 10
    assert not monitor.regressions, monitor.regressions[:5]
    if compressed:  # the stream was compressed transactions indeed
        assert compressed_transactions(db) - payloads_before > 600
    db.close()


def test_demo_runs_and_shows_predictions() -> None:
    result = run_cli("demo", "--seconds", "3", "--no-wait", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "FROM churn_scored LIMIT 5" in out
    assert "unscored rows: churn 0/" in out
    # The Bedrock pipelines: a topic from Converse, and the nearest feedback by embedding.
    assert "FROM feedback_topic_scored" in out and "billing" in out
    assert "feedback like 'my bill is wrong' (the vectors are JSON arrays" in out
    nearest = out.split("feedback like 'my bill is wrong'", 1)[1]
    assert "| the bill is wrong again and nobody helps | 0.9" in nearest
    assert "scorer, endpoints and MariaDB are down" in out
    # The libraries' records come out in the daemon's format (JSON here), not as stdlib
    # "INFO:name:message" lines, and their INFO chatter is left out.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert json.loads(line)["event"], line
    assert "allowed_events_in_packet" not in result.stderr
    assert "Found credentials" not in result.stderr


def test_the_demo_on_mariadb_11_8_queries_its_vector_type(
    mariadb_vector_distribution: MariadbDistribution,
) -> None:
    result = run_cli(
        "demo", "--server", "mariadb-vector", "--seconds", "2", "--no-wait", timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "unscored rows: churn 0/" in out
    assert "(MariaDB's VEC_DISTANCE_COSINE on a VECTOR column)" in out
    nearest = out.split("feedback like 'my bill is wrong'", 1)[1]
    assert "VEC_DISTANCE_COSINE(v.`embedding`, VEC_FromText(" in nearest
    assert "| the bill is wrong again and nobody helps | 0.9" in nearest


@pytest.mark.timeout(180)
def test_foreign_purged_and_reset_checkpoints_are_refused(
    tmp_path: Path, endpoints: BackgroundModelServer
) -> None:
    with PrivateMariaDB(server_id=7) as server:
        config, db, generator = _scored_once(tmp_path, server, endpoints, seed=31)

        def refused() -> str:
            result = run_cli("run", "--config", str(config))
            assert result.returncode == 1, result.stderr[-2000:]
            return result.stderr.strip().splitlines()[-1]

        # A checkpoint taken on another server whose GTIDs this one has: GTIDs follow the
        # data (a promoted replica; tests/e2e/test_failover.py), the rows name this server.
        _resumes_after_taken_elsewhere(config, db, "mariadb:server_id=99", "mariadb:server_id=7")

        # The binlog the checkpoint needs was purged while the scorer was down.
        insert_churn(db, list(generator.rows(5)))
        purge_binlogs(db)
        line = refused()
        assert "were purged (the oldest binlog file" in line, line
        assert "raise the binlog retention" in line and "--now --rescore" in line, line

        # The binlog was reset: the checkpoint's GTIDs are not on the server any more.
        with db.cursor() as cursor:
            cursor.execute("RESET MASTER")
        line = refused()
        assert "is not in this server's binlog state" in line, line
        db.close()


def _scored_once(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer, seed: int
) -> tuple[Path, Any, ChurnRowGenerator]:
    """A scorer run that checkpointed and scored 20 rows, then stopped: its config, a
    connection to its database, and the generator of the rows (for more of them)."""
    create_database(server, "mltest")
    config = tmp_path / "s.toml"
    init_scorer(write_config(config, server, "mltest", endpoints.url, snapshot="never"))
    db = server.connect("mltest")
    daemon = start(config)
    wait(lambda: _checkpoint_identity(db) is not None, 30, "first checkpoint", daemon)
    generator = ChurnRowGenerator(seed)
    insert_churn(db, list(generator.rows(20)))
    wait(lambda: len(stored_churn(db)) == 20, 30, "scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0
    return config, db, generator


def _resumes_after_taken_elsewhere(config: Path, db: Any, other: str, this: str) -> None:
    """The checkpoint rows say another server took them: the daemon resumes (its GTIDs are
    here) and the rows name this server again."""
    with db.cursor() as cursor:
        cursor.execute("UPDATE cdc_scorer_checkpoint SET server_identity = %s", (other,))
    daemon = start(config, "elsewhere")
    wait(lambda: _checkpoint_identity(db) == this, 30, "checkpoints of this server", daemon)
    assert "resuming a checkpoint taken on another server" in daemon.log()
    assert kill(daemon, signal.SIGTERM) == 0


def _checkpoint_identity(db: Any) -> str | None:
    with db.cursor() as cursor:
        cursor.execute("SELECT server_identity FROM cdc_scorer_checkpoint LIMIT 1")
        row = cursor.fetchone()
    return None if row is None else str(row[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
def test_file_positions_purged_reset_and_switched_are_refused(
    tmp_path: Path, endpoints: BackgroundModelServer, flavor: str, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {"server_id": 8}
    if flavor == MYSQL:  # MySQL without GTIDs, as Aurora MySQL ships
        options |= {"gtid": False, "distribution": request.getfixturevalue("mysql_distribution")}
    with private_server(flavor, **options) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        spec = write_config(
            config, server, "mltest", endpoints.url, snapshot="never", positions="file"
        )
        init_scorer(spec)
        db = server.connect("mltest")
        info, _ = server_info(db)
        with db.cursor() as cursor:
            cursor.execute(binlog_status_sql(info))
            (current_file, *_) = cursor.fetchone() or ("",)

        def refused_at(position: str, config_path: Path = config) -> str:
            with db.cursor() as cursor:
                cursor.execute("DELETE FROM cdc_scorer_checkpoint")
                for name in ("churn", "feedback"):
                    cursor.execute(
                        "INSERT INTO cdc_scorer_checkpoint (pipeline, position, server_identity, "
                        "snapshot_state, updated_at) VALUES (%s, %s, %s, 'skipped', NOW(6))",
                        (name, position, info.identity),
                    )
            result = run_cli("run", "--config", str(config_path))
            assert result.returncode == 1, result.stderr[-2000:]
            return result.stderr.strip().splitlines()[-1]

        line = refused_at("file:binlog.000099:4")
        assert "binlog file binlog.000099 is no longer on the server (purged" in line, line
        line = refused_at(f"file:{current_file}:999999999")
        assert "is past the end of that file" in line, line
        # A GTID checkpoint read with source.binlog.positions = "file" (and the other way round).
        line = refused_at("gtid:0-8-1")
        assert (
            "is kept by gtid, but source.binlog.positions makes this run keep them by file" in line
        )
        if flavor == MYSQL:  # without GTIDs, "auto" keeps file:pos too: nothing to switch
            db.close()
            return
        auto = tmp_path / "auto.toml"
        auto.write_text(config.read_text().replace('positions = "file"', 'positions = "auto"'))
        line = refused_at(f"file:{current_file}:4", auto)
        assert (
            "is kept by file, but source.binlog.positions makes this run keep them by gtid" in line
        )
        db.close()


@pytest.mark.timeout(180)
def test_mysql_gtid_checkpoints_foreign_purged_and_reset_are_refused(
    tmp_path: Path, endpoints: BackgroundModelServer, mysql_distribution: MysqlDistribution
) -> None:
    """MySQL with GTIDs: a checkpoint of another server, one whose successors were purged,
    and one the server no longer has (binary logs and GTIDs reset) are refused at start-up."""
    with PrivateMySQL(server_id=9, distribution=mysql_distribution) as server:
        config, db, generator = _scored_once(tmp_path, server, endpoints, seed=33)
        identity = _checkpoint_identity(db)
        assert identity is not None and identity.startswith("mysql:")

        def refused() -> str:
            result = run_cli("run", "--config", str(config))
            assert result.returncode == 1, result.stderr[-2000:]
            return result.stderr.strip().splitlines()[-1]

        other = "mysql:00000000-0000-0000-0000-000000000001"
        _resumes_after_taken_elsewhere(config, db, other, identity)

        # Transactions after the checkpoint were purged while the scorer was down.
        insert_churn(db, list(generator.rows(5)))
        with db.cursor() as cursor:
            cursor.execute("FLUSH BINARY LOGS")
            cursor.execute("SHOW BINARY LOGS")
            newest = cursor.fetchall()[-1][0]
            cursor.execute(f"PURGE BINARY LOGS TO '{newest}'")
        line = refused()
        assert "were purged" in line and "raise the binlog retention" in line, line

        # Binary logs and GTIDs reset: the checkpoint's transactions are not on the server.
        with db.cursor() as cursor:
            cursor.execute("RESET BINARY LOGS AND GTIDS")
        line = refused()
        assert "is not in this server's gtid_executed" in line, line
        db.close()


@pytest.mark.timeout(120)
def test_an_event_the_reader_cannot_read_stops_it_with_one_line(
    tmp_path: Path, endpoints: BackgroundModelServer
) -> None:
    """MariaDB with log_bin_compress=ON writes compressed rows events, which neither the library
    nor the reader parses: the daemon stops with one line naming the event and the setting —
    the rows are never skipped."""
    options = ("--log-bin-compress=ON", "--log-bin-compress-min-len=10")
    with PrivateMariaDB(server_id=10, extra_args=options) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        spec = write_config(config, server, "mltest", endpoints.url, snapshot="never")
        init_scorer(spec)
        db = server.connect("mltest")
        daemon = start(config)
        wait(lambda: _checkpoint_identity(db) is not None, 30, "streaming", daemon)
        insert_churn(db, list(ChurnRowGenerator(35).rows(20)))
        code = daemon.wait(timeout=60)
        daemon.stop()  # it has exited: this closes its log
        assert code == 1
        line = daemon.log().strip().splitlines()[-1]
        assert line.startswith("cdc-scorer: binlog event type 16"), line
        assert "ROWS_COMPRESSED_EVENT" in line and "set log_bin_compress=OFF" in line, line
        assert stored_churn(db) == {}  # nothing was scored past it
        db.close()


@pytest.mark.timeout(120)
def test_an_xa_transaction_on_a_captured_table_stops_the_reader(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    """XA PREPARE writes a transaction's rows before it commits (XA COMMIT, later, another
    transaction) — or never (XA ROLLBACK). On a table no pipeline reads it is passed over; on
    a captured one the reader stops with one line instead of guessing."""
    database = f"xa_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    spec = write_config(config, server, database, endpoints.url, snapshot="never")
    init_scorer(spec)
    db = server.connect(database)
    with db.cursor() as cursor:
        cursor.execute("CREATE TABLE other (id INT PRIMARY KEY)")
    daemon = start(config)
    wait(lambda: _checkpoint_identity(db) is not None, 30, "streaming", daemon)
    generator = ChurnRowGenerator(91)
    with db.cursor() as cursor:
        for statement in ("XA START 'a'", "INSERT INTO other VALUES (1)", "XA END 'a'"):
            cursor.execute(statement)
        cursor.execute("XA PREPARE 'a'")
        cursor.execute("XA COMMIT 'a'")
    insert_churn(db, list(generator.rows(3)))
    wait(lambda: len(stored_churn(db)) == 3, 30, "rows after an XA on another table", daemon)
    with db.cursor() as cursor:
        cursor.execute("XA START 'b'")
    insert_churn(db, list(generator.rows(1)))
    with db.cursor() as cursor:
        cursor.execute("XA END 'b'")
        cursor.execute("XA PREPARE 'b'")
        cursor.execute("XA COMMIT 'b'")
    code = daemon.wait(timeout=60)
    daemon.stop()  # it has exited: this closes its log
    assert code == 1
    line = daemon.log().strip().splitlines()[-1]
    assert line.startswith("cdc-scorer: an XA transaction prepared at "), line
    assert "changed captured tables" in line, line
    db.close()
