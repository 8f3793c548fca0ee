"""The sources, by ``[source] engine``: a new source is one package and one line here."""

from __future__ import annotations

from collections.abc import Callable

from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.sources import Source
from cdc_scorer.sources.binlog import BinlogSource
from cdc_scorer.sources.pgoutput import PgoutputSource

SOURCES: dict[str, Callable[[SourceSpec, RetrySpec], Source]] = {
    "mysql": BinlogSource,  # MySQL, Aurora MySQL, MariaDB: the binlog
    "postgresql": PgoutputSource,  # PostgreSQL, Aurora PostgreSQL: logical replication
}


def build_source(source: SourceSpec, retry: RetrySpec) -> Source:
    return SOURCES[source.engine](source, retry)
