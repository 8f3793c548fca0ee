"""Groundwork of the PostgreSQL source: the project's private PostgreSQL decodes
logically, and psycopg2's LogicalReplicationConnection streams pgoutput from it."""

from __future__ import annotations

import time

import psycopg2.extras

from cdc_scorer.local.postgres import PostgresServer


def test_pgoutput_streams_a_transaction_through_psycopg2(postgres: PostgresServer) -> None:
    conn = postgres.connect()
    with conn.cursor() as cursor:
        cursor.execute("SHOW wal_level")
        assert cursor.fetchone() == ("logical",)
        cursor.execute("CREATE TABLE churn (phone text PRIMARY KEY, day_mins double precision)")
        cursor.execute("CREATE PUBLICATION scorer FOR TABLE churn")
    replication = psycopg2.connect(
        postgres.dsn(), connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    stream = replication.cursor()
    stream.create_replication_slot("scorer", output_plugin="pgoutput")
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO churn VALUES ('415-382-4657', 265.1)")
    stream.start_replication(
        slot_name="scorer",
        decode=False,
        options={"proto_version": "1", "publication_names": "scorer"},
    )
    kinds: list[str] = []
    deadline = time.monotonic() + 30
    while "C" not in kinds and time.monotonic() < deadline:
        message = stream.read_message()
        if message is None:
            time.sleep(0.05)
            continue
        kinds.append(chr(message.payload[0]))
        if kinds[-1] == "C":  # confirm what is durably handled: the slot may let go of it
            stream.send_feedback(flush_lsn=message.data_start)  # type: ignore[no-untyped-call]
    # BEGIN, the table's RELATION, the INSERT, COMMIT — in that order.
    assert kinds == ["B", "R", "I", "C"], kinds
    replication.close()
    conn.close()
