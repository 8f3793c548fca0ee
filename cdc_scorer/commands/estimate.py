"""``cdc-scorer rescore --estimate``: what a re-score of a pipeline's rows would cost as batch
jobs and through the real-time endpoint, counted on the table now; nothing is submitted."""

from __future__ import annotations

from typing import Any

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.errors import FatalError, PoisonError
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.stores import Store

SAMPLE_ROWS = 20_000  # rows read to measure the inputs; beyond, the sample is scaled
CHUNK_ROWS = 2_000


def batch_service(pipeline: PipelineSpec) -> BatchService | None:
    """The pipeline's batch jobs without clients: only ``record`` and ``estimate`` are used,
    nothing is called (None: its service has no batch jobs)."""
    model = pipeline.model
    if not model.batch_clients:
        return None
    return model.batch(pipeline.name, pipeline.backfill, dict.fromkeys(model.batch_clients))


def estimate(
    spec: ScorerSpec, pipeline: PipelineSpec, store: Store, where: str | None
) -> list[str]:
    """The lines ``--estimate`` prints."""
    table = store.inspect_tables([pipeline])[pipeline.table]
    chunks = store.chunks(pipeline, table)
    try:
        try:
            rows = chunks.count(where)
        except FatalError as exc:
            if where is None:
                raise
            raise FatalError(f"--where {where!r} is refused by the server: {exc}") from exc
        service = batch_service(pipeline)
        condition = f" where {where}" if where else ""
        lines = [
            f"re-score estimate for pipeline {pipeline.name} ({pipeline.table}{condition}, "
            f"{pipeline.model.display_name}); nothing is submitted",
            f"  rows: {rows:,}",
        ]
        if service is None:
            lines.append(
                f"  {pipeline.service} has no batch jobs: every row goes through the endpoint"
            )
            return lines
        read, records, characters = _measure(chunks, service, where, table.key_columns)
        scale = rows / read if read and read < rows else 1.0
        records_all = round(records * scale)
        backfill = pipeline.backfill
        per_job = min(backfill.records_per_job, service.max_records)
        jobs, tail = divmod(records_all, per_job)
        realtime_tail = 0
        if tail >= service.min_records:
            jobs += 1
        else:
            realtime_tail = tail  # too few for a job: through the endpoint
        found = service.estimate(records_all, round(characters * scale), jobs)
        sampled = (
            f" (measured on the first {read:,} rows in key order, scaled)" if scale != 1 else ""
        )
        lines += [
            f"  records: {records_all:,} (rows the model takes){sampled}",
            f"  batch jobs: {jobs:,} of up to {per_job:,} records ({service.describe})"
            + (f"; {realtime_tail:,} left over go through the endpoint" if realtime_tail else ""),
            f"  as batch jobs: {found.units:,.2f} {found.unit}",
            f"  through the endpoint: {found.realtime_units:,.2f} {found.realtime_unit}",
            f"  method: {found.method}",
            f"  mode now: backfill.mode = {backfill.mode!r}"
            + (f", batch from {backfill.min_rows:,} rows" if backfill.mode == "auto" else ""),
        ]
        price = spec.pricing.get(pipeline.model.pricing_key)
        key = pipeline.model.pricing_key
        if price is None:
            lines.append(
                f'  cost: set [pricing."{key}"] on_demand and batch (per {found.price_unit}) '
                "to see it"
            )
            return lines
        # The records left over for the endpoint cost its price, the others the batch one.
        tail_share = realtime_tail / records_all if records_all else 0.0
        batch_cost = found.units * (1 - tail_share) / found.per * price.batch
        batch_cost += found.realtime_units * tail_share / found.per * price.on_demand
        realtime_cost = found.realtime_units / found.per * price.on_demand
        lines += [
            f"  cost through the endpoint: {realtime_cost:,.4f} {price.currency} "
            f'(on_demand {price.on_demand} per {found.price_unit}, [pricing."{key}"])',
            f"  cost as batch jobs: {batch_cost:,.4f} {price.currency} "
            f"(batch {price.batch} per {found.price_unit})",
        ]
        return lines
    finally:
        chunks.close()


def _measure(
    chunks: Any, service: BatchService, where: str | None, key: tuple[str, ...]
) -> tuple[int, int, int]:
    """(rows read, records, characters of their inputs) of up to SAMPLE_ROWS rows."""
    read = records = characters = 0
    after: tuple[Any, ...] | None = None
    while read < SAMPLE_ROWS:
        rows = chunks.select(where, after, min(CHUNK_ROWS, SAMPLE_ROWS - read))
        if not rows:
            break
        read += len(rows)
        for values in rows:
            try:
                text = service.record(values)
            except PoisonError:
                continue
            records += 1
            characters += len(text)
        after = tuple(rows[-1][c] for c in key)
    return read, records, characters
