"""The Kafka offsets table on PostgreSQL (``stores/offsets.py``), in the store's schema."""

from __future__ import annotations

from cdc_scorer.postgresql.connection import quote
from cdc_scorer.stores.offsets import OFFSETS_TABLE, VERSIONS_TABLE, OffsetsSql


def offsets_sql(schema: str) -> OffsetsSql:
    table = f"{quote(schema)}.{OFFSETS_TABLE}"
    versions = f"{quote(schema)}.{VERSIONS_TABLE}"
    return OffsetsSql(
        table=table,
        ddl=f"""CREATE TABLE IF NOT EXISTS {table} (
  pipeline varchar(64) NOT NULL,
  topic varchar(249) NOT NULL,
  kafka_partition integer NOT NULL,
  next_offset bigint NOT NULL,
  owner varchar(255) NULL,
  updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (pipeline, topic, kafka_partition)
)""",
        insert_missing=f"INSERT INTO {table} "
        "(pipeline, topic, kafka_partition, next_offset, owner) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        versions_table=versions,
        versions_ddl=f"""CREATE TABLE IF NOT EXISTS {versions} (
  pipeline varchar(64) NOT NULL,
  model_version varchar(64) NOT NULL,
  signal_id varchar(64) NOT NULL,
  requested_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  reason varchar(32) NOT NULL DEFAULT 'model version',
  where_clause text NULL,
  PRIMARY KEY (pipeline, model_version)
)""",
        claim_version=f"INSERT INTO {versions} (pipeline, model_version, signal_id, reason) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        record_request=f"INSERT INTO {versions} "
        "(pipeline, model_version, signal_id, reason, where_clause) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (pipeline, model_version) DO UPDATE SET signal_id = EXCLUDED.signal_id, "
        "reason = EXCLUDED.reason, where_clause = EXCLUDED.where_clause, "
        "requested_at = CURRENT_TIMESTAMP",
    )
