"""The daemon on PostgreSQL as an operator runs it: the blog scenario (churn without a primary
key, REPLICA IDENTITY FULL, the public sample) through kill -9 of the scorer and a restart of
the database; start-up refusals with their fixes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from tests.e2e.daemon import Daemon, VersionMonitor, kill, run_cli, start, wait
from tests.integration.scenario import (
    churn_matches,
    expected_feedback,
    stored_churn,
    stored_feedback,
)
from tests.pg import PgDatabase, pg_config, public_sample, slot_lag


@pytest.fixture
def own_postgres(postgres: PostgresServer) -> Iterator[PrivatePostgreSQL]:
    """A private PostgreSQL of the test's own (it restarts it); ``postgres`` first, so a
    machine without the server skips with the banner."""
    launcher = PrivatePostgreSQL()
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()


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
