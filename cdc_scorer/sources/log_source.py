"""What the sources of a database's own log (the binlog, pgoutput) share: one feed for every
pipeline, and the admin commands on the pipelines' checkpoint rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from cdc_scorer.core.feeds import Feed, PipelineReport, Rescores, Source, Target
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.core.store import DaemonStore, Store
from cdc_scorer.sources.log_spec import LogFeedSpec


class LogSource:
    """The base of a database log's source (``Source`` with the log's own methods)."""

    _source: SourceSpec
    _log: LogFeedSpec
    _retry: RetrySpec

    def _as_source(self) -> Source:
        return cast(Source, self)  # the subclass completes the contract

    def feeds(
        self,
        pipelines: Sequence[PipelineSpec],
        tables: Mapping[str, TableInfo],
        store: DaemonStore,
        telemetry: Observer,
    ) -> list[Feed]:
        """One reader of the log for every pipeline."""
        from cdc_scorer.sources.log_feed import LogFeed

        source = self._as_source()
        spec, log = self._source, self._log
        return [LogFeed(source, spec, log, self._retry, pipelines, tables, store, telemetry)]

    def status(
        self, pipelines: Sequence[PipelineSpec], store: Store
    ) -> tuple[list[PipelineReport], list[tuple[str, str]]]:
        from cdc_scorer.sources.log_status import log_status

        return log_status(self._as_source(), pipelines, store)

    def reposition(self, pipeline: PipelineSpec, store: Store, target: Target) -> list[str]:
        from cdc_scorer.sources.log_reposition import log_reposition

        return log_reposition(self._as_source(), pipeline, store, target)

    def rescores(self, store: Store) -> Rescores:
        from cdc_scorer.sources.log_rescores import LogRescores

        return LogRescores(self._as_source(), store)
