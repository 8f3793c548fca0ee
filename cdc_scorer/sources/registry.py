"""The sources: a database's own log by ``[source] engine`` (a new log is one package and one
line here), or Debezium's topics when ``[kafka]`` is set."""

from __future__ import annotations

from collections.abc import Callable

from cdc_scorer.core.spec import RetrySpec, ScorerSpec, SourceSpec
from cdc_scorer.sources import Source
from cdc_scorer.sources.binlog import BinlogSource
from cdc_scorer.sources.pgoutput import PgoutputSource
from cdc_scorer.stores.offsets import OffsetStore

SOURCES: dict[str, Callable[[SourceSpec, RetrySpec], Source]] = {
    "mysql": BinlogSource,  # MySQL, Aurora MySQL, MariaDB: the binlog
    "postgresql": PgoutputSource,  # PostgreSQL, Aurora PostgreSQL: logical replication
}


def build_source(source: SourceSpec, retry: RetrySpec) -> Source:
    return SOURCES[source.engine](source, retry)


def source_of(spec: ScorerSpec, store: OffsetStore) -> Source:
    """The change feed a configuration reads: Debezium's topics when ``[kafka]`` is set (its
    offsets kept by ``store``), else the log of the ``[source]`` engine."""
    if spec.kafka is not None:
        from cdc_scorer.sources.debezium.source import DebeziumSource

        return DebeziumSource(spec, store)
    return build_source(spec.source, spec.retry)
