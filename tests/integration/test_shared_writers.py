"""The sinks of a process share a few writer connections (stores/fenced.py), and fencing holds
per pipeline: two "processes" (two stores) racing for a pipeline never both commit, on MariaDB
and on PostgreSQL, through a connection killed by the server under the first one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.records import Checkpoint, Prediction, ScoredBatch
from cdc_scorer.core.spec import FeedSpec, PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.services.comprehend import ComprehendSpec
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition, decode_binlog_position
from cdc_scorer.stores import Store
from cdc_scorer.stores.registry import build_store

TABLES = ("fb1", "fb2", "fb3", "fb4", "fb5")
PIPELINES = [PipelineSpec(t, t, ComprehendSpec("user_feedback")) for t in TABLES]
AT = datetime(2026, 12, 7, 6, 0, 0)
IDENTITY = "test:shared"


class Database:
    """One engine's database for the test: its store's source, SQL to run, a connection killed."""

    def __init__(self, source: SourceSpec, sql: Callable[[str], list[tuple[Any, ...]]]) -> None:
        self.source = source
        self.sql = sql

    def store(self, retry: RetrySpec | None = None) -> Store:
        return build_store(self.source, retry or RetrySpec(base_ms=10, cap_ms=50))


def _mariadb(server: DatabaseServer) -> Database:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS shared_writers")
        cursor.execute("CREATE DATABASE shared_writers")
        for table in TABLES:
            cursor.execute(
                f"CREATE TABLE shared_writers.{table} (id BIGINT PRIMARY KEY, user_feedback TEXT)"
            )
    conn.close()

    def sql(statement: str) -> list[tuple[Any, ...]]:
        conn = server.connect("shared_writers")
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return list(cursor.fetchall())
        finally:
            conn.close()

    source = SourceSpec(
        database="shared_writers", host="127.0.0.1", port=server.port, user=server.user,
        feed=FeedSpec(),
    )  # fmt: skip
    return Database(source, sql)


def _postgresql(postgres: PostgresServer) -> Database:
    conn = postgres.connect()
    with conn.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS shared_writers")
        cursor.execute("CREATE DATABASE shared_writers")
    conn.close()
    conn = postgres.connect("shared_writers")
    with conn.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, user_feedback text)")
    conn.close()

    def sql(statement: str) -> list[tuple[Any, ...]]:
        conn = postgres.connect("shared_writers")
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            conn.close()

    source = SourceSpec(
        database="shared_writers", engine="postgresql", host=postgres.host, port=postgres.port,
        user=postgres.user, feed=FeedSpec(),
    )  # fmt: skip
    return Database(source, sql)


@pytest.fixture(params=["mariadb", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    if request.param == "mariadb":
        yield _mariadb(request.getfixturevalue("mariadb"))
    else:
        yield _postgresql(request.getfixturevalue("postgres"))


def _batch(seq: int, key: int, sentiment: str = "POSITIVE") -> ScoredBatch:
    position = MariadbGtidPosition("test:shared", (Gtid(0, 1, seq),))
    prediction = Prediction(
        (key,),
        {"sentiment": sentiment, "sentiment_positive": 0.9, "sentiment_negative": 0.1},
        None,
        f"0-1-{seq}",
        AT,
    )
    return ScoredBatch(seq, (prediction,), (), (), Checkpoint(position, "done"))


def _kill(database: Database, holder: int) -> None:
    if database.source.engine == "postgresql":
        database.sql(f"SELECT pg_terminate_backend({holder})")
    else:
        database.sql(f"KILL CONNECTION {holder}")


async def test_pipelines_share_writer_connections_and_never_both_commit(
    database: Database,
) -> None:
    first, second = database.store(), database.store()  # two processes
    first.init(PIPELINES)
    a1, a2, a3 = (first.sink(p, ("id",), IDENTITY, decode_binlog_position) for p in PIPELINES[:3])
    for sink in (a1, a2, a3):
        assert await asyncio.to_thread(sink.try_lead, 0)
    # Three pipelines, two connections: fb1 and fb3 hold their locks on the same one.
    holders = [first.leader(p) for p in PIPELINES[:3]]
    assert holders[0] == holders[2] != holders[1]
    for seq, sink in enumerate((a1, a2, a3), start=1):
        await sink.write([_batch(seq, seq)])

    # A pipeline's sink closed alone lets its lock go; the connection stays for the other.
    a3.close()
    assert first.leader(PIPELINES[2]) is None
    assert first.leader(PIPELINES[0]) == holders[0]
    b3 = second.sink(PIPELINES[2], ("id",), IDENTITY, decode_binlog_position)
    assert await asyncio.to_thread(b3.try_lead, 0)
    b3.close()

    # The second process waits while the first holds fb1's lock.
    b1 = second.sink(PIPELINES[0], ("id",), IDENTITY, decode_binlog_position)
    assert not await asyncio.to_thread(b1.try_lead, 0)
    # The server kills the first process's connection of fb1 (and of fb3): the lock goes
    # with it, the second process takes the pipeline and commits.
    assert holders[0] is not None
    _kill(database, holders[0])
    for _ in range(100):
        if await asyncio.to_thread(b1.try_lead, 0):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the second process never took fb1's lock")
    await b1.write([_batch(10, 10)])
    # The first process writes fb1 again: on a new connection its lock is someone else's,
    # and it stops without committing.
    with pytest.raises(FatalError, match="lost the leader lock"):
        await a1.write([_batch(11, 11)])
    keys = database.sql("SELECT id FROM fb1_predictions ORDER BY id")
    assert [int(k) for (k,) in keys] == [1, 10]  # the first's, then only the second's
    (position,) = database.sql("SELECT position FROM cdc_scorer_checkpoint WHERE pipeline='fb1'")
    assert "0-1-10" in str(position[0])
    # fb2, on the other connection, goes on; and writes again after a reconnect when its
    # connection is the one lost.
    await a2.write([_batch(12, 12)])
    holder2 = first.leader(PIPELINES[1])
    assert holder2 is not None
    _kill(database, holder2)
    await a2.write([_batch(13, 13)])
    assert [int(k) for (k,) in database.sql("SELECT id FROM fb2_predictions ORDER BY id")] == [
        2,
        12,
        13,
    ]
    for sink in (a1, a2, b1):
        sink.close()
    first.close()
    second.close()


def _transactions(database: Database, tables: tuple[str, ...], since: int = 0) -> int:
    """MariaDB: COMMITs the server ran since the count ``since`` (nothing else commits on it
    meanwhile). PostgreSQL: the transactions that wrote the predictions of ``tables`` (their
    rows' xmin)."""
    if database.source.engine == "postgresql":
        rows = " UNION ALL ".join(f"SELECT xmin::text AS x FROM {t}_predictions" for t in tables)
        ((count,),) = database.sql(f"SELECT count(DISTINCT x) FROM ({rows}) AS written")
        return int(count)
    ((_, value),) = database.sql("SHOW GLOBAL STATUS LIKE 'Com_commit'")
    return int(value) - since


async def test_batches_waiting_for_one_connection_commit_together_and_fail_alone(
    database: Database,
) -> None:
    store = database.store()
    store.init(PIPELINES)
    sinks = [store.sink(p, ("id",), IDENTITY, decode_binlog_position) for p in PIPELINES]
    for sink in sinks:
        assert await asyncio.to_thread(sink.try_lead, 0)
    holders = [store.leader(p) for p in PIPELINES]
    assert holders[0] == holders[2] == holders[4] != holders[1]  # two writer connections
    fb1, fb3, fb5 = sinks[0], sinks[2], sinks[4]

    # fb1's batch takes the connection; fb3's and fb5's wait for it, then commit together.
    shared = ("fb1", "fb3", "fb5")
    before = _transactions(database, shared)
    await asyncio.gather(
        fb1.write([_batch(1, 1)]), fb3.write([_batch(1, 1)]), fb5.write([_batch(1, 1)])
    )
    assert _transactions(database, shared, before) == 2

    # One pipeline's run of batches: one transaction, which carries the last one's checkpoint.
    before = _transactions(database, ("fb2",))
    await sinks[1].write([_batch(seq, seq) for seq in (20, 21, 22)])
    assert _transactions(database, ("fb2",), before) == 1
    assert [int(k) for (k,) in database.sql("SELECT id FROM fb2_predictions ORDER BY id")] == [
        20,
        21,
        22,
    ]
    ((position,),) = database.sql("SELECT position FROM cdc_scorer_checkpoint WHERE pipeline='fb2'")
    assert "0-1-22" in str(position)
    for table in ("fb1", "fb3", "fb5"):
        assert database.sql(f"SELECT id FROM {table}_predictions") == [(1,)]

    # A batch the database refuses (a label too long for its column) fails its own sink only:
    # the group's transaction is written again one batch at a time.
    results = await asyncio.gather(
        fb1.write([_batch(2, 2)]),
        fb3.write([_batch(2, 2, sentiment="NOT A LABEL " * 4)]),
        fb5.write([_batch(2, 2)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None, results
    assert isinstance(results[1], FatalError) and "fb3" in str(results[1]), results
    assert [int(k) for (k,) in database.sql("SELECT id FROM fb5_predictions ORDER BY id")] == [1, 2]
    assert [int(k) for (k,) in database.sql("SELECT id FROM fb3_predictions")] == [1]
    positions = dict(database.sql("SELECT pipeline, position FROM cdc_scorer_checkpoint"))
    assert "0-1-1" in str(positions["fb3"]) and "0-1-2" in str(positions["fb5"])
    for sink in sinks:
        sink.close()
    store.close()


async def test_a_batch_its_sink_stopped_waiting_for_is_not_written_later(
    database: Database,
) -> None:
    """A pipeline cancelled while its batch's write is being retried (it stopped, or restarts
    from its checkpoint): the writer does not go on retrying that batch, which would land
    later, over what the restarted pipeline wrote."""
    store = database.store(RetrySpec(base_ms=200, cap_ms=200))
    store.init(PIPELINES)
    writing: list[asyncio.Task[None]] = []
    retried: list[str] = []

    def on_retry(stage: str, error: Exception) -> None:
        retried.append(stage)
        writing[0].cancel()  # the pipeline gives up at the first failure

    sink = store.sink(PIPELINES[0], ("id",), IDENTITY, decode_binlog_position, on_retry)
    assert await asyncio.to_thread(sink.try_lead, 0)
    await sink.write([_batch(1, 1)])
    holder = store.leader(PIPELINES[0])
    assert holder is not None
    _kill(database, holder)  # the next attempt fails, and would be retried
    writing.append(asyncio.create_task(sink.write([_batch(2, 2)])))
    with pytest.raises(asyncio.CancelledError):
        await writing[0]
    await asyncio.sleep(1.0)  # five retry intervals
    assert retried == ["sink"]
    assert [int(k) for (k,) in database.sql("SELECT id FROM fb1_predictions")] == [1]
    ((position,),) = database.sql("SELECT position FROM cdc_scorer_checkpoint WHERE pipeline='fb1'")
    assert "0-1-1" in str(position)
    sink.close()
    store.close()
