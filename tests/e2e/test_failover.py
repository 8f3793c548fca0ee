"""Failover: the scorer follows its positions to a promoted replica.

Real replication set up by the test: a primary and a replica started by the project's launcher,
the replica applying by GTID; the scorer runs on the primary, is killed, the primary is lost,
the replica promoted, and the scorer pointed at it resumes from its checkpoint by GTID."""

from __future__ import annotations

import json
import signal
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.mysql_dist import MysqlDistribution
from cdc_scorer.local.servers import MARIADB, MYSQL, PrivateServer, free_port, private_server
from tests.e2e.daemon import http_get, kill, metric, run_cli, start, wait
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


def _pair(flavor: str, request: pytest.FixtureRequest) -> tuple[PrivateServer, PrivateServer]:
    options: dict[str, Any] = {}
    if flavor == MYSQL:
        options["distribution"] = request.getfixturevalue("mysql_distribution")
    # MariaDB logs what a replica applies only with log_slave_updates (MySQL: on by default).
    replica_args = ("--log-slave-updates",) if flavor == MARIADB else ()
    primary = private_server(flavor, server_id=21, **options)
    replica = private_server(flavor, server_id=22, extra_args=replica_args, **options)
    return primary, replica


def _without_gtids(flavor: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Launcher options: MySQL with gtid_mode=OFF (as Aurora MySQL ships); MariaDB as it is
    (it always has GTIDs: a test that reads it by file:pos sets positions = "file")."""
    if flavor == MYSQL:
        return {"gtid": False, "distribution": request.getfixturevalue("mysql_distribution")}
    return {}


def _snapshot_rows(port: int) -> float:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    rows = [
        metric(body, f'cdc_scorer_snapshot_rows_total{{pipeline="{name}"}}')
        for name in ("churn", "feedback")
    ]
    return sum(r or 0.0 for r in rows)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
def test_a_promoted_replica_resumes_by_gtid_without_a_snapshot(
    tmp_path: Path,
    flavor: str,
    endpoints: BackgroundModelServer,
    request: pytest.FixtureRequest,
) -> None:
    primary_launcher, replica_launcher = _pair(flavor, request)
    with primary_launcher as primary, replica_launcher as replica:
        replica.replicate_from(primary)
        create_database(primary, "mltest")
        config = tmp_path / "s.toml"
        port = free_port()
        spec = write_config(config, primary, "mltest", endpoints.url, http_port=port)
        init_scorer(spec)
        db = primary.connect("mltest")
        generator = ChurnRowGenerator(41)
        insert_churn(db, list(generator.rows(200)))
        daemon = start(config, "on-primary")
        wait(lambda: len(stored_churn(db)) == 200, 60, "scored on the primary", daemon)
        wait(lambda: _snapshots_done(db), 60, "both first snapshots committed", daemon)
        insert_churn(db, list(generator.rows(50)))
        wait(lambda: len(stored_churn(db)) > 200, 60, "streaming", daemon)
        kill(daemon)  # kill -9, possibly between a batch and its commit
        # Written while no scorer runs: only the stream can score them, from the checkpoint.
        insert_churn(db, list(generator.rows(30)))
        with db.cursor() as cursor:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES ('great, thank you')")
        db.close()
        replica.wait_applied(primary)
        primary_identity = _identity(replica)
        primary_launcher.stop()  # the primary is lost
        replica.promote()

        settings = tomllib.loads(config.read_text())
        settings["source"]["port"] = replica.port
        config.write_text(tomli_w.dumps(settings))
        db = replica.connect("mltest")
        daemon = start(config, "on-replica")
        try:
            wait(
                lambda: "resuming a checkpoint taken on another server" in daemon.log(),
                60,
                "resumed on the promoted replica",
                daemon,
            )
            insert_churn(db, list(generator.rows(40)))  # written on the new primary
            wait(
                lambda: churn_matches(db) and len(stored_churn(db)) == 320,
                90,
                "the tables converge",
                daemon,
            )
            wait(lambda: stored_feedback(db) == expected_feedback(db), 60, "feedback", daemon)
            assert _snapshot_rows(port) == 0  # no chunk read: nothing was snapshotted
            assert _identity(replica) != primary_identity  # the rows name the new server
            shown = run_cli("status", "--config", str(config))
            assert f"on {_identity(replica)})" in shown.stdout, shown.stdout  # and status
        finally:
            assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
            db.close()


def _snapshots_done(db: Any) -> bool:
    with db.cursor() as cursor:
        cursor.execute("SELECT snapshot_state FROM cdc_scorer_checkpoint")
        states = [str(r[0]) for r in cursor.fetchall()]
    return states == ["done", "done"]


def _identity(server: Any) -> str:
    conn = server.connect("mltest")
    with conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT server_identity FROM cdc_scorer_checkpoint")
        rows = cursor.fetchall()
    conn.close()
    assert len(rows) == 1, rows
    return str(rows[0][0])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
def test_file_positions_are_checked_by_what_is_there(
    tmp_path: Path,
    flavor: str,
    endpoints: BackgroundModelServer,
    request: pytest.FixtureRequest,
) -> None:
    """file:pos (MySQL without GTIDs, as Aurora MySQL ships; MariaDB with positions="file"): a
    checkpoint resumes where the commit it was taken after is (its fingerprint), whoever the
    server says it is, and a same-named binlog file of another server is refused, never read."""
    options = _without_gtids(flavor, request)
    with private_server(flavor, server_id=31, **options) as first:
        create_database(first, "mltest")
        config = tmp_path / "s.toml"
        spec = write_config(
            config, first, "mltest", endpoints.url, snapshot="never", positions="file"
        )
        init_scorer(spec)
        _as_readme_user(first, config)  # the fingerprint is read with the README's grants
        db = first.connect("mltest")
        generator = ChurnRowGenerator(43)
        daemon = start(config, "first")
        wait(lambda: len(_positions(db)) == 2, 30, "checkpoints", daemon)
        insert_churn(db, list(generator.rows(20)))
        wait(lambda: len(stored_churn(db)) == 20, 60, "scored", daemon)
        assert kill(daemon, signal.SIGTERM) == 0
        positions = _positions(db)
        assert all("#" in p for p in positions), positions  # each with its commit's fingerprint

        # The same binlog under another identity (a failover that kept the binlog files, as
        # Aurora's cluster volume does): the commit is there, the checkpoint resumes.
        with db.cursor() as cursor:
            cursor.execute("UPDATE cdc_scorer_checkpoint SET server_identity = 'mysql:elsewhere'")
        daemon = start(config, "same-binlog")
        insert_churn(db, list(generator.rows(10)))
        wait(lambda: len(stored_churn(db)) == 30, 60, "scored after resuming", daemon)
        assert "resuming a checkpoint taken on another server" in daemon.log()
        assert kill(daemon, signal.SIGTERM) == 0
        (checkpoint,) = set(_positions(db))
        db.close()

    # Another server whose binlog file of that name is long enough to have that offset (a
    # restore or a clone: Aurora's binlog starts again at mysql-bin-changelog.000001).
    with private_server(flavor, server_id=32, **options) as other:
        create_database(other, "mltest")
        spec = write_config(
            config, other, "mltest", endpoints.url, snapshot="never", positions="file"
        )
        init_scorer(spec)
        db = other.connect("mltest")
        insert_churn(db, list(ChurnRowGenerator(44).rows(300)))  # binlog past the offset
        _, _, place = checkpoint.partition(":")
        _, _, rest = place.partition(":")
        with db.cursor() as cursor:
            cursor.execute("SHOW BINARY LOGS")
            current = str(cursor.fetchall()[-1][0])
            cursor.execute("SELECT @@server_id")
            (server_id,) = cursor.fetchone() or (0,)
            identity = "mariadb:server_id=32" if flavor == MARIADB else _uuid_identity(cursor)
            for name in ("churn", "feedback"):
                cursor.execute(
                    "INSERT INTO cdc_scorer_checkpoint (pipeline, position, server_identity, "
                    "snapshot_state, updated_at) VALUES (%s, %s, %s, 'skipped', NOW(6))",
                    (name, f"file:{current}:{rest}", identity),
                )
        assert server_id == 32
        result = run_cli("run", "--config", str(config))
        assert result.returncode == 1, result.stderr[-2000:]
        line = result.stderr.strip().splitlines()[-1]
        assert "its binlog file of that name is another one" in line, line
        assert stored_churn(db) == {}  # nothing read from that file

        # With on_lost_position = "rescore": stream from now, re-score every row beside it.
        settings = tomllib.loads(config.read_text())
        settings["source"]["binlog"]["on_lost_position"] = "rescore"
        config.write_text(tomli_w.dumps(settings))
        daemon = start(config, "rescore")
        try:
            wait(lambda: "checkpoint position lost" in daemon.log(), 30, "lost", daemon)
            generator = ChurnRowGenerator(45)
            insert_churn(db, list(generator.rows(20)))  # the stream, beside the re-score
            _converged_with_one_rescore(config, db, daemon, table_rows=300, streamed=20)
        finally:
            assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
        db.close()


def _as_readme_user(server: Any, config: Path) -> None:
    """Create a user with exactly the README's grants (deploy/grants.sql) and run the
    config's daemon and commands as that user."""
    user, password = "cdc_fo", "Fail0ver-pw!"
    admin = server.connect()
    with admin.cursor() as cursor:
        for statement in readme_grants(server.flavor, user, password, "mltest"):
            cursor.execute(statement)
    admin.close()
    settings = tomllib.loads(config.read_text())
    settings["source"] |= {"user": user, "password": password}
    config.write_text(tomli_w.dumps(settings))


def _converged_with_one_rescore(
    config: Path, db: Any, daemon: Any, *, table_rows: int, streamed: int
) -> None:
    """The tables converge after a lost position, through one "position lost" re-score that
    read each row once: the table's rows, and at most those the stream wrote meanwhile."""
    total = table_rows + streamed
    wait(
        lambda: churn_matches(db) and len(stored_churn(db)) == total,
        90,
        "the tables converge",
        daemon,
    )
    done = _finished_jobs(config)
    assert [j["reason"] for j in done] == ["position lost"], done
    assert table_rows <= done[0]["rows_done"] <= total, done


def _finished_jobs(config: Path) -> list[dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    (churn,) = [s for s in json.loads(result.stdout) if s["pipeline"] == "churn"]
    return list(churn["rescores_finished"])


def _positions(db: Any) -> list[str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT position FROM cdc_scorer_checkpoint")
        return [str(r[0]) for r in cursor.fetchall()]


def _uuid_identity(cursor: Any) -> str:
    cursor.execute("SELECT @@server_uuid")
    (uuid,) = cursor.fetchone() or ("",)
    return f"mysql:{uuid}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
def test_reposition_by_each_form_checked_against_the_server(
    tmp_path: Path,
    flavor: str,
    endpoints: BackgroundModelServer,
    request: pytest.FixtureRequest,
) -> None:
    """`cdc-scorer reposition`: --now skips what was written meanwhile, a stored position
    (--gtid on MariaDB, --file/--pos on MySQL without GTIDs) replays from there, --rescore
    re-scores every row; a position not on the server, and a running daemon, are refused."""
    options = _without_gtids(flavor, request)
    with private_server(flavor, server_id=33, **options) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        init_scorer(write_config(config, server, "mltest", endpoints.url, snapshot="never"))
        _as_readme_user(server, config)  # the daemon and the operator's command alike
        db = server.connect("mltest")
        generator = ChurnRowGenerator(46)
        daemon = start(config, "first")
        wait(lambda: len(_positions(db)) == 2, 30, "checkpoints", daemon)
        insert_churn(db, list(generator.rows(10)))
        wait(lambda: len(stored_churn(db)) == 10, 60, "scored", daemon)
        refused = _reposition(config, "--now")
        assert refused.returncode == 1 and "a cdc-scorer is running pipeline churn" in (
            refused.stderr
        ), refused.stderr
        assert kill(daemon, signal.SIGTERM) == 0
        (before,) = {p for p in _positions(db)}
        insert_churn(db, list(generator.rows(7)))  # written while the daemon is down

        moved = _reposition(config, "--now")
        assert moved.returncode == 0, moved.stderr
        assert "pipeline churn repositioned: " in moved.stdout
        daemon = start(config, "after-now")
        insert_churn(db, list(generator.rows(3)))
        wait(lambda: len(stored_churn(db)) == 13, 60, "only the rows after --now", daemon)
        assert kill(daemon, signal.SIGTERM) == 0

        # Back to the earlier checkpoint, named as an operator would: the 7 rows are read.
        kind, _, value = before.partition(":")
        if kind == "file":
            log_file, _, pos = value.partition("#")[0].rpartition(":")
            back = _reposition(config, "--file", log_file, "--pos", pos)
        else:
            back = _reposition(config, "--gtid", value)
        assert back.returncode == 0, back.stderr
        daemon = start(config, "after-back")
        wait(lambda: len(stored_churn(db)) == 20, 60, "the 7 rows replayed", daemon)
        assert churn_matches(db)
        assert kill(daemon, signal.SIGTERM) == 0

        # --rescore: every row again, beside the stream.
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM churn_predictions")  # so that re-scored rows show
        rescored = _reposition(config, "--now", "--rescore")
        assert rescored.returncode == 0 and "re-scored" in rescored.stdout, rescored.stderr
        daemon = start(config, "after-rescore")
        wait(lambda: churn_matches(db) and len(stored_churn(db)) == 20, 60, "re-scored", daemon)
        assert kill(daemon, signal.SIGTERM) == 0

        # Positions that are not on this server are refused, and nothing is stored.
        kept = set(_positions(db))
        if kind == "file":
            wrong = _reposition(config, "--file", log_file, "--pos", str(int(pos) + 1))
            assert "is not where a transaction ends" in wrong.stderr, wrong.stderr
            gone = _reposition(config, "--file", "binlog.000099", "--pos", "4")
            assert "is no longer on the server" in gone.stderr, gone.stderr
        else:
            wrong = _reposition(config, "--gtid", "0-33-999999")
            assert "is not in this server's binlog state" in wrong.stderr, wrong.stderr
        assert wrong.returncode == 1
        assert set(_positions(db)) == kept
        db.close()


def _reposition(config: Path, *args: str) -> Any:
    return run_cli("reposition", "--config", str(config), "--pipeline", "churn", *args)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flavor", [MARIADB, MYSQL])
def test_a_lost_binlog_connection_is_reopened_only_after_the_position_is_checked(
    tmp_path: Path,
    flavor: str,
    endpoints: BackgroundModelServer,
    request: pytest.FixtureRequest,
) -> None:
    """The replication library would reconnect by itself at the position it last read, to
    whatever server the host name reaches then: the scorer refuses that reconnect and makes
    its own, checking the position against the server first (file:pos: its fingerprint)."""
    options = _without_gtids(flavor, request)
    with private_server(flavor, server_id=34, **options) as server:
        create_database(server, "mltest")
        config = tmp_path / "s.toml"
        init_scorer(
            write_config(
                config, server, "mltest", endpoints.url, snapshot="never", positions="file"
            )
        )
        db = server.connect("mltest")
        generator = ChurnRowGenerator(47)
        daemon = start(config)
        try:
            wait(lambda: len(_positions(db)) == 2, 30, "checkpoints", daemon)
            insert_churn(db, list(generator.rows(10)))
            wait(lambda: len(stored_churn(db)) == 10, 60, "scored", daemon)
            with db.cursor() as cursor:
                cursor.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST "
                    "WHERE COMMAND LIKE 'Binlog Dump%%'"
                )
                (dump,) = cursor.fetchall()
                cursor.execute(f"KILL {int(dump[0])}")
            insert_churn(db, list(generator.rows(10)))
            wait(lambda: len(stored_churn(db)) == 20, 60, "scored after the reconnect", daemon)
            log = daemon.log()
            assert '"code": "binlog_reconnect"' in log, log[-3000:]
            assert "binlog position checked before reconnecting" in log
            assert churn_matches(db)
        finally:
            assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
            db.close()


@pytest.mark.timeout(240)
def test_a_promoted_replica_without_gtids_is_refused_or_rescored(
    tmp_path: Path, endpoints: BackgroundModelServer, mysql_distribution: MysqlDistribution
) -> None:
    """MySQL without GTIDs (Aurora MySQL's default), primary → replica by file:pos: after the
    promotion the checkpoint's file:pos means nothing on the replica's own binlog. Refused with
    one line by default; with on_lost_position = "rescore" the tables converge, every row
    re-scored once, the stream scored beside it."""
    options: dict[str, Any] = {"gtid": False, "distribution": mysql_distribution}
    primary_launcher = private_server(MYSQL, server_id=51, **options)
    replica_launcher = private_server(MYSQL, server_id=52, **options)
    with primary_launcher as primary, replica_launcher as replica:
        replica.replicate_from(primary)
        create_database(primary, "mltest")
        config = tmp_path / "s.toml"
        init_scorer(write_config(config, primary, "mltest", endpoints.url, snapshot="never"))
        db = primary.connect("mltest")
        generator = ChurnRowGenerator(48)
        daemon = start(config, "on-primary")
        wait(lambda: len(_positions(db)) == 2, 30, "checkpoints", daemon)
        insert_churn(db, list(generator.rows(100)))
        wait(lambda: len(stored_churn(db)) == 100, 60, "scored on the primary", daemon)
        kill(daemon)
        insert_churn(db, list(generator.rows(20)))  # written while no scorer runs
        db.close()
        replica.wait_applied(primary)
        primary_launcher.stop()
        replica.promote()

        settings = tomllib.loads(config.read_text())
        settings["source"]["port"] = replica.port
        config.write_text(tomli_w.dumps(settings))
        result = run_cli("run", "--config", str(config))
        assert result.returncode == 1, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("cdc-scorer:")]
        assert len(lines) == 1 and "--now --rescore" in lines[0], result.stderr

        settings["source"]["binlog"]["on_lost_position"] = "rescore"
        config.write_text(tomli_w.dumps(settings))
        db = replica.connect("mltest")
        daemon = start(config, "on-replica")
        try:
            insert_churn(db, list(generator.rows(10)))  # the stream, beside the re-score
            _converged_with_one_rescore(config, db, daemon, table_rows=120, streamed=10)
        finally:
            assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
            db.close()
