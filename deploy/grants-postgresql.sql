-- The database user of cdc-scorer on PostgreSQL / Aurora PostgreSQL: stream the changes of the
-- source tables, read them, own its tables, views and the publication of its own tables.
CREATE ROLE cdc_scorer LOGIN PASSWORD 'from-secrets-manager';

-- Aurora PostgreSQL / RDS: stream changes (logical replication).
GRANT rds_replication TO cdc_scorer;
-- Community PostgreSQL instead: ALTER ROLE cdc_scorer REPLICATION;

-- CREATE on the database: the publication of the scorer's own tables; on the schema: its tables
-- and views (`init`), made again by the daemon when an ALTER TABLE changes a source's columns.
GRANT CONNECT, CREATE ON DATABASE mltest TO cdc_scorer;
GRANT USAGE, CREATE ON SCHEMA public TO cdc_scorer;
-- Read the source tables (snapshots, re-scores, `check`).
GRANT SELECT ON public.churn, public.feedback TO cdc_scorer;

-- As the source tables' owner (only a table's owner may publish it, or set its identity):
CREATE PUBLICATION cdc_scorer FOR TABLE public.churn, public.feedback;
-- churn has no primary key: its UPDATEs and DELETEs are published only with a full identity.
ALTER TABLE public.churn REPLICA IDENTITY FULL;
