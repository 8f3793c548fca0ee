-- The database user of cdc-scorer: read the binlog and the source tables, own its tables.
-- No SUPER, no RELOAD (no FLUSH TABLES WITH READ LOCK: the snapshot does not need it).
CREATE USER IF NOT EXISTS 'cdc_scorer'@'%' IDENTIFIED BY 'from-secrets-manager';

-- Aurora MySQL / MySQL 8: stream the binlog, read its position.
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc_scorer'@'%';
-- MariaDB 10.5+ instead: GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc_scorer'@'%';

-- Read the source tables; write predictions, checkpoints, dead letters, heartbeats.
GRANT SELECT, INSERT, UPDATE, DELETE ON mltest.* TO 'cdc_scorer'@'%';
-- Only for `cdc-scorer init` (or run init as an admin once and leave these out):
GRANT CREATE, CREATE VIEW ON mltest.* TO 'cdc_scorer'@'%';
