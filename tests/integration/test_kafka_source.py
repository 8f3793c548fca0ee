"""The blog scenario through Debezium: a real MySQL, Debezium's MySQL connector in a real
Kafka Connect worker, a KRaft broker, the scorer in Kafka mode (``[source.debezium]``) in process
with the local endpoints. Snapshot (``op: r``), inserts, updates, deletes and a key change converge
to a from-scratch scoring; the offsets table holds every partition's next offset, and no
binlog reader ran (the path is Kafka's: counted)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from cdc_scorer.app import ScorerApp
from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.churn_data import ChurnRowGenerator, FeedbackGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.kafka import KafkaStack
from cdc_scorer.local.kafka.connectors import mysql_connector, postgres_connector
from cdc_scorer.local.kafka.tools import GroupPartition, describe_group
from cdc_scorer.local.servers import DatabaseServer, free_port
from cdc_scorer.stores.offsets import OFFSETS_TABLE
from tests.integration.scenario import (
    Running,
    Writer,
    churn_matches,
    create_database,
    expected_feedback,
    insert_churn,
    stored_churn,
    stored_feedback,
    wait_for,
    with_debezium,
    write_config,
)
from tests.integration.test_debezium_envelope import _drop_slot
from tests.integration.test_kafka_group import _messages
from tests.pg import PgDatabase, pg_config

pytestmark = pytest.mark.slow
PARTITIONS = 3


def feedback_matches(db: Any) -> bool:
    """The feedback predictions equal a from-scratch scoring (a MySQL or psycopg2 conn)."""
    return stored_feedback(db) == expected_feedback(db)


def put_churn_connector(
    kafka: KafkaStack,
    server: DatabaseServer,
    database: str,
    *,
    letter: str,
    server_id: int,
    tables: tuple[str, ...] = ("churn", "feedback"),
    partitions: int = PARTITIONS,
    extra: dict[str, str] | None = None,
) -> str:
    """Debezium's MySQL connector on the blog's tables of ``database`` (the churn table has no
    primary key: its messages are keyed by the phone); its topic prefix."""
    prefix = f"{letter}{uuid.uuid4().hex[:6]}"
    kafka.put_connector(
        prefix,
        {
            **mysql_connector(
                server,
                prefix=prefix,
                database=database,
                tables=list(tables),
                bootstrap=kafka.bootstrap_servers,
                partitions=partitions,
                keys={"churn": "phone"},
                server_id=server_id,
            ),
            **(extra or {}),
        },
    )
    return prefix


async def test_the_blog_scenario_through_debezium_on_mysql(
    tmp_path: Path,
    mysql_gtid: DatabaseServer,
    kafka: KafkaStack,
    models: ModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, database = mysql_gtid, f"kafka_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    generator = ChurnRowGenerator(31)
    existing = list(generator.rows(300))
    insert_churn(db, existing)
    texts = FeedbackGenerator(3)
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO feedback (user_feedback) VALUES (%s)", [(texts.text(),) for _ in range(40)]
        )
    prefix = put_churn_connector(kafka, server, database, letter="k", server_id=5701)
    try:
        base = write_config(tmp_path / "base.toml", server, database, models.url)
        del base  # the log mode's config, with [source.debezium] instead of [source.binlog]
        config = load_config_text(tmp_path, kafka, prefix)
        assert cli(["init", "--config", str(config)]) == 0
        spec = load_config(config)
        async with Running(spec) as app:
            await wait_for(lambda: churn_matches(db), timeout_s=120, what="Debezium's snapshot")
            await wait_for(lambda: feedback_matches(db), what="feedback from the snapshot")
            new = list(generator.rows(40))
            insert_churn(db, new)
            with db.cursor() as cursor:
                for row in existing[:25]:
                    changed = generator.changed(row)
                    cursor.execute(
                        "UPDATE churn SET day_mins=%s, night_calls=%s WHERE phone=%s",
                        (changed["day_mins"], changed["night_calls"], row["phone"]),
                    )
                cursor.execute(
                    "DELETE FROM churn WHERE phone IN (%s, %s)",
                    (existing[30]["phone"], new[0]["phone"]),
                )
                # A key change: Debezium sends a delete of the old key and a create.
                cursor.execute(
                    "UPDATE churn SET phone='999-0000' WHERE phone=%s", (existing[40]["phone"],)
                )
                cursor.execute("UPDATE feedback SET user_feedback='awful, just awful' WHERE id=3")
                cursor.execute("DELETE FROM feedback WHERE id=4")
            await wait_for(lambda: churn_matches(db), timeout_s=90, what="streamed changes")
            await wait_for(lambda: feedback_matches(db), what="streamed feedback")
            assert existing[30]["phone"] not in stored_churn(db)
            assert "999-0000" in stored_churn(db) and existing[40]["phone"] not in stored_churn(db)
            assert _read_through_kafka(app) >= 340 + 40  # the snapshot's reads and the changes

            def offsets_caught_up() -> bool:
                with db.cursor() as cursor:
                    cursor.execute(
                        f"SELECT pipeline, SUM(next_offset) FROM {OFFSETS_TABLE} GROUP BY 1"
                    )
                    stored = dict(cursor.fetchall())
                return {k: int(v) for k, v in stored.items()} == {
                    "churn": _messages(kafka, f"{prefix}.{database}.churn", PARTITIONS),
                    "feedback": _messages(kafka, f"{prefix}.{database}.feedback", PARTITIONS),
                }

            await wait_for(offsets_caught_up, what="every message's offset committed")

            def kafka_tooling_caught_up() -> bool:
                lines = _group_lines(kafka, f"scorers-{prefix}", database)
                return len(lines) == 2 * PARTITIONS and all(x.lag == 0 for x in lines)

            # The broker's own tool sees each pipeline's group, every partition at lag 0.
            await wait_for(kafka_tooling_caught_up, what="kafka-consumer-groups.sh at lag 0")
            capsys.readouterr()
            assert await asyncio.to_thread(cli, ["check", "--config", str(config)]) == 0
            _checked_as_kafka(capsys.readouterr().out, prefix, f"{database}.churn")
            # Brokers that do not answer: the line says so, naming the keys to check.
            closed = tmp_path / "closed.toml"
            closed.write_text(
                config.read_text().replace(kafka.bootstrap_servers, f"127.0.0.1:{free_port()}")
            )
            assert await asyncio.to_thread(cli, ["check", "--config", str(closed)]) == 1
            out = capsys.readouterr().out
            assert "FAIL  brokers 127.0.0.1:" in out, out
            assert "source.debezium.bootstrap_servers" in out, out
            registry = app.telemetry.registry
            await wait_for(
                lambda: (
                    registry.get_sample_value(
                        "cdc_scorer_source_partition_lag_messages", {"pipeline": "churn"}
                    )
                    == 0
                ),
                what="the lag gauge at 0",
            )
            assert (
                registry.get_sample_value("cdc_scorer_source_partitions", {"pipeline": "churn"})
                == PARTITIONS
            )
            # Freshness: the source's commit (Debezium's source.ts_ms) → prediction committed.
            fresh = registry.get_sample_value(
                "cdc_scorer_freshness_seconds_count", {"pipeline": "churn"}
            )
            assert fresh is not None and fresh >= 40
            await wait_for(lambda: app.not_ready() == [], what="/readyz ready in Kafka mode")
            capsys.readouterr()
            assert cli(["status", "--config", str(config)]) == 0
            shown = capsys.readouterr().out
            assert f"churn: {PARTITIONS} partitions (group scorers-{prefix}.churn)" in shown
            assert f"{prefix}.{database}.churn[0] next offset " in shown
            assert cli(["status", "--config", str(config), "--json"]) == 0
            churn = _pipeline_json(capsys.readouterr().out, "churn")
            assert churn["group"] == f"scorers-{prefix}.churn"
            assert len(churn["partitions"]) == PARTITIONS
            # reposition while a member of the group is active: refused, nothing stored.
            before = _stored(db, "churn")
            refused = await asyncio.to_thread(
                cli, ["reposition", "--config", str(config), "--pipeline", "churn", "--to-earliest"]
            )
            assert refused == 1
            err = capsys.readouterr().err
            assert f"consumer group scorers-{prefix}.churn has 1 active member" in err, err
            assert "nothing was changed" in err and _stored(db, "churn") == before
        topic = f"{prefix}.{database}.churn"
        await _repositions_move_the_database_and_the_group(
            capsys, config, db, kafka, prefix, database
        )
        # No member runs: a backlog written now is lag the tool shows (Burrow and MSK's
        # consumer-lag metrics read the same committed offsets), on top of what the
        # reposition to the earliest offsets gave back to read.
        everything = _messages(kafka, topic, PARTITIONS) + 30
        insert_churn(db, list(generator.rows(30)))

        def backlog() -> int:
            lines = _group_lines(kafka, f"scorers-{prefix}", database)
            return sum(x.lag or 0 for x in lines if x.topic == topic)

        await wait_for(lambda: backlog() == everything, what="the backlog as lag")
        async with Running(spec):
            await wait_for(lambda: churn_matches(db), what="the backlog read")
            await wait_for(lambda: backlog() == 0, what="the lag back at 0")
    finally:
        kafka.delete_connector(prefix)
        db.close()


async def _repositions_move_the_database_and_the_group(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    db: Any,
    kafka: KafkaStack,
    prefix: str,
    database: str,
) -> None:
    """With no member running, ``reposition`` moves a pipeline's offsets the way
    ``kafka-consumer-groups.sh --reset-offsets`` does: in the database (what a member starts
    from) and in the group (what Kafka's tools show); what it refuses stores nothing."""

    def reposition(pipeline: str, *flags: str) -> int:
        command = ["reposition", "--config", str(config), "--pipeline", pipeline, *flags]
        return cli(command)

    def in_group(pipeline: str) -> dict[int, int]:
        group = f"scorers-{prefix}.{pipeline}"
        lines = describe_group(kafka.bootstrap_servers, group)
        return {x.partition: x.current_offset for x in lines if x.current_offset is not None}

    ends = _ends(kafka, f"{prefix}.{database}.feedback")
    capsys.readouterr()
    # Positions of a database's own log mean nothing here: refused, nothing stored.
    assert reposition("churn", "--now") == 1
    assert "--to-earliest, --to-latest, --to-datetime" in capsys.readouterr().err
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM cdc_scorer_checkpoint")
        assert cursor.fetchone() == (0,)
    # --to-earliest: every partition back to its first offset (the snapshot read again).
    assert reposition("churn", "--to-earliest") == 0
    out = capsys.readouterr().out
    assert out.startswith("pipeline churn repositioned (to the earliest offsets):"), out
    assert _stored(db, "churn") == {p: 0 for p in range(PARTITIONS)}
    assert in_group("churn") == {p: 0 for p in range(PARTITIONS)}
    # --to-datetime: the first offset at or after the time (none after: the end).
    assert reposition("feedback", "--to-datetime", "2000-01-01T00:00:00Z") == 0
    assert _stored(db, "feedback") == {p: 0 for p in range(PARTITIONS)}
    assert reposition("feedback", "--to-datetime", "2100-01-01") == 0
    assert _stored(db, "feedback") == ends and in_group("feedback") == ends
    # --to-offset N --partition P: that partition only, inside what the partition holds.
    capsys.readouterr()
    assert reposition("feedback", "--to-offset", str(ends[0] + 5), "--partition", "0") == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert _stored(db, "feedback") == ends
    assert reposition("feedback", "--to-offset", "1", "--partition", "0") == 0
    assert _stored(db, "feedback") == {**ends, 0: 1} and in_group("feedback") == {**ends, 0: 1}
    assert reposition("feedback", "--to-offset", "1") == 2  # a usage error: no --partition


def _stored(db: Any, pipeline: str) -> dict[int, int]:
    """A pipeline's next offset per partition, as the database keeps them."""
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT kafka_partition, next_offset FROM {OFFSETS_TABLE} WHERE pipeline = %s",
            (pipeline,),
        )
        return {int(p): int(o) for p, o in cursor.fetchall()}


def _pipeline_json(out: str, pipeline: str) -> dict[str, Any]:
    """A pipeline's entry of `status --json`."""
    shown: list[dict[str, Any]] = json.loads(out)
    return next(entry for entry in shown if entry["pipeline"] == pipeline)


def _checked_as_kafka(out: str, prefix: str, churn: str) -> None:
    """`check` in Kafka mode: the brokers, each topic and its partitions, each group, the
    offsets table's grant — and nothing of the log Debezium reads for the scorer."""
    assert "PASS  brokers 127.0.0.1:" in out, out
    assert f"PASS  topic {prefix}.{churn} (pipeline churn, {PARTITIONS} partitions)" in out, out
    assert f"PASS  consumer group scorers-{prefix}.churn: 1 member (STABLE)" in out, out
    assert "PASS  grant: write cdc_scorer_kafka_offset" in out, out
    for absent in ("binlog", "failover", "replication slot", "GTID", "publication", "FAIL"):
        assert absent not in out, (absent, out)


def _group_lines(kafka: KafkaStack, group_id: str, database: str) -> list[GroupPartition]:
    """``kafka-consumer-groups.sh --describe`` of both pipelines' groups."""
    return [
        line
        for pipeline in ("churn", "feedback")
        for line in describe_group(kafka.bootstrap_servers, f"{group_id}.{pipeline}")
        if line.topic.endswith(f".{database}.{pipeline}")
    ]


def _read_through_kafka(app: Any) -> int:
    """Rows the daemon counted as read from its feeds (every label), once its feeds are
    Debezium's topics and no log of the database's is read (the path this test names)."""
    feeds = [type(feed).__name__ for feed in app.feeds]
    assert feeds and set(feeds) == {"DebeziumFeed"}, feeds
    return sum(
        int(sample.value)
        for metric in app.telemetry.registry.collect()
        if metric.name == "cdc_scorer_source_rows"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def load_config_text(
    tmp_path: Path, kafka: KafkaStack, prefix: str, signal_table: str | None = None
) -> Path:
    import tomllib

    path = tmp_path / "kafka.toml"
    config = tomllib.loads((tmp_path / "base.toml").read_text())
    keys: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "topic_prefix": prefix,
        "group_id": f"scorers-{prefix}",
        "session_timeout_ms": 6000,
    }
    if signal_table is not None:
        keys["signal_table"] = signal_table
    config = with_debezium(config, **keys)
    path.write_text(tomli_w.dumps(config))
    return path


async def test_the_blog_scenario_through_debezium_on_postgresql(
    pg: PgDatabase,
    tmp_path: Path,
    kafka: KafkaStack,
    models: ModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    generator = ChurnRowGenerator(32)
    existing = list(generator.rows(120))
    pg.insert_churn(existing)
    texts = FeedbackGenerator(4)
    for _ in range(20):
        pg.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (texts.text(),))
    prefix, slot = f"q{uuid.uuid4().hex[:6]}", f"dbz_{uuid.uuid4().hex[:8]}"
    kafka.put_connector(
        prefix,
        {
            **postgres_connector(
                pg.server,
                prefix=prefix,
                database=pg.name,
                tables=["churn", "feedback"],
                slot=slot,
                partitions=PARTITIONS,
                keys={"churn": "phone"},
            ),
        },
    )
    try:
        pg_config(tmp_path / "base.toml", pg, models.url)
        config = load_config_text(tmp_path, kafka, prefix)
        assert cli(["init", "--config", str(config)]) == 0
        # Kafka mode makes no slot or publication of the scorer's: Debezium reads the WAL.
        assert (
            pg.rows("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (pg.slot,))
            == []
        )
        spec = load_config(config)
        async with Running(spec) as app:
            await wait_for(lambda: churn_matches(pg.conn), timeout_s=120, what="the snapshot")
            await wait_for(lambda: feedback_matches(pg.conn), what="feedback's snapshot")
            added = list(generator.rows(20))
            pg.insert_churn(added)
            with pg.conn.cursor() as cursor:
                for row in existing[:10]:
                    new = generator.changed(row)
                    cursor.execute(
                        "UPDATE churn SET day_mins = %s, eve_mins = %s WHERE phone = %s",
                        (new["day_mins"], new["eve_mins"], row["phone"]),
                    )
                cursor.execute(
                    "DELETE FROM churn WHERE phone = ANY(%s)",
                    ([r["phone"] for r in existing[20:25]],),
                )
                cursor.execute("UPDATE feedback SET user_feedback = 'I hate it' WHERE id = 1")
                cursor.execute("DELETE FROM feedback WHERE id = 2")
            await wait_for(lambda: churn_matches(pg.conn), timeout_s=90, what="the writes")
            await wait_for(lambda: feedback_matches(pg.conn), what="feedback's writes")
            capsys.readouterr()
            assert await asyncio.to_thread(cli, ["check", "--config", str(config)]) == 0
            _checked_as_kafka(capsys.readouterr().out, prefix, "public.churn")
            pg.execute("TRUNCATE feedback")  # skipped.operations=none: it arrives
            await wait_for(
                lambda: pg.rows("SELECT count(*) FROM feedback_predictions") == [(0,)],
                what="the truncate",
            )
            assert _read_through_kafka(app) >= 140  # no pgoutput stream of ours ran
    finally:
        kafka.delete_connector(prefix)
        _drop_slot(pg, slot)


SIGNAL_DDL = (
    "CREATE TABLE debezium_signal (id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, "
    "data VARCHAR(2048) NULL)"
)


async def test_a_model_change_and_rescore_go_through_debeziums_incremental_snapshot(
    tmp_path: Path,
    mysql_gtid: DatabaseServer,
    kafka: KafkaStack,
    models: ModelServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, database = mysql_gtid, f"ksig_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    with db.cursor() as cursor:
        cursor.execute(SIGNAL_DDL)
    existing = list(ChurnRowGenerator(33).rows(150))
    insert_churn(db, existing)
    texts = FeedbackGenerator(6)
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO feedback (user_feedback) VALUES (%s)", [(texts.text(),) for _ in range(30)]
        )
    prefix = put_churn_connector(
        kafka,
        server,
        database,
        letter="s",
        server_id=5702,
        tables=("churn", "feedback", "debezium_signal"),
        extra={"signal.data.collection": f"{database}.debezium_signal"},
    )
    try:
        write_config(tmp_path / "base.toml", server, database, models.url)
        config = load_config_text(tmp_path, kafka, prefix, signal_table="debezium_signal")
        assert cli(["init", "--config", str(config)]) == 0
        topic = f"{prefix}.{database}.churn"
        await wait_for(
            lambda: _messages(kafka, topic, PARTITIONS) == 150, what="Debezium's first snapshot"
        )
        history = _ends(kafka, topic)
        async with Running(load_config(config)):
            await wait_for(lambda: churn_matches(db), timeout_s=120, what="version 1")
            await wait_for(lambda: feedback_matches(db), what="feedback")
        assert _versions(db) == {"1": 150}  # the embedded default's churn model version
        # A new pipeline with a signal table: Debezium's incremental snapshot gave its rows,
        # not the topic's history (its partitions began at the topic's ends).
        origins = _origins(db)
        assert len(origins) == 150
        assert all(offset >= history[partition] for partition, offset in origins), history

        # A new model version: the first member to claim it asks Debezium to re-read churn.
        write_config(
            tmp_path / "base.toml",
            server,
            database,
            models.url,
            pipelines={"churn": {"model_version": "2"}},
        )
        config = load_config_text(tmp_path, kafka, prefix, signal_table="debezium_signal")
        # The re-score runs beside the stream: a writer inserts, updates and deletes all along.
        writer = Writer(server, database, [r["phone"] for r in existing])
        async with Running(load_config(config)):
            writer.start()
            try:
                await wait_for(
                    lambda: (_reading(capsys, config, "churn") or "").startswith("re-score"),
                    what="the re-score in status",
                )
                await wait_for(lambda: writer.writes > 50, what="writes beside the re-score")
            finally:
                writer.stop()
            assert writer.writes > 50
            await wait_for(lambda: _one_version(db, "2"), timeout_s=120, what="version 2")
            await wait_for(lambda: churn_matches(db), what="churn to converge")
            # status: Debezium's reading of churn that version 2 asked for, every row since.
            rows = _count(db, "churn")
            reading = _reading(capsys, config, "churn") or ""
            assert reading.startswith("re-score (model version, signal "), reading
            assert "model version 2, asked " in reading
            assert reading.endswith(f": {rows}/{rows} rows scored since (100 %)"), reading
            assert cli(["status", "--config", str(config), "--json"]) == 0
            shown = _pipeline_json(capsys.readouterr().out, "churn")["reading"]
            assert (shown["reason"], shown["rows"]) == ("model version", rows)
            assert shown["rows_scored_since"] >= rows
            with db.cursor() as cursor:
                cursor.execute(
                    "SELECT id, type FROM debezium_signal WHERE type = 'execute-snapshot'"
                )
                # Asked once per new pipeline (churn, feedback), once for churn's version 2.
                assert len(cursor.fetchall()) == 3
            # `cdc-scorer rescore` in Kafka mode: Debezium re-reads the rows that match.
            before = _feedback_positions(db)
            assert (
                cli(
                    [
                        "rescore",
                        "--config",
                        str(config),
                        "--pipeline",
                        "feedback",
                        "--where",
                        "id <= 10",
                    ]
                )
                == 0
            )
            await wait_for(
                lambda: _moved(before, _feedback_positions(db)) == set(range(1, 11)),
                timeout_s=90,
                what="the rows of the re-score",
            )
            assert feedback_matches(db)
            reading = _reading(capsys, config, "feedback") or ""
            assert reading.startswith("re-score (requested, signal "), reading
            assert reading.endswith(": 10/10 rows scored since (100 %)"), reading
            assert " where id <= 10, model version " in reading
    finally:
        kafka.delete_connector(prefix)
        db.close()


def _reading(capsys: pytest.CaptureFixture[str], config: Path, pipeline: str) -> str | None:
    """A pipeline's reading line of `cdc-scorer status` (None: none shown)."""
    capsys.readouterr()
    assert cli(["status", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{pipeline}: ")))
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        if "rows scored since" in line:
            return line.strip()
    return None


def _origins(db: Any) -> list[tuple[int, int]]:
    """The message (partition, offset) each churn prediction was made from."""
    with db.cursor() as cursor:
        cursor.execute("SELECT source_position FROM churn_predictions")
        found = []
        for (position,) in cursor.fetchall():
            _topic, partition, offset = str(position).rsplit(":", 2)
            found.append((int(partition), int(offset)))
    return found


def _ends(kafka: KafkaStack, topic: str) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "probe"})
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
    finally:
        probe.close()


def _one_version(db: Any, version: str) -> bool:
    """Every churn row has a prediction, all of model version ``version``."""
    versions = _versions(db)
    return list(versions) == [version] and versions[version] == _count(db, "churn")


def _count(db: Any, table: str) -> int:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        (count,) = cursor.fetchone()
    return int(count)


def _versions(db: Any) -> dict[str | None, int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT model_version, COUNT(*) FROM churn_predictions GROUP BY 1")
        return {v: int(n) for v, n in cursor.fetchall()}


def _feedback_positions(db: Any) -> dict[int, str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id, source_position FROM feedback_predictions")
        return {int(i): str(p) for i, p in cursor.fetchall()}


def _moved(before: dict[int, str], after: dict[int, str]) -> set[int]:
    return {k for k, v in after.items() if before.get(k) != v}


async def test_a_new_pipeline_on_a_trimmed_topic_without_a_signal_table_stops_with_the_fix(
    tmp_path: Path, mysql_gtid: DatabaseServer, kafka: KafkaStack, models: ModelServer
) -> None:
    """Retention removed the beginning of the topic: reading it would miss rows, silently. A
    new pipeline refuses that and names the fix (a signal table: Debezium's snapshot)."""
    server, database = mysql_gtid, f"ktrim_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(35).rows(60)))
    prefix = put_churn_connector(kafka, server, database, letter="r", server_id=5703)
    try:
        topic = f"{prefix}.{database}.churn"
        await wait_for(lambda: _messages(kafka, topic, PARTITIONS) == 60, what="the snapshot")
        ends = _ends(kafka, topic)
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        trimmed = TopicPartition(topic, 1, ends[1] // 2)  # as retention would
        for future in admin.delete_records([trimmed]).values():
            future.result(timeout=30)
        write_config(tmp_path / "base.toml", server, database, models.url)
        config = load_config_text(tmp_path, kafka, prefix)
        assert cli(["init", "--config", str(config)]) == 0
        app = ScorerApp(load_config(config))
        with pytest.raises(FatalError) as caught:
            await asyncio.wait_for(app.run(), 60)
        line = str(caught.value)
        assert f"topic {topic} no longer holds its beginning (partition 1 starts at offset " in (
            line
        ), line
        assert "set source.debezium.signal_table" in line and "\n" not in line
        assert _versions(db) == {}  # nothing scored: the claim rolled back
    finally:
        kafka.delete_connector(prefix)
        db.close()
