"""The Debezium connectors of the tests, the benchmark and the demo: the files the docs show
(``deploy/debezium/mysql-connector.json``, ``postgresql-connector.json``), registered as they
are but for what names a deployment — its database's address and credentials, its tables and
keys, its topic prefix, its brokers, the partitions and replication of the topics made — so
what users copy is what the tests run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.servers import DatabaseServer

CONNECTORS = Path(__file__).resolve().parents[3] / "deploy" / "debezium"
# The keys a deployment sets for itself; every other key of the files is sent as written.
DEPLOYMENT_KEYS = frozenset(
    {
        "topic.prefix",
        "database.hostname",
        "database.port",
        "database.user",
        "database.password",
        "database.server.id",
        "database.include.list",
        "database.dbname",
        "database.allowPublicKeyRetrieval",  # MySQL 8 passwords without TLS (the tests')
        "table.include.list",
        "message.key.columns",
        "signal.data.collection",
        "slot.name",
        "publication.name",
        "schema.history.internal.kafka.bootstrap.servers",
        "schema.history.internal.kafka.topic",
        "topic.creation.default.partitions",
        "topic.creation.default.replication.factor",  # 1 on the tests' one broker
        # Messages without schemas: a variant the tests also read.
        "key.converter.schemas.enable",
        "value.converter.schemas.enable",
    }
)


def connector_file(name: str) -> dict[str, str]:
    """``deploy/debezium/<name>-connector.json`` as written."""
    config: dict[str, str] = json.loads((CONNECTORS / f"{name}-connector.json").read_text())
    return config


def _deployed(name: str, deployment: Mapping[str, str]) -> dict[str, str]:
    """The file's settings with ``deployment``'s values (a deployment key not given is dropped:
    e.g. no signal table); a key outside :data:`DEPLOYMENT_KEYS` is refused."""
    unknown = set(deployment) - DEPLOYMENT_KEYS
    if unknown:
        raise ValueError(f"not a deployment's key (the file sets it): {sorted(unknown)}")
    kept = {k: v for k, v in connector_file(name).items() if k not in DEPLOYMENT_KEYS}
    return {**kept, **deployment}


def _variant(prefix: str, partitions: int, schemas: bool) -> dict[str, str]:
    flag = "true" if schemas else "false"
    return {
        "topic.prefix": prefix,
        "key.converter.schemas.enable": flag,
        "value.converter.schemas.enable": flag,
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
    return _deployed(
        "mysql",
        {
            **_keys(database, keys),
            **_variant(prefix, partitions, schemas),
            "database.hostname": server.host,
            "database.port": str(server.port),
            "database.user": server.user,
            "database.password": server.password,
            "database.server.id": str(server_id),
            "database.allowPublicKeyRetrieval": "true",
            "database.include.list": database,
            "table.include.list": ",".join(f"{database}.{t}" for t in tables),
            "schema.history.internal.kafka.bootstrap.servers": bootstrap,
            "schema.history.internal.kafka.topic": f"{prefix}.schema-history",
        },
    )


def postgres_connector(
    server: PostgresServer,
    *,
    prefix: str,
    database: str,
    tables: list[str],
    slot: str,
    partitions: int = 3,
    schemas: bool = True,
    keys: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Debezium's PostgreSQL connector (pgoutput) on ``database``'s ``tables`` (``keys`` as
    for MySQL, the tables in schema public)."""
    return _deployed(
        "postgresql",
        {
            **_keys("public", keys),
            **_variant(prefix, partitions, schemas),
            "database.hostname": server.host,
            "database.port": str(server.port),
            "database.user": server.user,
            "database.password": "",
            "database.dbname": database,
            "slot.name": slot,
            "publication.name": f"{slot}_publication",
            "table.include.list": ",".join(t if "." in t else f"public.{t}" for t in tables),
        },
    )
