"""A position lost while the scorer was down (binlog purged; replication slot dropped or
invalidated), re-scored with ``on_lost_position = "rescore"``: the rows inserted, updated,
deleted and re-keyed in the gap all end up right — the predictions of the rows deleted in the
gap are swept away, also through a kill -9 in the middle of the re-score, while the stream
writes (and re-creates a deleted key) beside it."""

from __future__ import annotations

import json
import signal
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator, FeedbackGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from cdc_scorer.local.servers import MARIADB, MYSQL, DatabaseServer, private_server
from tests.e2e.daemon import Daemon, http_get, kill, metric, purge_binlogs, run_cli, start, wait
from tests.integration.scenario import (
    churn_matches,
    create_database,
    expected_feedback,
    insert_churn,
    stored_feedback,
    write_config,
)
from tests.pg import SMALL_SLOT_SETTINGS, PgDatabase, pg_config, wal_fill_past_slot

CHURN_DELETES, CHURN_KEY_CHANGES, FEEDBACK_DELETES = 23, 5, 6
# The churn predictions whose row the gap took away: the deleted rows and the old keys.
CHURN_ORPHANS = CHURN_DELETES + CHURN_KEY_CHANGES
PACED = {"rescore": {"max_rows_per_s": 40}, "snapshot_chunk_rows": 10}


def _status(config: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return {s["pipeline"]: s for s in json.loads(result.stdout)}


def _phones(conn: Any) -> list[str]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT phone FROM churn ORDER BY phone")
        return [str(row[0]) for row in cursor.fetchall()]


def _feedback_ids(conn: Any) -> list[int]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM feedback ORDER BY id")
        return [int(row[0]) for row in cursor.fetchall()]


def _insert_feedback(conn: Any, texts: list[str]) -> None:
    with conn.cursor() as cursor:
        for text in texts:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (text,))


def _feedback_matches(conn: Any) -> bool:
    return stored_feedback(conn) == expected_feedback(conn)


def _write_the_gap(conn: Any, insert: Any, generator: ChurnRowGenerator) -> list[str]:
    """What the scorer misses: churn rows deleted, updated (model inputs changed), re-keyed
    and inserted; feedback deleted, updated and inserted. The phones deleted, in order."""
    phones = _phones(conn)
    deleted = phones[:CHURN_DELETES]
    updated = phones[CHURN_DELETES : CHURN_DELETES + 20]
    rekeyed = phones[CHURN_DELETES + 20 : CHURN_DELETES + 20 + CHURN_KEY_CHANGES]
    ids = _feedback_ids(conn)
    with conn.cursor() as cursor:
        for phone in deleted:
            cursor.execute("DELETE FROM churn WHERE phone = %s", (phone,))
        for phone in updated:
            cursor.execute(
                "UPDATE churn SET day_mins = day_mins + 71.5, cust_service_calls = 9 "
                "WHERE phone = %s",
                (phone,),
            )
        for phone in rekeyed:
            cursor.execute("UPDATE churn SET phone = %s WHERE phone = %s", (f"{phone}-k", phone))
        for feedback_id in ids[:FEEDBACK_DELETES]:
            cursor.execute("DELETE FROM feedback WHERE id = %s", (feedback_id,))
        for feedback_id in ids[FEEDBACK_DELETES : FEEDBACK_DELETES + 4]:
            cursor.execute(
                "UPDATE feedback SET user_feedback = 'the worst support I ever had' WHERE id = %s",
                (feedback_id,),
            )
    insert(list(generator.rows(10)))
    _insert_feedback(conn, [FeedbackGenerator(91).text() for _ in range(3)])
    return deleted


def _rescore_through_kill_9(
    config: Path, conn: Any, insert: Any, generator: ChurnRowGenerator, deleted: list[str]
) -> Daemon:
    """Start with on_lost_position = "rescore" (paced), kill -9 once the sweep has removed
    some orphans and before the rows are all re-scored, write beside it (a deleted key comes
    back), start again: the daemon that converges."""
    settings = tomllib.loads(config.read_text())
    log = "pgoutput" if "pgoutput" in settings["source"] else "binlog"  # the log's section
    settings["source"][log]["on_lost_position"] = "rescore"
    for pipeline in settings["pipelines"]:
        pipeline |= PACED
    config.write_text(tomli_w.dumps(settings))
    daemon = start(config, "rescore")

    def halfway() -> bool:
        job = _status(config)["churn"]["rescore"]
        return bool(job and job["reason"] == "position lost" and job["orphans_removed"] > 0)

    wait(halfway, 60, "the sweep under way", daemon)
    job = _status(config)["churn"]["rescore"]
    assert job["rows_done"] < job["rows_total"], job  # killed before the rows were all done
    kill(daemon)  # kill -9
    comeback = dict(next(generator.rows(1)), phone=deleted[0])  # a deleted key re-created
    insert([comeback, *generator.rows(5)])
    _insert_feedback(conn, ["so helpful and kind"])
    return start(config, "after-kill")


def _converged(config: Path, conn: Any, daemon: Daemon, http_port: int) -> None:
    """Both tables equal a from-scratch scoring of their rows; one "position lost" job per
    pipeline, which removed the predictions of the rows the gap took away."""

    def done() -> bool:
        status = _status(config)
        return all(status[p]["rescore"] is None for p in ("churn", "feedback"))

    wait(done, 120, "the re-scores done", daemon)
    wait(lambda: churn_matches(conn) and _feedback_matches(conn), 60, "convergence", daemon)
    status = _status(config)
    churn_jobs = [j for j in status["churn"]["rescores_finished"] if j["reason"] == "position lost"]
    feedback_jobs = [
        j for j in status["feedback"]["rescores_finished"] if j["reason"] == "position lost"
    ]
    assert len(churn_jobs) == 1 and len(feedback_jobs) == 1, status
    # The re-created key may be back before the sweep reads it (then it is no orphan).
    assert CHURN_ORPHANS - 1 <= churn_jobs[0]["orphans_removed"] <= CHURN_ORPHANS, churn_jobs
    assert churn_jobs[0]["swept"], churn_jobs
    assert feedback_jobs[0]["orphans_removed"] == FEEDBACK_DELETES, feedback_jobs
    # The counter of this process (started after the kill) counts what it removed.
    _, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
    for pipeline, most in (("churn", CHURN_ORPHANS), ("feedback", FEEDBACK_DELETES)):
        name = f'cdc_scorer_rescore_orphans_removed_total{{pipeline="{pipeline}"}}'
        removed = metric(body, name)
        assert removed is not None and 0 <= removed <= most, body
    shown = run_cli("status", "--config", str(config))
    assert shown.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("flavor", "positions"),
    [(MARIADB, "gtid"), (MARIADB, "file"), (MYSQL, "file"), (MYSQL, "gtid")],
    ids=["mariadb-gtid", "mariadb-file", "mysql-file", "mysql-gtid"],
)
def test_a_purged_binlog_rescored_removes_what_was_deleted_in_the_gap(
    tmp_path: Path,
    flavor: str,
    positions: str,
    endpoints: BackgroundModelServer,
    request: pytest.FixtureRequest,
) -> None:
    options: dict[str, Any] = {}
    if flavor == MYSQL:
        options["distribution"] = request.getfixturevalue("mysql_distribution")
        options["gtid"] = positions == "gtid"
    with private_server(flavor, server_id=41, **options) as server:
        _binlog_case(tmp_path, server, endpoints, "file" if positions == "file" else "auto")


def _binlog_case(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer, positions: str
) -> None:
    from cdc_scorer.local.servers import free_port

    create_database(server, "mltest")
    db = server.connect("mltest")
    generator = ChurnRowGenerator(93)
    insert_churn(db, list(generator.rows(200)))
    _insert_feedback(db, [FeedbackGenerator(92).text() for _ in range(30)])
    config = tmp_path / "s.toml"
    port = free_port()
    write_config(config, server, "mltest", endpoints.url, positions=positions, http_port=port)
    assert run_cli("init", "--config", str(config)).returncode == 0
    daemon = start(config)
    wait(lambda: churn_matches(db) and _feedback_matches(db), 60, "scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0

    def insert(rows: list[dict[str, Any]]) -> None:
        insert_churn(db, rows)

    deleted = _write_the_gap(db, insert, generator)
    purge_binlogs(db)

    refused = run_cli("run", "--config", str(config))
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert "raise the binlog retention" in line and "--now --rescore" in line, line
    checked = run_cli("check", "--config", str(config))
    assert "FAIL  checkpoint of pipeline churn:" in checked.stdout, checked.stdout

    daemon = _rescore_through_kill_9(config, db, insert, generator, deleted)
    try:
        _converged(config, db, daemon, port)
    finally:
        assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
    db.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("loss", ["dropped", "invalidated"])
def test_a_lost_slot_rescored_removes_what_was_deleted_in_the_gap(
    tmp_path: Path, loss: str, postgres: PostgresServer, endpoints: BackgroundModelServer
) -> None:
    from cdc_scorer.local.servers import free_port

    with PrivatePostgreSQL(settings=SMALL_SLOT_SETTINGS) as server:
        db = PgDatabase(server)
        generator = ChurnRowGenerator(94)
        db.insert_churn(list(generator.rows(200)))
        _insert_feedback(db.conn, [FeedbackGenerator(95).text() for _ in range(30)])
        config = tmp_path / "s.toml"
        port = free_port()
        pg_config(config, db, endpoints.url, http_port=port)
        assert run_cli("init", "--config", str(config)).returncode == 0
        daemon = start(config)
        wait(lambda: churn_matches(db.conn) and _feedback_matches(db.conn), 60, "scored", daemon)
        assert kill(daemon, signal.SIGTERM) == 0

        deleted = _write_the_gap(db.conn, db.insert_churn, generator)
        if loss == "dropped":
            db.execute("SELECT pg_drop_replication_slot(%s)", (db.slot,))
            checked = run_cli("check", "--config", str(config))
            assert checked.returncode == 1
            slot_line = next(
                x for x in checked.stdout.splitlines() if x.startswith("FAIL  replication slot")
            )
            assert "it was dropped, and the changes since are gone" in slot_line, slot_line
            assert "run `cdc-scorer init" not in slot_line.split("—")[0], slot_line
            assert '"rescore"' in slot_line and "--now --rescore" in slot_line, slot_line
        else:  # away for long: the server keeps no more than 1 MB of WAL for the slot
            assert wal_fill_past_slot(db) == "lost"

        daemon = _rescore_through_kill_9(config, db.conn, db.insert_churn, generator, deleted)
        try:
            _converged(config, db.conn, daemon, port)
        finally:
            assert kill(daemon, signal.SIGTERM) == 0, daemon.log()[-2000:]
        db.conn.close()
