-- The database user of cdc-scorer: read the binlog and the source tables, own its tables.
-- No SUPER, no RELOAD (no FLUSH TABLES WITH READ LOCK: the snapshot does not need it).
CREATE USER IF NOT EXISTS 'cdc_scorer'@'%' IDENTIFIED BY 'from-secrets-manager';

-- Aurora MySQL / MySQL 8: stream the binlog, read its position.
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc_scorer'@'%';
-- MariaDB 10.5+ instead: GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc_scorer'@'%';

-- Read the source tables; write predictions, checkpoints, dead letters, heartbeats.
GRANT SELECT, INSERT, UPDATE, DELETE ON mltest.* TO 'cdc_scorer'@'%';
-- The analysts' views (each pipeline's scored_view): made by `init`, and made again by the
-- daemon when an ALTER TABLE changes its source table's columns. CREATE OR REPLACE VIEW needs
-- DROP on the view; granted on the views alone, one line each (CREATE lets MySQL grant on a
-- view that does not exist yet).
GRANT CREATE, CREATE VIEW, DROP ON mltest.churn_scored TO 'cdc_scorer'@'%';
GRANT CREATE, CREATE VIEW, DROP ON mltest.feedback_scored TO 'cdc_scorer'@'%';
-- Only for `cdc-scorer init` (or run init as an admin once and leave this out): create the
-- scorer's tables, and add the columns a newer release needs to tables an older one made.
GRANT CREATE, ALTER ON mltest.* TO 'cdc_scorer'@'%';
