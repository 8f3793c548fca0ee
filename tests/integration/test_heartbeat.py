"""The heartbeat against a real server: it beats, it rides out a lost server, and it stops the
daemon on a fatal error instead of retrying it for ever."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import structlog.testing

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.own_tables import HEARTBEAT_TABLE
from cdc_scorer.core.spec import FeedSpec, SourceSpec
from cdc_scorer.local.servers import DatabaseServer, free_port
from cdc_scorer.stores.mysql.heartbeat import MysqlHeartbeat


def source_of(server: DatabaseServer, database: str, port: int | None = None) -> SourceSpec:
    return SourceSpec(
        database=database,
        port=port or server.port,
        user="root",
        feed=FeedSpec(),
        connect_timeout_s=1,
    )


def database_with_heartbeat_table(server: DatabaseServer) -> str:
    database = f"hb_{uuid.uuid4().hex[:6]}"
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        cursor.execute(
            f"CREATE TABLE {database}.{HEARTBEAT_TABLE} "
            "(instance VARCHAR(64) PRIMARY KEY, beat_at DATETIME(6) NOT NULL)"
        )
    conn.close()
    return database


def beats(server: DatabaseServer, database: str) -> list[tuple[str, object]]:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT instance, beat_at FROM {database}.{HEARTBEAT_TABLE}")
        rows = list(cursor.fetchall())
    conn.close()
    return rows


async def test_beats_and_moves(mariadb: DatabaseServer) -> None:
    database = database_with_heartbeat_table(mariadb)
    task = asyncio.create_task(
        MysqlHeartbeat(source_of(mariadb, database), HEARTBEAT_TABLE, "a,b", 0.05).run()
    )
    try:
        deadline = time.monotonic() + 10
        seen: set[object] = set()
        while len(seen) < 3 and time.monotonic() < deadline:
            seen.update(at for _, at in beats(mariadb, database))
            await asyncio.sleep(0.02)
        assert len(seen) >= 3  # beat_at moved at least twice
        assert [instance for instance, _ in beats(mariadb, database)] == ["a,b"]  # one row
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_server_that_is_not_there_is_retried(mariadb: DatabaseServer) -> None:
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(
            MysqlHeartbeat(
                source_of(mariadb, "x", port=free_port()), HEARTBEAT_TABLE, "a", 0.05
            ).run()
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not task.done():
            failures = [e for e in logs if e["event"] == "heartbeat failed"]
            if len(failures) >= 3:
                break
            await asyncio.sleep(0.02)
    assert not task.done()  # still trying, after three refused connections
    assert "MySQL error 2003" in failures[0]["error"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_missing_table_stops_it(mariadb: DatabaseServer) -> None:
    database = database_with_heartbeat_table(mariadb)
    conn = mariadb.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE {database}.{HEARTBEAT_TABLE}")
    conn.close()
    heartbeat = MysqlHeartbeat(source_of(mariadb, database), HEARTBEAT_TABLE, "a", 0.05)
    with pytest.raises(FatalError, match="writing the heartbeat: MySQL error 1146"):
        await asyncio.wait_for(heartbeat.run(), 10)
