"""The stores, by ``[source] engine`` (the scorer's tables live in the source database): a new
dialect is one package and one line here."""

from __future__ import annotations

from collections.abc import Callable

from cdc_scorer.core.spec import RetrySpec, SourceSpec
from cdc_scorer.stores.mysql import MysqlStore
from cdc_scorer.stores.offsets import OffsetStore
from cdc_scorer.stores.postgresql import PostgresStore

STORES: dict[str, Callable[[SourceSpec, RetrySpec], OffsetStore]] = {
    "mysql": MysqlStore,  # MySQL, Aurora MySQL, MariaDB
    "postgresql": PostgresStore,  # PostgreSQL, Aurora PostgreSQL
}


def build_store(source: SourceSpec, retry: RetrySpec) -> OffsetStore:
    """The dialect's store (the core's ``Store``, with the Kafka feed's offsets too)."""
    return STORES[source.engine](source, retry)
