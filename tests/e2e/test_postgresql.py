"""The daemon on PostgreSQL as an operator runs it: the blog scenario (churn without a primary
key, REPLICA IDENTITY FULL, the public sample) through kill -9 of the scorer and a restart of
the database; start-up refusals with their fixes."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from cdc_scorer.local.servers import free_port
from cdc_scorer.sources.pgoutput.protocol import lsn_text
from tests.certificates import CertificateAuthority
from tests.e2e.daemon import (
    Daemon,
    VersionMonitor,
    http_get,
    kill,
    metric,
    run_cli,
    start,
    wait,
)
from tests.integration.scenario import (
    churn_matches,
    expected_feedback,
    stored_churn,
    stored_feedback,
)
from tests.pg import (
    SMALL_SLOT_SETTINGS,
    PgDatabase,
    pg_config,
    public_sample,
    slot_lag,
    wal_fill_past_slot,
)


@pytest.fixture
def own_postgres(postgres: PostgresServer) -> Iterator[PrivatePostgreSQL]:
    """A private PostgreSQL of the test's own (it restarts it); ``postgres`` first, so a
    machine without the server skips with the banner."""
    launcher = PrivatePostgreSQL()
    try:
        launcher.start()
        yield launcher
    finally:
        launcher.stop()  # also a server that started and failed its readiness wait


def streaming(daemon: Daemon) -> None:
    """Wait until this daemon (its log is shared by all of the test's) streams."""
    starts = sum(1 for d in Daemon.started if d.log_path == daemon.log_path)
    wait(
        lambda: daemon.log().count('"event": "streaming"') >= starts,
        60,
        "the daemon to stream",
        daemon,
    )


def sample_rows() -> list[dict[str, Any]]:
    """The public sample without its one repeated phone (a key must name one row), else the
    generator's 5,000 rows of the same distributions."""
    rows = public_sample()
    if rows is None:
        return list(ChurnRowGenerator(21).rows(5000))
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["phone"] not in seen:
            seen.add(row["phone"])
            unique.append(row)
    return unique


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_blog_scenario_converges_through_kill_9_and_a_database_restart(
    tmp_path: Path, own_postgres: PrivatePostgreSQL, endpoints: BackgroundModelServer
) -> None:
    assert own_postgres.server is not None
    db = PgDatabase(own_postgres.server)
    live = sample_rows()
    db.insert_churn(live)
    config = tmp_path / "s.toml"
    pg_config(config, db, endpoints.url)
    result = run_cli("init", "--config", str(config))
    assert result.returncode == 0, result.stderr
    generator = ChurnRowGenerator(33)

    endpoints.set_faults({"sagemaker": {"latency_ms": 20}})
    daemon = start(config)
    wait(lambda: len(stored_churn(db.conn)) > 200, 60, "snapshot under way", daemon)
    kill(daemon)
    assert len(stored_churn(db.conn)) < len(live)  # it died in the middle of the snapshot
    endpoints.set_faults({"sagemaker": {"latency_ms": 0}})

    monitor = VersionMonitor(own_postgres.server, db.name)
    for round_ in range(3):
        if round_ == 1:  # the snapshot's catch-up is over: from now on versions only move on
            monitor.start()
        daemon = start(config)
        streaming(daemon)
        for i in range(200):
            pick = i % 10
            if pick < 4:
                row = generator.row()
                db.insert_churn([row])
                live.append(row)
            elif pick < 8:
                row = live[(i * 7 + round_) % len(live)]
                db.execute(
                    "UPDATE churn SET day_mins = %s, night_calls = %s WHERE phone = %s",
                    (generator.changed(row)["day_mins"], 50 * (i % 9), row["phone"]),
                )
            else:
                row = live.pop((i * 13 + round_) % len(live))
                db.execute("DELETE FROM churn WHERE phone = %s", (row["phone"],))
            if i % 20 == 0:
                db.execute(
                    "INSERT INTO feedback (user_feedback) VALUES (%s)",
                    (f"great service, thank you {round_}-{i}",),
                )
            if i == 120:
                # Mid-stream: once the last insert is scored, with what follows still to come.
                last = str(live[-1]["phone"])
                wait(
                    lambda last=last: last in stored_churn(db.conn),
                    60,
                    "the round's rows",
                    daemon,
                )
                kill(daemon)
                daemon = start(config)
                streaming(daemon)
            if round_ == 1 and i == 60:
                # The database goes away under the stream and comes back: the scorer
                # reconnects from its last commit and loses nothing.
                db.conn.close()
                own_postgres.restart()
                db.reconnect()
        wait(lambda: churn_matches(db.conn), 120, f"convergence after round {round_}", daemon)
        if round_ < 2:
            kill(daemon)
    wait(lambda: stored_feedback(db.conn) == expected_feedback(db.conn), 60, "feedback", daemon)

    # The slot is told what is committed, also while nothing but heartbeats is written: it
    # reaches the LSN the server had a moment ago within a few heartbeats (0.5 s here).
    _, target = slot_lag(db)
    started = time.monotonic()
    wait(lambda: slot_lag(db)[0] >= target, 10, "the slot's confirmed flush to catch up", daemon)
    caught_up_s = time.monotonic() - started
    assert kill(daemon, signal.SIGTERM) == 0
    assert churn_matches(db.conn)  # the differential check after a clean stop
    monitor.stop()
    assert monitor.polls > 10
    assert not monitor.regressions, monitor.regressions[:5]
    log = daemon.log()
    assert "replication stream disconnected" in log  # the restart was seen, and survived
    print(f"slot caught up with the server's LSN in {caught_up_s:.2f} s")
    db.drop()


def status(config: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return {s["pipeline"]: s for s in json.loads(result.stdout)}


def scored_at(db: PgDatabase) -> dict[str, Any]:
    return dict(db.rows("SELECT phone, scored_at FROM churn_predictions"))


def versions(db: PgDatabase) -> dict[str, int]:
    rows = db.rows("SELECT model_version, count(*) FROM churn_predictions GROUP BY 1")
    return {str(v): int(n) for v, n in rows}


def job_progress(config: Path, reason: str) -> int:
    job = status(config)["churn"]["rescore"]
    return int(job["rows_done"]) if job and job["reason"] == reason else -1


VIEW_COLUMNS = "SELECT column_name FROM information_schema.columns WHERE table_name = %s"


def one_more_churn_row(db: PgDatabase, generator: ChurnRowGenerator) -> None:
    """A change of churn: pgoutput describes a table again (Relation) before its next row."""
    db.insert_churn([generator.row()])


@pytest.mark.timeout(240)
def test_alter_of_model_inputs_on_postgresql(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    generator = ChurnRowGenerator(41)
    pg.insert_churn(list(generator.rows(300)))
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url)
    assert run_cli("init", "--config", str(config)).returncode == 0
    daemon = start(config)
    wait(lambda: churn_matches(pg.conn), 90, "snapshot scored", daemon)

    def alter_jobs() -> list[dict[str, Any]]:
        finished = status(config)["churn"]["rescores_finished"]
        return [j for j in finished if j["reason"] == "ALTER TABLE"]

    before = scored_at(pg)
    pg.execute("ALTER TABLE churn ADD COLUMN note varchar(20)")  # no input changes type
    one_more_churn_row(pg, generator)
    wait(lambda: len(alter_jobs()) == 1, 60, "the ADD COLUMN looked at", daemon)
    assert alter_jobs()[0]["rows_done"] == 0
    assert all(scored_at(pg)[phone] == at for phone, at in before.items())
    assert ("note",) in pg.rows(VIEW_COLUMNS, ("churn_scored",))  # the view follows the table

    # Every row's day_mins changes, without a row change of its own. PostgreSQL refuses to
    # retype a column a view reads: the view goes first, and the scorer makes it again.
    pg.execute("DROP VIEW churn_scored")
    pg.execute("ALTER TABLE churn ALTER COLUMN day_mins TYPE numeric(10,0)")
    one_more_churn_row(pg, generator)
    wait(lambda: len(alter_jobs()) == 2, 60, "the type change re-scored", daemon)
    assert alter_jobs()[1]["rows_done"] == 302
    wait(lambda: churn_matches(pg.conn), 60, "predictions of the new values", daemon)
    assert all(scored_at(pg)[phone] > at for phone, at in before.items())
    wait(lambda: ("day_mins",) in pg.rows(VIEW_COLUMNS, ("churn_scored",)), 30, "the view", daemon)

    # An input retyped while no scorer runs, and no row changed since: found at the start.
    assert kill(daemon, signal.SIGTERM) == 0
    pg.execute("DROP VIEW churn_scored")
    pg.execute("ALTER TABLE churn ALTER COLUMN night_mins TYPE numeric(10,1)")
    daemon = start(config)
    wait(lambda: len(alter_jobs()) == 3, 60, "the type change found at start", daemon)
    assert alter_jobs()[2]["rows_done"] == 302
    wait(lambda: churn_matches(pg.conn), 60, "predictions of the retyped values", daemon)

    pg.execute("ALTER TABLE churn DROP COLUMN eve_mins CASCADE")  # an input gone: churn stops
    pg.execute(
        "UPDATE churn SET day_calls = day_calls + 1 WHERE phone = (SELECT min(phone) FROM churn)"
    )
    pg.execute("INSERT INTO feedback (user_feedback) VALUES ('works well, thanks')")
    wait(lambda: status(config)["churn"]["stopped"] is not None, 60, "churn stopped", daemon)
    reason = status(config)["churn"]["stopped"]
    assert "column eve_mins of table churn is gone" in reason, reason
    wait(
        lambda: stored_feedback(pg.conn) == expected_feedback(pg.conn),
        60,
        "feedback goes on",
        daemon,
    )
    # An input renamed is gone under its name too: feedback stops, with its one line.
    pg.execute("DROP VIEW feedback_scored")
    pg.execute("ALTER TABLE feedback RENAME COLUMN user_feedback TO body")
    pg.execute("INSERT INTO feedback (body) VALUES ('still here')")
    wait(lambda: status(config)["feedback"]["stopped"] is not None, 60, "feedback stopped", daemon)
    reason = status(config)["feedback"]["stopped"]
    assert "column user_feedback of table feedback is gone" in reason, reason
    assert daemon.poll() is None  # the process stays up: its pipelines stopped, it did not
    assert kill(daemon, signal.SIGTERM) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_version_change_and_the_rescore_command_through_kill_9_on_postgresql(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    pg.insert_churn(list(ChurnRowGenerator(51).rows(3000)))
    config = tmp_path / "s.toml"
    paced = {"snapshot_chunk_rows": 200, "batching": {"max_rows": 50, "linger_ms": 50}}
    pg_config(config, pg, endpoints.url, churn=paced)
    assert run_cli("init", "--config", str(config)).returncode == 0
    daemon = start(config)
    wait(lambda: churn_matches(pg.conn), 90, "version 1 scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0
    assert versions(pg) == {"1": 3000}

    # Version 2, paced so that the re-score is surely killed half-way; writes go on.
    version_2 = {**paced, "model_version": "2", "rescore": {"max_rows_per_s": 400}}
    pg_config(config, pg, endpoints.url, churn=version_2)
    monitor = VersionMonitor(pg.server, pg.name)
    monitor.start()
    daemon = start(config)
    wait(lambda: job_progress(config, "model version 2") >= 600, 90, "re-score under way", daemon)
    generator = ChurnRowGenerator(52)
    for _ in range(20):
        pg.insert_churn([generator.row()])
    kill(daemon)
    at_kill = job_progress(config, "model version 2")
    assert 0 < at_kill < 3000, at_kill
    daemon = start(config, "after-kill")
    wait(lambda: "re-score resuming" in daemon.log(), 30, "resumed at its cursor", daemon)
    wait(lambda: status(config)["churn"]["rescore"] is None, 120, "re-score done", daemon)
    wait(lambda: churn_matches(pg.conn), 60, "convergence", daemon)
    assert versions(pg) == {"2": 3020}
    job = status(config)["churn"]["rescores_finished"][-1]
    assert job["reason"] == "model version 2" and job["error"] is None
    assert 3000 - 200 <= job["rows_done"] <= 3020, job  # resumed at the committed chunk

    # An operator's re-score of some rows, through the signal table and the slot.
    chosen = {str(p) for (p,) in pg.rows("SELECT phone FROM churn WHERE state IN ('KS', 'OH')")}
    before = scored_at(pg)
    result = run_cli(
        "rescore", "--config", str(config), "--pipeline", "churn",
        "--where", "state IN ('KS', 'OH')", "--timeout", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"done: {len(chosen)} rows re-scored" in result.stdout
    after = scored_at(pg)
    assert {p for p in after if after[p] > before[p]} == chosen
    bad = run_cli("rescore", "--config", str(config), "--pipeline", "churn", "--where", "nope=1")
    assert bad.returncode == 1 and "is refused by the server" in bad.stderr, bad.stderr
    assert kill(daemon, signal.SIGTERM) == 0
    monitor.stop()
    assert not monitor.regressions, monitor.regressions[:5]


def one_line_failure(config: Path) -> str:
    """``run`` that must refuse to start: its one line."""
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cdc-scorer:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _server_state(pg: PgDatabase) -> tuple[Any, ...]:
    """What the scorer could have changed on the server: publications, their tables, slots,
    the scorer's tables."""
    return (
        pg.rows("SELECT pubname, puballtables FROM pg_publication ORDER BY 1"),
        pg.rows("SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1, 2"),
        pg.rows("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (pg.slot,)),
        pg.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"),
    )


def _application_writes(pg: PgDatabase, table: str, key: str) -> None:
    """The application's own UPDATE and DELETE on ``table`` (they fail once a table without a
    usable replica identity is published)."""
    pg.execute(f"UPDATE {table} SET {key} = {key} WHERE {key} IS NOT NULL")
    pg.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} LIMIT 1)")


def test_a_table_that_cannot_be_published_safely_is_refused_before_anything_changes(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    """The blog's churn table has no primary key: with REPLICA IDENTITY DEFAULT, publishing it
    would make the application's UPDATEs and DELETEs fail. init, run and check refuse it with
    one line naming the table and the fix, and leave the server as it was."""
    pg.execute("ALTER TABLE churn REPLICA IDENTITY DEFAULT")
    pg.insert_churn(list(ChurnRowGenerator(81).rows(20)))
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url)
    before = _server_state(pg)
    fix = 'ALTER TABLE "public"."churn" REPLICA IDENTITY FULL'

    initialized = run_cli("init", "--config", str(config))
    assert initialized.returncode == 1, initialized.stdout + initialized.stderr
    (line,) = [x for x in initialized.stderr.splitlines() if x.startswith("cdc-scorer:")]
    assert "table churn: it has no primary key and REPLICA IDENTITY DEFAULT" in line, line
    assert "the application's own UPDATEs and DELETEs on it would fail" in line, line
    assert fix in line, line
    assert _server_state(pg) == before  # no publication, no slot, no table of the scorer's
    _application_writes(pg, "churn", "phone")

    line = one_line_failure(config)
    assert "table churn: it has no primary key" in line and fix in line, line
    assert _server_state(pg) == before
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 1
    assert "FAIL  replica identity: table churn: it has no primary key" in checked.stdout
    assert _server_state(pg) == before
    _application_writes(pg, "churn", "phone")

    # A deployment that runs, then a pipeline added on a table whose identity index is gone:
    # run refuses it before the publication is extended, and the deployment's publication
    # stays as it was.
    pg.execute("ALTER TABLE churn REPLICA IDENTITY FULL")
    assert run_cli("init", "--config", str(config)).returncode == 0
    pg.execute("CREATE TABLE notes (id integer NOT NULL, body text)")
    pg.execute("CREATE UNIQUE INDEX notes_id ON notes (id)")
    pg.execute("ALTER TABLE notes REPLICA IDENTITY USING INDEX notes_id")
    pg.execute("DROP INDEX notes_id")
    pg.execute("INSERT INTO notes VALUES (1, 'kind staff'), (2, 'slow')")
    notes = {
        "table": "notes",
        "key_columns": ["id"],
        "service": "comprehend",
        "comprehend": {"text_column": "body", "language": "en"},
    }
    pg_config(config, pg, endpoints.url, pipelines={"notes": notes})
    published = _server_state(pg)
    line = one_line_failure(config)
    assert "table notes: its REPLICA IDENTITY USING INDEX names an index that is gone" in line
    assert 'ALTER TABLE "public"."notes" REPLICA IDENTITY FULL' in line, line
    assert _server_state(pg) == published
    _application_writes(pg, "notes", "id")
    refused = run_cli("init", "--config", str(config))
    assert refused.returncode == 1 and "table notes:" in refused.stderr, refused.stderr
    assert _server_state(pg) == published


def test_logical_decoding_off_and_a_user_without_replication_are_refused_with_the_fix(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    # A user who may read and write but not stream.
    pg.execute("CREATE ROLE scorer_plain LOGIN")
    pg.execute(f"GRANT ALL ON DATABASE {pg.name} TO scorer_plain")
    pg.execute("GRANT ALL ON SCHEMA public TO scorer_plain")
    pg.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO scorer_plain")
    config = tmp_path / "plain.toml"
    pg_config(config, pg, endpoints.url, user="scorer_plain")
    line = one_line_failure(config)
    assert "user scorer_plain may not stream changes" in line, line
    assert "GRANT rds_replication TO scorer_plain" in line, line
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 1
    assert "FAIL  REPLICATION: user scorer_plain may not stream changes" in checked.stdout

    # A server that does not decode logically (Aurora: rds.logical_replication = 0).
    with PrivatePostgreSQL(settings={"wal_level": "replica"}) as replica_only:
        other = PgDatabase(replica_only)
        config = tmp_path / "replica.toml"
        pg_config(config, other, endpoints.url)
        line = one_line_failure(config)
        assert "wal_level is replica: set wal_level = logical" in line, line
        assert "rds.logical_replication = 1" in line, line
        checked = run_cli("check", "--config", str(config))
        assert "FAIL  wal_level: wal_level is replica" in checked.stdout, checked.stdout
        other.conn.close()
    pg.execute("DROP OWNED BY scorer_plain")
    pg.execute("DROP ROLE scorer_plain")


def test_a_slot_the_server_invalidated_is_one_line_or_a_rescore(
    tmp_path: Path, postgres: PostgresServer, endpoints: BackgroundModelServer
) -> None:
    with PrivatePostgreSQL(settings=SMALL_SLOT_SETTINGS) as server:
        db = PgDatabase(server)
        generator = ChurnRowGenerator(61)
        db.insert_churn(list(generator.rows(200)))
        config = tmp_path / "s.toml"
        pg_config(config, db, endpoints.url)
        assert run_cli("init", "--config", str(config)).returncode == 0
        daemon = start(config)
        wait(lambda: churn_matches(db.conn), 60, "snapshot scored", daemon)
        assert kill(daemon, signal.SIGTERM) == 0
        # Away for long: the server keeps no more than 1 MB of WAL for the slot.
        db.insert_churn(list(generator.rows(50)))  # changes the slot will have lost
        assert wal_fill_past_slot(db) == "lost"

        line = one_line_failure(config)
        assert f"replication slot {db.slot} was invalidated by the server" in line, line
        assert 'on_lost_position = "rescore"' in line, line
        checked = run_cli("check", "--config", str(config))
        assert f"FAIL  replication slot {db.slot}: replication slot" in checked.stdout

        # The fix the line names: the slot is made anew and every row re-scored beside the
        # stream; nothing is lost.
        pg_config(config, db, endpoints.url, on_lost_position="rescore")
        daemon = start(config)
        wait(lambda: churn_matches(db.conn), 60, "every row re-scored", daemon)
        assert len(stored_churn(db.conn)) == 250
        finished = status(config)["churn"]["rescores_finished"]
        assert any(j["reason"] == "position lost" for j in finished), finished
        assert kill(daemon, signal.SIGTERM) == 0
        db.conn.close()


GRANTS_SQL = Path(__file__).resolve().parents[2] / "deploy" / "grants-postgresql.sql"


def readme_grants(role: str, database: str) -> list[str]:
    """deploy/grants-postgresql.sql as the README gives it, for this role and database (the
    community PostgreSQL line instead of Aurora's rds_replication)."""
    text = GRANTS_SQL.read_text()
    community = next(line for line in text.splitlines() if "Community PostgreSQL" in line)
    text = text.replace("GRANT rds_replication TO cdc_scorer;", community.split("instead: ")[1])
    text = re.sub(r"\b(ROLE|TO) cdc_scorer\b", rf"\1 {role}", text).replace("mltest", database)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def test_the_readme_grants_are_enough_on_postgresql(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    role = f"scorer_{pg.name}"
    pg.insert_churn(list(ChurnRowGenerator(71).rows(100)))
    pg.execute("INSERT INTO feedback (user_feedback) VALUES ('so helpful'), ('awful wait')")
    for statement in readme_grants(role, pg.name):
        pg.execute(statement)
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url, user=role, password="from-secrets-manager")
    for _ in range(2):  # init, as that user, twice
        result = run_cli("init", "--config", str(config))
        assert result.returncode == 0, result.stderr
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = start(config)
    wait(lambda: churn_matches(pg.conn), 60, "churn scored as that user", daemon)
    pg.execute("ALTER TABLE churn ADD COLUMN note varchar(20)")  # as the tables' owner
    pg.insert_churn([ChurnRowGenerator(72).row()])
    wait(
        lambda: ("note",) in pg.rows(VIEW_COLUMNS, ("churn_scored",)),
        60,
        "the view made again by that user",
        daemon,
    )
    wait(lambda: churn_matches(pg.conn), 60, "the new row scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0
    pg.execute(f"DROP OWNED BY {role}")
    pg.execute(f"DROP ROLE {role}")


TLS_ONLY_HBA = """\
hostssl all all 127.0.0.1/32 trust
hostssl all all ::1/128 trust
local all all trust
"""


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, Path]]:
    """A private PostgreSQL that accepts TLS connections only (pg_hba.conf: hostssl), with a
    server certificate for "localhost" made by the test; and a CA that signed nothing."""
    directory = tmp_path_factory.mktemp("pg-tls")
    ca = CertificateAuthority(directory, "test-ca")
    other = CertificateAuthority(directory, "other-ca")
    issued = ca.issue("server", dns=("localhost",))
    launcher = PrivatePostgreSQL(
        settings={"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
        hba=TLS_ONLY_HBA,
        files={"server.crt": issued.cert, "server.key": issued.key},
    )
    try:  # (the test takes the postgres fixture first: no server, a skip with its banner)
        yield launcher.start(), ca.path, other.path
    finally:
        launcher.stop()  # also a server that started and failed its readiness wait


def _tls_config(
    tmp_path: Path, db: PgDatabase, endpoint_url: str, tls: dict[str, str], host: str
) -> Path:
    config = tmp_path / "tls.toml"
    pg_config(config, db, endpoint_url, host=host, tls=tls)
    return config


def test_tls_on_postgresql_every_session_the_stream_included(
    tmp_path: Path,
    postgres: PostgresServer,
    tls_postgres: tuple[Any, Path, Path],
    endpoints: BackgroundModelServer,
) -> None:
    server, ca, other_ca = tls_postgres
    db = PgDatabase(server)
    verified = {"mode": "verify-identity", "ca_file": str(ca)}
    config = _tls_config(tmp_path, db, endpoints.url, verified, "localhost")
    assert run_cli("init", "--config", str(config)).returncode == 0
    checked = run_cli("check", "--config", str(config))
    (tls_line,) = [line for line in checked.stdout.splitlines() if "database TLS" in line]
    assert tls_line.startswith("PASS  database TLS: TLSv1."), tls_line
    daemon = start(config)
    db.insert_churn(list(ChurnRowGenerator(81).rows(20)))
    wait(lambda: len(stored_churn(db.conn)) == 20, 60, "rows scored over TLS", daemon)
    # The server's own view of the scorer's sessions: the walsender's is TLS too.
    sessions = db.rows(
        "SELECT a.backend_type, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = 'cdc-scorer'"
    )
    assert ("walsender", True) in sessions and all(ssl for _, ssl in sessions), sessions
    assert kill(daemon, signal.SIGTERM) == 0

    # A certificate that does not verify, a host name it does not have, TLS turned off: each
    # one line naming the cause and the fix.
    config = _tls_config(
        tmp_path, db, endpoints.url, {**verified, "ca_file": str(other_ca)}, "localhost"
    )
    line = one_line_failure(config)
    assert "TLS:" in line and "certificate verify failed" in line, line
    config = _tls_config(tmp_path, db, endpoints.url, verified, "127.0.0.1")
    line = one_line_failure(config)
    assert "TLS:" in line and "127.0.0.1" in line, line
    config = _tls_config(tmp_path, db, endpoints.url, {"mode": "disabled"}, "localhost")
    line = one_line_failure(config)
    assert "no encryption" in line and "[source.tls] mode to required" in line, line
    db.conn.close()


def test_the_demo_on_postgresql(postgres: PostgresServer) -> None:
    result = run_cli("demo", "--server", "postgresql", "--seconds", "3", "--no-wait", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "starting a private PostgreSQL" in out
    assert "postgres> SELECT state, acc_length" in out and "will_churn" in out
    # The sentiment query's rows carry Comprehend's labels (which ones depends on the texts the
    # workload wrote last).
    sentiments = out.split("FROM feedback_scored ORDER BY id DESC LIMIT 5;", 1)[1].split("> ", 1)[0]
    assert any(label in sentiments for label in ("POSITIVE", "NEGATIVE", "NEUTRAL", "MIXED"))
    assert "unscored rows: churn 0/" in out  # caught up before the queries
    assert "FROM feedback_topic_scored" in out
    assert "jsonb_array_elements_text" in out  # the nearest feedback, on jsonb vectors
    assert "| the bill is wrong again and nobody helps | 0.9" in out


def _leader(port: int) -> float | None:
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    return metric(body, "cdc_scorer_leader") if status == 200 else None


@pytest.mark.timeout(240)
def test_two_daemons_one_leader_and_takeover_after_kill_9_on_postgresql(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    generator = ChurnRowGenerator(91)
    pg.insert_churn(list(generator.rows(300)))
    configs = []
    for name in ("a", "b"):
        port = free_port()
        path = tmp_path / f"{name}.toml"
        pg_config(path, pg, endpoints.url, http_port=port)
        configs.append((path, port))
    (config_a, port_a), (config_b, port_b) = configs
    assert run_cli("init", "--config", str(config_a)).returncode == 0
    first = start(config_a, "a")
    wait(lambda: _leader(port_a) == 1.0, 30, "first daemon leads", first)
    second = start(config_b, "b")
    wait(lambda: _leader(port_b) == 0.0, 30, "second daemon up as standby", second)
    pg.insert_churn(list(generator.rows(100)))
    wait(lambda: churn_matches(pg.conn), 60, "the leader scores", first)
    # The standby holds no lock and no slot: only the leader's walsender streams.
    ((active,),) = pg.rows(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (pg.slot,)
    )
    assert active is not None
    _, body = http_get(f"http://127.0.0.1:{port_b}/metrics")
    assert metric(body, "cdc_scorer_source_connected") == 0.0
    _, body = http_get(f"http://127.0.0.1:{port_a}/metrics")
    retained = metric(body, "cdc_scorer_source_retained_bytes")  # the slot's WAL, measured
    assert retained is not None and retained >= 0, retained
    for _ in range(50):  # the leader dies mid-stream
        pg.insert_churn([generator.row()])
        pg.execute(
            "UPDATE churn SET day_mins = day_mins + 1 WHERE phone = "
            "(SELECT phone FROM churn ORDER BY random() LIMIT 1)"
        )
    kill(first)
    killed_at = time.monotonic()
    wait(lambda: _leader(port_b) == 1.0, 30, "standby takes over", second)
    takeover_s = time.monotonic() - killed_at
    pg.execute("DELETE FROM churn WHERE phone IN (SELECT phone FROM churn LIMIT 20)")
    wait(lambda: churn_matches(pg.conn), 90, "differential check after takeover", second)
    print(f"takeover after kill -9 on PostgreSQL: {takeover_s:.2f}s")
    assert takeover_s < 10, takeover_s
    assert kill(second, signal.SIGTERM) == 0


PASSWORD_HBA = """\
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
local all all trust
"""


def test_the_password_is_nowhere_on_postgresql(
    tmp_path: Path, postgres: PostgresServer, endpoints: BackgroundModelServer
) -> None:
    from tests.e2e.test_secrets import SECRET, _assert_no_secret, _cli

    with PrivatePostgreSQL(hba=PASSWORD_HBA) as server:
        db = PgDatabase(server)
        role = "scorer_secret"
        for statement in readme_grants(role, db.name):
            db.execute(statement.replace("'from-secrets-manager'", f"'{SECRET}'"))
        config = tmp_path / "s.toml"
        http_port = free_port()
        pg_config(config, db, endpoints.url, http_port=http_port, user=role)
        written: list[tuple[str, str]] = []
        written.append(("init", _cli("init", "--config", str(config), password=SECRET)))
        wrong = SECRET[::-1]
        for command in ("run", "check", "status"):
            out = _cli(command, "--config", str(config), password=wrong)
            assert "password authentication failed" in out, out
            assert wrong not in out, f"the wrong password is in {command}'s output"
            _assert_no_secret(out, f"{command} with a wrong password")
        daemon = start(
            config, env={"CDC_SCORER_SOURCE__PASSWORD": SECRET}, args=("--log-level", "debug")
        )
        try:
            db.insert_churn(list(ChurnRowGenerator(95).rows(10)))
            wait(lambda: len(stored_churn(db.conn)) == 10, 60, "rows scored", daemon)
            # Every session of the scorer is cut; it signs in again (the walsender's too).
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            db.insert_churn(list(ChurnRowGenerator(96).rows(10)))
            wait(lambda: len(stored_churn(db.conn)) == 20, 60, "scored after reconnecting", daemon)
            status, metrics_text = http_get(f"http://127.0.0.1:{http_port}/metrics")
            assert status == 200
            written.append(("metrics", metrics_text))
            written.append(("status", _cli("status", "--config", str(config), password=SECRET)))
            written.append(("check", _cli("check", "--config", str(config), password=SECRET)))
        finally:
            assert kill(daemon, signal.SIGTERM) == 0
        log = daemon.log()
        assert '"level": "debug"' in log
        assert "replication stream disconnected" in log
        written.append(("the daemon's log", log))
        for where, text in written:
            _assert_no_secret(text, where)
        db.conn.close()


def test_check_and_status_on_postgresql_say_what_the_slot_keeps_and_what_is_missing(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    pg.insert_churn(list(ChurnRowGenerator(97).rows(20)))
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url)
    assert run_cli("init", "--config", str(config)).returncode == 0
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "PASS  slot retained WAL: " in checked.stdout and "kept (wal_status" in checked.stdout
    assert "PASS  publications cdc_scorer,cdc_scorer_own: ok" in checked.stdout
    assert "PASS  failover: positions are commit LSNs" in checked.stdout

    pg.execute("DROP PUBLICATION cdc_scorer")
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 1
    assert (
        "FAIL  publications cdc_scorer,cdc_scorer_own: publication cdc_scorer does not exist — "
        "run `cdc-scorer init --config FILE`" in checked.stdout
    ), checked.stdout
    assert run_cli("init", "--config", str(config)).returncode == 0  # made again

    daemon = start(config)
    wait(lambda: churn_matches(pg.conn), 60, "scored", daemon)
    text = run_cli("status", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert "churn: snapshot done; checkpoint lsn:" in text.stdout
    assert "slot retained WAL: " in text.stdout and "in use by pid" in text.stdout
    kept = status(config)["churn"]["change_log"]
    assert kept is not None and "slot retained WAL" in kept
    assert kill(daemon, signal.SIGTERM) == 0


def test_reposition_on_postgresql_by_lsn_and_now_checked_against_the_slot(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    generator = ChurnRowGenerator(99)
    pg.insert_churn(list(generator.rows(20)))
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url)
    assert run_cli("init", "--config", str(config)).returncode == 0
    daemon = start(config)
    wait(lambda: churn_matches(pg.conn), 60, "scored", daemon)
    assert kill(daemon, signal.SIGTERM) == 0

    def reposition(*args: str) -> Any:
        return run_cli("reposition", "--config", str(config), "--pipeline", "churn", *args)

    def phones(rows: list[dict[str, Any]]) -> set[str]:
        return {str(r["phone"]) for r in rows}

    # --now: what was written while no scorer ran is skipped.
    skipped = list(generator.rows(5))
    pg.insert_churn(skipped)
    now = reposition("--now")
    assert now.returncode == 0, now.stderr
    daemon = start(config)
    later = list(generator.rows(3))
    pg.insert_churn(later)
    wait(lambda: phones(later) <= set(stored_churn(pg.conn)), 60, "later rows scored", daemon)
    assert not phones(skipped) & set(stored_churn(pg.conn))
    assert kill(daemon, signal.SIGTERM) == 0

    # --lsn: a position the slot still has is taken and replayed from; what it let go of, what
    # the server has not written and another kind of position are refused.
    confirmed, _ = slot_lag(pg)
    replayed = list(generator.rows(4))
    pg.insert_churn(replayed)
    assert reposition("--now").returncode == 0  # as if skipped too…
    gone = reposition("--lsn", "0/1")
    assert gone.returncode != 0 and "confirmed" in gone.stderr, gone.stderr
    past = reposition("--lsn", "FF/0")
    assert past.returncode != 0 and "past the server's WAL" in past.stderr, past.stderr
    kind = reposition("--gtid", "0-1-5")
    assert kind.returncode != 0 and "use --lsn" in kind.stderr, kind.stderr
    back = reposition("--lsn", lsn_text(confirmed))  # …then moved back by hand
    assert back.returncode == 0, back.stderr
    daemon = start(config)
    wait(lambda: phones(replayed) <= set(stored_churn(pg.conn)), 60, "replayed rows", daemon)
    assert kill(daemon, signal.SIGTERM) == 0

    # --now --rescore: every row scored after all, the skipped ones too; the rows deleted
    # while no scorer ran (skipped deletes) lose their predictions.
    deleted = sorted(phones(later))[:2]
    pg.execute("DELETE FROM churn WHERE phone = ANY(%s)", (deleted,))
    rescored = reposition("--now", "--rescore")
    assert rescored.returncode == 0, rescored.stderr
    daemon = start(config)
    streaming(daemon)
    wait(lambda: status(config)["churn"]["rescore"] is None, 60, "the re-score done", daemon)
    wait(lambda: churn_matches(pg.conn), 60, "every row re-scored", daemon)
    assert phones(skipped) <= set(stored_churn(pg.conn))
    assert not set(deleted) & set(stored_churn(pg.conn))
    (job,) = [
        j for j in status(config)["churn"]["rescores_finished"] if j["reason"] == "reposition"
    ]
    assert job["orphans_removed"] == 2 and job["swept"], job
    assert kill(daemon, signal.SIGTERM) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pipeline_subsets_on_postgresql_need_a_slot_each(
    tmp_path: Path, pg: PgDatabase, endpoints: BackgroundModelServer
) -> None:
    pg.insert_churn(list(ChurnRowGenerator(98).rows(50)))
    pg.execute("INSERT INTO feedback (user_feedback) VALUES ('lovely'), ('dreadful')")
    config = tmp_path / "s.toml"
    pg_config(config, pg, endpoints.url)
    assert run_cli("init", "--config", str(config)).returncode == 0
    churn = start(config, "churn", args=("--pipelines", "churn"))
    wait(lambda: churn_matches(pg.conn), 60, "churn scored by its process", churn)
    # A second process on the same slot: refused with the fix once it is plainly not a
    # walsender that is letting go.
    same = start(config, "same-slot", args=("--pipelines", "feedback"))
    assert same.wait(timeout=90) == 1
    assert "needs a slot of its own (set CDC_SCORER_SOURCE__PGOUTPUT__SLOT_NAME" in same.log()
    # With a slot of its own (made by run), it scores its pipeline beside the first. The
    # refused attempt left feedback a checkpoint the new slot cannot serve: the fix its line
    # names (on_lost_position = "rescore") re-scores feedback's rows instead.
    own = start(
        config,
        "own-slot",
        env={
            "CDC_SCORER_SOURCE__PGOUTPUT__SLOT_NAME": f"{pg.slot}_feedback",
            "CDC_SCORER_SOURCE__PGOUTPUT__ON_LOST_POSITION": "rescore",
        },
        args=("--pipelines", "feedback"),
    )
    wait(
        lambda: stored_feedback(pg.conn) == expected_feedback(pg.conn),
        60,
        "feedback scored by its own process",
        own,
    )
    pg.insert_churn(list(ChurnRowGenerator(99).rows(5)))
    pg.execute("INSERT INTO feedback (user_feedback) VALUES ('so good')")
    wait(lambda: churn_matches(pg.conn), 60, "churn goes on", churn)
    wait(lambda: stored_feedback(pg.conn) == expected_feedback(pg.conn), 60, "feedback", own)
    assert kill(own, signal.SIGTERM) == 0 and kill(churn, signal.SIGTERM) == 0
    pg.execute(f"SELECT pg_drop_replication_slot('{pg.slot}_feedback')")
