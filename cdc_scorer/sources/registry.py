"""The change feeds, by the name of their section ``[source.<name>]``: each is one package of
``sources/`` and one line here — its section's class and how its source is built. A
configuration without a feed section reads its engine's own log (``NATIVE``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from cdc_scorer.core.spec import FeedSpec, ScorerSpec
from cdc_scorer.sources import Source
from cdc_scorer.sources.binlog import BinlogSource
from cdc_scorer.sources.binlog.spec import BinlogSpec
from cdc_scorer.sources.debezium.source import DebeziumSource
from cdc_scorer.sources.debezium.spec import DebeziumSpec
from cdc_scorer.sources.pgoutput import PgoutputSource
from cdc_scorer.sources.pgoutput.spec import PgoutputSpec
from cdc_scorer.stores.offsets import OffsetStore


class Feed(NamedTuple):
    spec: type[FeedSpec]  # the section's keys, validated by config.py
    source: Callable[[ScorerSpec, OffsetStore], Source]


FEEDS: dict[str, Feed] = {
    # MySQL, Aurora MySQL, MariaDB: the binlog, read as a replica
    "binlog": Feed(BinlogSpec, lambda spec, _store: BinlogSource(spec.source, spec.retry)),
    # PostgreSQL, Aurora PostgreSQL: logical replication (pgoutput)
    "pgoutput": Feed(PgoutputSpec, lambda spec, _store: PgoutputSource(spec.source, spec.retry)),
    # Debezium's topics on Kafka or MSK, read by a consumer group
    "debezium": Feed(DebeziumSpec, DebeziumSource),
}

# The feed of an engine whose configuration names none: its own log.
NATIVE = {"mysql": "binlog", "postgresql": "pgoutput"}


def source_of(spec: ScorerSpec, store: OffsetStore) -> Source:
    """The source of the change feed the configuration reads (a partition-offset feed keeps
    its offsets through ``store``)."""
    return FEEDS[spec.source.feed.name].source(spec, store)
