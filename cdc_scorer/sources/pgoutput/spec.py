"""``[source.pgoutput]``: PostgreSQL's logical replication through a slot of the scorer's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from annotated_types import Predicate

from cdc_scorer.core.spec import FeedSpec, Identifier, SourceSpec, slot_identifier
from cdc_scorer.sources.log_spec import LogFeedSpec


@dataclass(frozen=True)
class PgoutputSpec(LogFeedSpec):
    name: ClassVar[str] = "pgoutput"
    engines: ClassVar[tuple[str, ...]] = ("postgresql",)

    # The publication of the captured tables (init makes it, or extends one their owner made);
    # the scorer's signal and heartbeat tables go in <publication>_own.
    publication: Identifier = "cdc_scorer"
    # The scorer's replication slot (init makes it).
    slot_name: Annotated[str, Predicate(slot_identifier)] = "cdc_scorer"


def pgoutput_spec(source: SourceSpec) -> PgoutputSpec:
    """``[source.pgoutput]`` of a configuration the registry gave this package."""
    feed: FeedSpec = source.feed
    if not isinstance(feed, PgoutputSpec):
        raise TypeError(f"[source.{feed.name}] is not pgoutput's section")
    return feed
