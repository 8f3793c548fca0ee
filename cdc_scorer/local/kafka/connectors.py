"""The Debezium connectors of the tests and the demo, set up as the scorer expects them
(README "Kafka source"): the JSON converter (schemas on unless asked), DECIMAL precise,
BIGINT UNSIGNED precise, truncates delivered (``skipped.operations=none``), tombstones after
deletes, topics made with
``partitions`` partitions."""

from __future__ import annotations

from collections.abc import Mapping

from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.servers import DatabaseServer


def _common(prefix: str, bootstrap: str, partitions: int, schemas: bool) -> dict[str, str]:
    flag = "true" if schemas else "false"
    return {
        "tasks.max": "1",
        "topic.prefix": prefix,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": flag,
        "value.converter.schemas.enable": flag,
        "decimal.handling.mode": "precise",
        "skipped.operations": "none",
        "tombstones.on.delete": "true",
        "topic.creation.default.partitions": str(partitions),
        "topic.creation.default.replication.factor": "1",
    }


def _keys(where: str, keys: Mapping[str, str] | None) -> dict[str, str]:
    if not keys:
        return {}
    return {
        "message.key.columns": ";".join(f"{where}.{t}:{cols}" for t, cols in sorted(keys.items()))
    }


def mysql_connector(
    server: DatabaseServer,
    *,
    prefix: str,
    database: str,
    tables: list[str],
    bootstrap: str,
    partitions: int = 3,
    schemas: bool = True,
    server_id: int = 5400,
    keys: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Debezium's MySQL connector on ``database``'s ``tables`` of a private server; ``keys``:
    the message key of a table without a primary key (table → its columns, comma-separated),
    the pipeline's ``key_columns``; ``server_id``: its replica id, one per connector."""
    return {
        **_keys(database, keys),
        **_common(prefix, bootstrap, partitions, schemas),
        "connector.class": "io.debezium.connector.mysql.MySqlConnector",
        "database.hostname": server.host,
        "database.port": str(server.port),
        "database.user": server.user,
        "database.password": server.password,
        "database.server.id": str(server_id),
        "database.allowPublicKeyRetrieval": "true",
        "database.include.list": database,
        "table.include.list": ",".join(f"{database}.{t}" for t in tables),
        "bigint.unsigned.handling.mode": "precise",
        "schema.history.internal.kafka.bootstrap.servers": bootstrap,
        "schema.history.internal.kafka.topic": f"{prefix}.schema-history",
        "include.schema.changes": "false",
    }


def postgres_connector(
    server: PostgresServer,
    *,
    prefix: str,
    database: str,
    tables: list[str],
    bootstrap: str,
    slot: str,
    partitions: int = 3,
    schemas: bool = True,
    keys: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Debezium's PostgreSQL connector (pgoutput) on ``database``'s ``tables`` (``keys`` as
    for MySQL, the tables in schema public)."""
    return {
        **_keys("public", keys),
        **_common(prefix, bootstrap, partitions, schemas),
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": server.host,
        "database.port": str(server.port),
        "database.user": server.user,
        "database.password": "",
        "database.dbname": database,
        "slot.name": slot,
        "publication.name": f"{slot}_publication",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(t if "." in t else f"public.{t}" for t in tables),
    }
