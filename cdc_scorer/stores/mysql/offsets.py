"""The Kafka offsets table on MySQL and MariaDB (``stores/offsets.py``)."""

from __future__ import annotations

from cdc_scorer.stores.offsets import OFFSETS_TABLE, VERSIONS_TABLE, OffsetsSql

OFFSETS = OffsetsSql(
    table=OFFSETS_TABLE,
    ddl=f"""CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (
  pipeline VARCHAR(64) NOT NULL,
  topic VARCHAR(249) NOT NULL,
  kafka_partition INT NOT NULL,
  next_offset BIGINT NOT NULL,
  owner VARCHAR(255) NULL,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (pipeline, topic, kafka_partition)
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
    insert_missing=f"INSERT IGNORE INTO {OFFSETS_TABLE} "
    "(pipeline, topic, kafka_partition, next_offset, owner) VALUES (%s, %s, %s, %s, %s)",
    versions_table=VERSIONS_TABLE,
    versions_ddl=f"""CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
  pipeline VARCHAR(64) NOT NULL,
  model_version VARCHAR(64) NOT NULL,
  signal_id VARCHAR(64) NOT NULL,
  requested_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  reason VARCHAR(32) NOT NULL DEFAULT 'model version',
  where_clause TEXT NULL,
  PRIMARY KEY (pipeline, model_version)
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
    claim_version=f"INSERT IGNORE INTO {VERSIONS_TABLE} "
    "(pipeline, model_version, signal_id, reason) VALUES (%s, %s, %s, %s)",
    record_request=f"INSERT INTO {VERSIONS_TABLE} "
    "(pipeline, model_version, signal_id, reason, where_clause) VALUES (%s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE signal_id = VALUES(signal_id), reason = VALUES(reason), "
    "where_clause = VALUES(where_clause), requested_at = CURRENT_TIMESTAMP(6)",
)
