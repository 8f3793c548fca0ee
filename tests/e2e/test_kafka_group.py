"""Scorers in one consumer group on Debezium's topics, as processes (``cdc-scorer run`` with
``[source.debezium]``): a real MySQL or PostgreSQL, Debezium's connector for it in a real Kafka
Connect worker, a KRaft broker, the local endpoints.

Three processes share the partitions while a writer inserts, updates and deletes (on MySQL and
on PostgreSQL); one is
killed with -9 mid-stream, another joins later (a rebalance), the Connect worker restarts —
and every table converges to a from-scratch scoring, no partition's stored offset ever moves
back, and no prediction regresses to an older row version. A zombie — a process stopped with
SIGSTOP past its session while its batches are in flight, then resumed — commits nothing.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.kafka import KafkaStack
from cdc_scorer.local.kafka.connectors import mysql_connector, postgres_connector
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.stores.offsets import OFFSETS_TABLE
from tests.e2e.daemon import VersionMonitor, kill, run_cli, start, wait
from tests.integration.scenario import (
    Writer,
    churn_matches,
    create_database,
    expected_feedback,
    insert_churn,
    stored_feedback,
    with_debezium,
    write_config,
)
from tests.integration.test_debezium_envelope import _drop_slot
from tests.pg import PgDatabase, pg_config

pytestmark = pytest.mark.slow
PARTITIONS = 6


class OffsetMonitor(threading.Thread):
    """Polls the offsets table: a partition's next offset must never go back."""

    def __init__(self, server: DatabaseServer | PostgresServer, database: str) -> None:
        super().__init__(daemon=True)
        self._conn = server.connect(database)
        self._halt = threading.Event()
        self.seen: dict[tuple[str, str, int], int] = {}
        self.backwards: list[Any] = []
        self.owners: set[str] = set()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            with contextlib.suppress(Exception), self._conn.cursor() as cursor:
                cursor.execute(
                    f"SELECT pipeline, topic, kafka_partition, next_offset, owner "
                    f"FROM {OFFSETS_TABLE}"
                )
                for pipeline, topic, partition, offset, owner in cursor.fetchall():
                    key = (str(pipeline), str(topic), int(partition))
                    if int(offset) < self.seen.get(key, -1):
                        self.backwards.append((key, self.seen[key], int(offset)))
                    self.seen[key] = max(self.seen.get(key, -1), int(offset))
                    self.owners.add(str(owner))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self._conn.close()


@dataclass(frozen=True)
class Captured:
    """The blog's tables with 400 churn rows on one engine, their Debezium connector, the
    scorers' config (init run)."""

    config: Path
    database: str
    phones: list[str]
    server: DatabaseServer | PostgresServer


@pytest.fixture(params=["mysql"])
def captured(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kafka: KafkaStack,
    endpoints: BackgroundModelServer,
) -> Iterator[Captured]:
    """On MySQL, or on PostgreSQL for a test parametrized indirectly with ``postgresql``."""
    existing = list(ChurnRowGenerator(41).rows(400))
    prefix = f"e{uuid.uuid4().hex[:6]}"
    base = tmp_path / "base.toml"
    tables, bootstrap = ["churn", "feedback"], kafka.bootstrap_servers
    slot = ""
    server: DatabaseServer | PostgresServer
    if request.param == "postgresql":
        pg: PgDatabase = request.getfixturevalue("pg")
        server, database, slot = pg.server, pg.name, f"dbz_{uuid.uuid4().hex[:8]}"
        pg.insert_churn(existing)
        connector = {
            **postgres_connector(
                pg.server,
                prefix=prefix,
                database=database,
                tables=tables,
                slot=slot,
                partitions=PARTITIONS,
                keys={"churn": "phone"},
            ),
        }
        pg_config(base, pg, endpoints.url)
    else:
        mysql: DatabaseServer = request.getfixturevalue("mysql_gtid")
        server, database = mysql, f"group_{uuid.uuid4().hex[:6]}"
        create_database(mysql, database)
        db = mysql.connect(database)
        insert_churn(db, existing)
        db.close()
        connector = {
            **mysql_connector(
                mysql,
                prefix=prefix,
                database=database,
                tables=tables,
                bootstrap=bootstrap,
                partitions=PARTITIONS,
                keys={"churn": "phone"},
                server_id=5800 + random.randint(0, 99),
            ),
        }
        write_config(base, mysql, database, endpoints.url)
    kafka.put_connector(prefix, connector)
    try:
        config = tomllib.loads(base.read_text())
        config = with_debezium(
            config,
            bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=prefix,
            group_id=f"scorers-{prefix}",
            session_timeout_ms=6000,
        )
        path = tmp_path / "scorer.toml"
        path.write_text(tomli_w.dumps(config))
        result = run_cli("init", "--config", str(path))
        assert result.returncode == 0, result.stderr
        yield Captured(path, database, [r["phone"] for r in existing], server)
    finally:
        kafka.delete_connector(prefix)
        if slot:
            _drop_slot(request.getfixturevalue("pg"), slot)


def _converged(server: DatabaseServer | PostgresServer, database: str) -> bool:
    conn = server.connect(database)
    try:
        return churn_matches(conn) and stored_feedback(conn) == expected_feedback(conn)
    finally:
        conn.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("captured", ["mysql", "postgresql"], indirect=True)
def test_three_scorers_a_kill_a_join_and_a_connect_restart_converge(
    captured: Captured, kafka: KafkaStack
) -> None:
    config, database, phones, server = (
        captured.config,
        captured.database,
        captured.phones,
        captured.server,
    )
    versions = VersionMonitor(server, database)
    offsets = OffsetMonitor(server, database)
    versions.start()
    offsets.start()
    scorers = [start(config, name=f"scorer-{i}") for i in range(3)]
    wait(lambda: _converged(server, database), 180, "the snapshot through Debezium", scorers[0])
    writer = Writer(server, database, phones)
    writer.start()
    time.sleep(3)
    kill(scorers[1])  # -9 mid-stream: its partitions go to the others after its session
    time.sleep(8)
    scorers.append(start(config, name="scorer-3"))  # joins: a rebalance
    time.sleep(5)
    kafka.stop_connect()  # the Connect worker restarts; Debezium resumes from its offsets
    kafka.start_connect()
    time.sleep(5)
    writer.stop()
    assert writer.writes > 100
    wait(lambda: _converged(server, database), 180, "every table to converge", scorers[0])
    versions.stop()
    offsets.stop()
    assert not offsets.backwards, offsets.backwards[:5]
    assert not versions.regressions, versions.regressions[:5]
    assert versions.polls > 50
    assert len(offsets.owners) >= 3  # the partitions were spread, then moved
    for scorer in (scorers[0], scorers[2], scorers[3]):
        assert scorer.poll() is None, scorer.log()[-2000:]
        assert kill(scorer, signal.SIGTERM) == 0


@pytest.mark.timeout(600)
def test_a_zombie_paused_past_its_session_commits_nothing(
    captured: Captured,
    mysql_gtid: DatabaseServer,
    endpoints: BackgroundModelServer,
) -> None:
    config, database, phones = captured.config, captured.database, captured.phones
    zombie = start(config, name="zombie")
    wait(lambda: _converged(mysql_gtid, database), 180, "the snapshot", zombie)
    other = start(config, name="other")
    time.sleep(8)  # the group settles: each owns some partitions
    offsets = OffsetMonitor(mysql_gtid, database)
    versions = VersionMonitor(mysql_gtid, database)
    offsets.start()
    versions.start()
    endpoints.set_faults({"all": {"latency_ms": 1500}})  # batches stay in flight
    writer = Writer(mysql_gtid, database, phones)
    writer.start()
    time.sleep(2)
    zombie.send_signal(signal.SIGSTOP)  # with model calls in flight
    time.sleep(15)  # past its 6 s session: its partitions move to the other
    zombie.send_signal(signal.SIGCONT)
    time.sleep(3)
    endpoints.set_faults({"all": {"latency_ms": 0}})
    writer.stop()
    wait(lambda: _converged(mysql_gtid, database), 180, "convergence", other)
    offsets.stop()
    versions.stop()
    assert not offsets.backwards, offsets.backwards[:5]
    assert not versions.regressions, versions.regressions[:5]
    # The zombie was told its partitions were lost (librdkafka, on resuming): its batches in
    # flight and any later one commit nothing, and it exits with one line.
    assert zombie.wait(timeout=60) != 0
    log = zombie.log()
    assert '"lost": true' in log, log[-3000:]
    assert "moved past offset" in log.splitlines()[-1], log[-3000:]
    assert other.poll() is None
    assert kill(other, signal.SIGTERM) == 0
