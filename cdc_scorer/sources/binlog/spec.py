"""``[source.binlog]``: reading the binlog of MySQL, Aurora MySQL or MariaDB as a replica."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from annotated_types import Ge, Le

from cdc_scorer.core.spec import FeedSpec, SourceSpec
from cdc_scorer.sources.log_spec import LogFeedSpec


def random_server_id() -> int:
    # Above the ids people give real servers (small numbers), below the 32-bit limit.
    return random.randint(1 << 24, (1 << 32) - 1)


@dataclass(frozen=True)
class BinlogSpec(LogFeedSpec):
    name: ClassVar[str] = "binlog"
    engines: ClassVar[tuple[str, ...]] = ("mysql",)

    # This process's replica id. Unset: a random id per process, so the tasks of one ECS
    # service never clash (two readers with one id disconnect each other).
    server_id: Annotated[int, Ge(1), Le(4294967295)] | None = None
    # auto: GTIDs on MariaDB, GTID sets on MySQL with gtid_mode=ON, else file:pos; file: file:pos
    positions: Literal["auto", "file"] = "auto"
    # rows events: fast (per-table compiled plans) | stock (the library)
    decoder: Literal["fast", "stock"] = "fast"

    def __post_init__(self) -> None:
        if self.server_id is None:
            object.__setattr__(self, "server_id", random_server_id())


def binlog_spec(source: SourceSpec) -> BinlogSpec:
    """``[source.binlog]`` of a configuration the registry gave this package."""
    feed: FeedSpec = source.feed
    if not isinstance(feed, BinlogSpec):
        raise TypeError(f"[source.{feed.name}] is not the binlog's section")
    return feed
