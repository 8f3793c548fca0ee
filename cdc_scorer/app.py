"""The one wiring of every mode: the ops server; the source, the store and the model services
from their registries; then each of the source's feeds — started (leader locks and
checkpoints, or a consumer group's claims), its pipelines, the coordinator that routes its
stream to them, its side work (a heartbeat) — all run alike, whatever the change feed is.

Shutdown is "stop intake → drain until a deadline → cancel": the reader stops, every batcher
flushes, in-flight model calls finish and commit in order, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from typing import Any

import structlog

from cdc_scorer.core.coordinator import Coordinator
from cdc_scorer.core.errors import CdcScorerError, FatalError
from cdc_scorer.core.own_tables import HEARTBEAT_TABLE
from cdc_scorer.core.pipeline import Inbox, PipelineRunner
from cdc_scorer.core.positions import Position, oldest_position
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.router import Router
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.ops.http import OpsServer
from cdc_scorer.ops.metrics import Telemetry
from cdc_scorer.ops.readiness import not_ready
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.sources import Feed
from cdc_scorer.sources.registry import source_of
from cdc_scorer.stores.registry import build_store

log = structlog.get_logger("cdc_scorer.app")


class ScorerApp:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self.telemetry = Telemetry()
        self.telemetry.source.lag_every_s = spec.source.feed.lag_every_s
        self.store = build_store(spec.source, spec.retry)
        self.source = source_of(spec, self.store)
        self._stop = asyncio.Event()
        self._coordinators: list[Coordinator] = []
        self.feeds: list[Feed] = []  # the source's, once the run has inspected the tables
        self.ops: OpsServer | None = None

    def request_stop(self) -> None:
        """Stop intake; what was read is flushed, scored and committed."""
        self._stop.set()
        for coordinator in self._coordinators:
            coordinator.stop()

    def not_ready(self) -> list[str]:
        """Why this process should not count as ready (empty: ready)."""
        return not_ready(self.telemetry, self.spec.http.ready_max_lag_s)

    async def run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.spec.http.port:
                    self.ops = OpsServer(self.spec.http, self.telemetry, self.not_ready)
                    await self.ops.start()
                    stack.push_async_callback(self.ops.stop)
                stack.callback(self.store.close)
                await self._run_pipelines()
        except* CdcScorerError as group:
            raise _first(group) from None

    async def _run_pipelines(self) -> None:
        spec, telemetry = self.spec, self.telemetry
        tables = await asyncio.to_thread(self._inspect)
        self.feeds = feeds = self.source.feeds(spec.pipelines, tables, self.store, telemetry)
        started: list[Feed] = []
        try:
            for feed in feeds:
                if not await feed.start(self._stop):
                    break
                started.append(feed)
        except BaseException:
            for feed in started:
                feed.close()
            raise
        if len(started) < len(feeds):  # stopped while waiting to lead
            for feed in started:
                feed.close()
            return
        async with contextlib.AsyncExitStack() as stack:
            # One client per AWS service, its connection pool sized for every call in flight.
            clients: dict[str, Any] = {}
            pool = sum(p.batching.max_in_flight for p in spec.pipelines)
            names = {p.model.client_name for p in spec.pipelines}
            # A backfill's batch jobs: the service's control plane and S3.
            names |= {
                name
                for p in spec.pipelines
                if p.backfill.mode != "realtime"
                for name in p.model.batch_clients
            }
            for client_name in sorted(names):
                clients[client_name] = await stack.enter_async_context(
                    create_client_context(client_name, spec.aws, pool)
                )
            running = [self._feed(feed, tables, clients) for feed in feeds]
            # What start-up made (service models, settings, the decoders' plans: a few hundred
            # thousand objects) lives as long as the process: out of the collector's sight, a
            # full collection scans only what came after it. Before, those collections stopped
            # the stream for up to 65 ms every few seconds (the benchmark's p99 at 1,000 rows/s).
            gc.freeze()
            self._coordinators = [coordinator for coordinator, _runners in running]
            if self._stop.is_set():
                self.request_stop()
            async with asyncio.TaskGroup() as group:
                side: list[asyncio.Task[None]] = []
                for feed, (coordinator, runners) in zip(feeds, running, strict=True):
                    for runner in runners:
                        name = f"pipeline-{runner.pipeline.name}"
                        group.create_task(runner.run(), name=name)
                    group.create_task(coordinator.run(), name="coordinator")
                    for name, work in feed.tasks():
                        side.append(group.create_task(work, name=name))
                await self._stop.wait()
                # The coordinators end the runners once intake stops; the rest just stops.
                for task in side:
                    task.cancel()
            # Drained: each feed may let go of everything its pipelines committed.
            for feed, (_coordinator, runners) in zip(feeds, running, strict=True):
                await feed.finish(_committed(runners))
        log.info(
            "stopped",
            rows_scored=dict(telemetry.rows_scored),
            dead_letters=dict(telemetry.dead_letters),
            model_calls=dict(telemetry.model_calls),
        )

    def _inspect(self) -> dict[str, TableInfo]:
        pipelines = self.spec.pipelines
        self.source.preflight()
        tables = self.store.inspect_tables(pipelines)
        refused = self.source.refusals(pipelines, tables)  # what init would refuse too
        if refused:
            raise FatalError("; ".join(refused))
        self.store.check_schema(pipelines)
        # What init would have made (after the source's refusals: nothing when it refuses).
        for statement in self.source.prepare(pipelines, tables):
            log.info("made on the server", statement=statement)
        found = [c for c in self.source.table_checks(pipelines, tables) if c.problem]
        fatal = [f"{c.name}: {c.problem}" for c in found if c.fatal]
        if fatal:
            raise FatalError("; ".join(fatal))
        for check in found:
            log.warning(
                "a check of the change feed failed", check=check.name, problem=check.problem
            )
        return tables

    def _feed(
        self, feed: Feed, tables: dict[str, TableInfo], clients: dict[str, Any]
    ) -> tuple[Coordinator, list[PipelineRunner]]:
        """The feed's pipelines, and the coordinator that routes its stream to them."""
        runners: list[PipelineRunner] = []
        coordinator: Coordinator | None = None

        def committed() -> None:  # a pipeline committed: the stream learns what all applied
            position = _committed(runners)
            if coordinator is not None and position is not None:
                coordinator.acknowledge(position)

        for pipeline in feed.pipelines:
            runners.append(self._runner(feed, pipeline, tables[pipeline.table], clients, committed))
        inboxes: dict[str, list[Inbox]] = {}
        for runner in runners:
            inboxes.setdefault(runner.pipeline.table, []).append(runner.inbox)
        router = Router(
            inboxes,
            heartbeat_table=HEARTBEAT_TABLE,
            on_heartbeat=self.telemetry.on_heartbeat,
            pipelines={r.pipeline.name: r.inbox for r in runners},
        )
        coordinator = Coordinator(router, feed.open, self.telemetry)
        return coordinator, runners

    def _runner(
        self,
        feed: Feed,
        pipeline: PipelineSpec,
        table: TableInfo,
        clients: dict[str, Any],
        on_committed: Callable[[], None],
    ) -> PipelineRunner:
        exchange = ChunkExchange()
        budget = pipeline.model.budget()
        scorer = build_scorer(
            pipeline,
            clients[pipeline.model.client_name],
            self.spec.retry,
            on_retry=self.telemetry.on_retry,
            on_call=self.telemetry.model_call_observer(pipeline.service),
            budget=budget,
        )
        batch = None
        if pipeline.backfill.mode != "realtime":
            batch = pipeline.model.batch(pipeline.name, pipeline.backfill, clients)
        runner = PipelineRunner(
            pipeline,
            table.key_columns,
            feed.checkpoints[pipeline.name],
            scorer,
            feed.sink(pipeline),
            self.telemetry,
            exchange=exchange,
            snapshotter=feed.rescorer(
                pipeline,
                exchange,
                budget.stream_quiet if budget is not None else _never,
                batch,
            ),
            on_committed=on_committed,
        )
        if budget is not None:
            self.telemetry.pipelines[pipeline.name].spending = budget.spending
        return runner


def _never() -> bool:
    return False


def _committed(runners: list[PipelineRunner]) -> Position | None:
    """The oldest position every runner has durably applied (None: not known yet)."""
    positions = [r.checkpoint.position for r in runners]
    known = [p for p in positions if p is not None]
    return oldest_position(known) if known and len(known) == len(positions) else None


def _first(group: BaseExceptionGroup[CdcScorerError]) -> CdcScorerError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, FatalError):
            return exc
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
