"""The Kafka source's offsets in the database, on real MariaDB, MySQL and PostgreSQL: loaded
once per assignment, moved only by compare-and-set inside the batch's transaction, so that a
consumer that lost its partition — even one whose transaction races the new owner's — commits
nothing, and no offset ever moves back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.stores.mysql.offsets import OFFSETS
from cdc_scorer.stores.offsets import (
    OffsetsSql,
    PartitionLost,
    advance_offsets,
    load_offsets,
    stored_offsets,
)
from cdc_scorer.stores.postgresql.offsets import offsets_sql
from tests.integration.scenario import create_database
from tests.pg import PgDatabase

TOPIC = "dbz.mltest.churn"
P0, P1 = (TOPIC, 0), (TOPIC, 1)

Connect = Callable[[], Any]


@pytest.fixture(params=["mariadb", "mysql-gtid", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[Connect, OffsetsSql]]:
    """New connections (autocommit off) to a database of the test's own, and its dialect."""
    if request.param == "postgresql":
        pg = PgDatabase(request.getfixturevalue("postgres"))

        def connect_pg() -> Any:
            conn = pg.server.connect(pg.name)
            conn.autocommit = False
            return conn

        yield connect_pg, offsets_sql("public")
        pg.drop()
        return
    from tests.conftest import source_of

    name = "mariadb-gtid" if request.param == "mariadb" else request.param
    server: DatabaseServer = source_of(request, name).server
    schema = f"offsets_{uuid.uuid4().hex[:8]}"
    create_database(server, schema)

    def connect_mysql() -> Any:
        conn = server.connect(schema)
        conn.autocommit(False)
        return conn

    yield connect_mysql, OFFSETS


def _prepare(connect: Connect, sql: OffsetsSql) -> None:
    conn = connect()
    with conn.cursor() as cursor:
        cursor.execute(sql.ddl)
        cursor.execute("CREATE TABLE scored (id INT PRIMARY KEY, owner VARCHAR(16))")
    conn.commit()
    conn.close()


def _commit_batch(
    conn: Any, sql: OffsetsSql, owner: str, row: int, moves: dict[Any, tuple[int, int]]
) -> None:
    """A batch: one prediction and its partitions' offsets, in one transaction."""
    try:
        with conn.cursor() as cursor:
            cursor.execute("INSERT INTO scored VALUES (%s, %s)", (row, owner))
            advance_offsets(cursor, sql, "churn", moves, owner)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _scored(connect: Connect) -> dict[int, str]:
    conn = connect()
    with conn.cursor() as cursor:
        cursor.execute("SELECT id, owner FROM scored")
        rows = {int(i): str(o) for i, o in cursor.fetchall()}
    conn.close()
    return rows


def test_a_consumer_that_lost_its_partition_commits_nothing(
    database: tuple[Connect, OffsetsSql],
) -> None:
    connect, sql = database
    _prepare(connect, sql)
    a, b = connect(), connect()
    with a.cursor() as cursor:  # A is assigned both partitions first: rows made at offset 0
        assert load_offsets(cursor, sql, "churn", [P0, P1], {P0: 0, P1: 0}, "a") == {P0: 0, P1: 0}
    a.commit()
    _commit_batch(a, sql, "a", 1, {P0: (0, 40), P1: (0, 7)})
    # A rebalance gives P0 to B, which loads what A committed (the start offset is not used).
    with b.cursor() as cursor:
        assert load_offsets(cursor, sql, "churn", [P0], {P0: 0}, "b") == {P0: 40}
    b.commit()
    _commit_batch(b, sql, "b", 2, {P0: (40, 55)})
    # A, not yet told (a zombie), finishes a batch of P0 from where it was: nothing lands.
    with pytest.raises(
        PartitionLost, match=r"partition dbz.mltest.churn\[0\] moved past offset 40"
    ):
        _commit_batch(a, sql, "a", 3, {P0: (40, 60), P1: (7, 9)})
    assert _scored(connect) == {1: "a", 2: "b"}  # A's prediction rolled back with its offsets
    _commit_batch(a, sql, "a", 4, {P1: (7, 9)})  # its own partition goes on
    with a.cursor() as cursor:
        assert stored_offsets(cursor, sql) == [
            ("churn", TOPIC, 0, 55, "b"),
            ("churn", TOPIC, 1, 9, "a"),
        ]
        with pytest.raises(ValueError, match="would move back"):
            advance_offsets(cursor, sql, "churn", {P1: (9, 8)}, "a")
    a.rollback()
    a.close()
    b.close()


def test_racing_transactions_on_one_partition_commit_one(
    database: tuple[Connect, OffsetsSql],
) -> None:
    """The zombie's transaction is open when the new owner commits: the row lock makes the
    second writer re-read the row, and its compare fails."""
    connect, sql = database
    _prepare(connect, sql)
    a, b = connect(), connect()
    with a.cursor() as cursor:
        load_offsets(cursor, sql, "churn", [P0], {P0: 100}, "a")
    a.commit()
    with a.cursor() as cursor:  # A's batch is under way: its UPDATE holds the row
        cursor.execute("INSERT INTO scored VALUES (1, 'a')")
        advance_offsets(cursor, sql, "churn", {P0: (100, 120)}, "a")
    outcome: list[BaseException | None] = []

    def new_owner() -> None:
        try:
            _commit_batch(b, sql, "b", 2, {P0: (100, 130)})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    racer = threading.Thread(target=new_owner)
    racer.start()
    time.sleep(0.5)  # B's UPDATE waits for A's row lock
    assert not outcome
    a.commit()
    racer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], PartitionLost)
    assert _scored(connect) == {1: "a"}
    with a.cursor() as cursor:
        assert stored_offsets(cursor, sql) == [("churn", TOPIC, 0, 120, "a")]
    a.close()
    b.close()
