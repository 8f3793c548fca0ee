"""Sources: the plug point of change feeds (the MySQL/MariaDB binlog, PostgreSQL's logical
replication, Debezium's topics on Kafka), each a package of its own behind the contract of
``core/feeds.py`` (re-exported here), registered in ``sources/registry.py``; ``log_feed.py`` is
the feed the two database logs share, ``handover.py`` their reader threads' hand-over.
"""

from cdc_scorer.core.feeds import (
    Capture,
    ChangeStream,
    Feed,
    Source,
    SourceInfo,
    StreamHooks,
    TableCheck,
)

__all__ = [
    "Capture",
    "ChangeStream",
    "Feed",
    "Source",
    "SourceInfo",
    "StreamHooks",
    "TableCheck",
]
