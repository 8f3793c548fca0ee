-- Aurora MySQL / RDS: keep binlogs long enough to survive an outage of the scorer.
-- If the scorer is down longer than this, its checkpoint is purged and it refuses to resume
-- ("binlog position ... cannot be read"); re-snapshot by deleting its row in cdc_scorer_checkpoint.
CALL mysql.rds_set_configuration('binlog retention hours', 72);
CALL mysql.rds_show_configuration;
