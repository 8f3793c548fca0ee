"""``cdc-scorer check``: what a user runs before deploying — one PASS/FAIL line per check.

Every check is a real action against the real systems: the change log's settings are read, it
is opened and read, each source table is selected from, each of the scorer's tables gets a
write that changes nothing (so missing INSERT/UPDATE/DELETE grants show), and each endpoint
answers one real call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cdc_scorer.core.errors import CdcScorerError, PositionLost, RetriableError
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Batch, Checkpoint, Op, RowChange, TableInfo
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.services.aws import create_client_context
from cdc_scorer.services.driver import build_scorer
from cdc_scorer.sources import Source
from cdc_scorer.sources.registry import source_of
from cdc_scorer.stores import Store
from cdc_scorer.stores.offsets import OffsetStore
from cdc_scorer.stores.registry import build_store


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def database_checks(spec: ScorerSpec) -> tuple[list[CheckResult], dict[str, TableInfo]]:
    store = build_store(spec.source, spec.retry)
    try:
        results = [CheckResult(*check) for check in store.check_connection()]
        if not results[0].ok:  # no connection: nothing else can be checked
            return results, {}
        return _change_log_and_tables(spec, store, results)
    finally:
        store.close()


def _change_log_and_tables(
    spec: ScorerSpec, store: OffsetStore, results: list[CheckResult]
) -> tuple[list[CheckResult], dict[str, TableInfo]]:
    source = source_of(spec, store)
    positions = _stored_positions(spec, store, source)
    settings = source.settings(resuming=bool(positions))
    for name, problem in settings:
        results.append(CheckResult(name, problem is None, problem or "ok"))
    for name, note in source.notes():
        results.append(CheckResult(name, True, note))
    if all(problem is None for _, problem in settings):
        try:
            results.append(CheckResult(source.probe_name, True, source.probe()))
        except CdcScorerError as exc:
            results.append(CheckResult(source.probe_name, False, str(exc)))
        results += _resumable(spec, source, positions)
    tables: dict[str, TableInfo] = {}
    for pipeline in spec.pipelines:
        name = f"table {pipeline.table} (pipeline {pipeline.name})"
        try:
            info = store.check_readable(pipeline)
        except CdcScorerError as exc:
            results.append(CheckResult(name, False, str(exc)))
            continue
        tables[pipeline.table] = info
        results.append(CheckResult(name, True, f"key ({', '.join(info.key_columns)}), readable"))
        try:
            for column, stored in store.prediction_storage(pipeline):
                results.append(CheckResult(f"vector {pipeline.predictions}.{column}", True, stored))
        except CdcScorerError as exc:
            results.append(CheckResult(f"vectors of {pipeline.predictions}", False, str(exc)))
    for found in source.table_checks(spec.pipelines, tables):
        results.append(CheckResult(found.name, found.problem is None, found.problem or "ok"))
    try:
        store.check_schema(spec.pipelines)
    except CdcScorerError as exc:
        results.append(CheckResult("scorer tables", False, str(exc)))
        return results, tables
    results.append(CheckResult("scorer tables", True, "present"))
    for table, problem in store.check_writes(spec.pipelines):
        detail = problem or "INSERT, UPDATE, DELETE"
        results.append(CheckResult(f"grant: write {table}", problem is None, detail))
    return results, tables


def _stored_positions(spec: ScorerSpec, store: Store, source: Source) -> dict[str, Position]:
    """Each pipeline's stored checkpoint position (none before ``init``, none where the
    positions are kept otherwise: the Kafka mode's offsets)."""
    try:
        saved = store.load_checkpoints([p.name for p in spec.pipelines], source.decode_position)
    except (CdcScorerError, ValueError):  # no checkpoint table yet, or another source's
        return {}
    found = {name: stored.checkpoint.position for name, stored in saved.items()}
    return {name: position for name, position in found.items() if position is not None}


def _resumable(
    spec: ScorerSpec, source: Source, positions: dict[str, Position]
) -> list[CheckResult]:
    """Whether each pipeline's checkpoint can be resumed here, and what ``run`` does if not."""
    results = []
    rescore = spec.source.feed.rescores_lost_position
    for name, position in positions.items():
        check = f"checkpoint of pipeline {name}"
        try:
            source.check_resumable(position)
        except PositionLost as exc:
            if rescore:
                detail = f"lost ({exc}); run streams from now and re-scores every row"
                results.append(CheckResult(check, True, detail))
            else:
                results.append(CheckResult(check, False, str(exc)))
        except CdcScorerError as exc:
            results.append(CheckResult(check, False, str(exc)))
        else:
            results.append(CheckResult(check, True, f"resumable at {position}"))
    return results


async def endpoint_checks(spec: ScorerSpec, tables: dict[str, TableInfo]) -> list[CheckResult]:
    results = []
    for pipeline in spec.pipelines:
        name = f"endpoint {pipeline.model.display_name} (pipeline {pipeline.name})"
        try:
            detail = await _call_once(spec, pipeline, tables.get(pipeline.table))
        except RetriableError as exc:
            results.append(CheckResult(name, False, f"unreachable or unavailable: {exc}"))
        except CdcScorerError as exc:
            results.append(CheckResult(name, False, str(exc)))
        else:
            results.append(CheckResult(name, True, detail))
    return results


def _give_up(stage: str, exc: RetriableError) -> None:
    """A check reports an unavailable endpoint instead of retrying for ever."""
    raise exc


async def _call_once(spec: ScorerSpec, pipeline: PipelineSpec, table: TableInfo | None) -> str:
    """One real call through the pipeline's own scorer, with one sample row."""
    values = pipeline.model.check_sample()
    if values is None:
        values = await asyncio.to_thread(_sample_row, spec, pipeline, table)
    sample = RowChange(Op.SNAPSHOT, pipeline.table, ("check",), values, None, None)
    async with create_client_context(pipeline.model.client_name, spec.aws, 1) as client:
        scorer = build_scorer(pipeline, client, spec.retry, on_retry=_give_up)
        scored = await scorer.score(Batch(0, (sample,), (), Checkpoint(None)))
    if scored.dead_letters:
        # The endpoint is up and answering; it disliked the sample, which says nothing bad.
        rejected = scored.dead_letters[0]
        return f"answered (rejected the sample: {rejected.reason}: {rejected.error[:200]})"
    answer = scored.upserts[0]
    shown = ", ".join(f"{k}={v}" for k, v in answer.columns.items())
    return f"answered {shown[:80]}"


def _sample_row(
    spec: ScorerSpec, pipeline: PipelineSpec, table: TableInfo | None
) -> dict[str, Any]:
    """One real row of the table when there is one (the model should accept it)."""
    if table is None:
        return {}
    store = build_store(spec.source, spec.retry)
    try:
        return store.sample_row(pipeline)
    except CdcScorerError:
        return {}
    finally:
        store.close()


async def run_checks(spec: ScorerSpec) -> list[CheckResult]:
    results, tables = await asyncio.to_thread(database_checks, spec)
    results.extend(await endpoint_checks(spec, tables))
    return results
