"""``cdc-scorer rescore``: ask the running daemon to re-score a pipeline's rows, and follow it.

The request is a row of the signal table; the daemon reads it from the change log (no restart, no
port to reach: an ECS service keeps running) and queues a re-score job in the pipeline's
checkpoint. Progress is read from that checkpoint row, which moves with every chunk committed.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.own_tables import CANCEL, RESCORE
from cdc_scorer.core.records import RescoreJob, Rescores
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources.registry import build_source
from cdc_scorer.stores import ChunkStore, Store, StoredCheckpoint
from cdc_scorer.stores.registry import build_store

POLL_S = 0.5


@dataclass(frozen=True)
class Outcome:
    job: RescoreJob | None  # the finished job (None: not followed)
    stopped: str | None = None  # the pipeline stopped meanwhile, for this reason


def _finished(rescores: Rescores, job_id: str) -> RescoreJob | None:
    return next((j for j in rescores.finished if j.id == job_id), None)


def find_pipeline(spec: ScorerSpec, name: str) -> PipelineSpec:
    for pipeline in spec.pipelines:
        if pipeline.name == name:
            return pipeline
    names = ", ".join(p.name for p in spec.pipelines)
    raise FatalError(f"--pipeline {name}: no such pipeline in the config (it has: {names})")


class _Pipeline:
    """The pipeline's tables in the store, as the commands read and write them."""

    def __init__(self, spec: ScorerSpec, pipeline: PipelineSpec) -> None:
        self.pipeline = pipeline
        self.store: Store = build_store(spec.source, spec.retry)
        self._decode = build_source(spec.source, spec.retry).decode_position
        self._chunks: ChunkStore | None = None

    def stored(self) -> StoredCheckpoint | None:
        name = self.pipeline.name
        return self.store.load_checkpoints([name], self._decode).get(name)

    def chunks(self) -> ChunkStore:
        if self._chunks is None:
            table = self.store.inspect_tables([self.pipeline])[self.pipeline.table]
            self._chunks = self.store.chunks(self.pipeline, table)
        return self._chunks

    def signal(self, kind: str, data: dict[str, str | None]) -> str:
        """A request row in the signal table: the daemon reads it from the stream. Its id."""
        request_id = uuid.uuid4().hex
        self.chunks().signal(request_id, self.pipeline.name, kind, data)
        return request_id

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks.close()
        self.store.close()


def request(spec: ScorerSpec, pipeline: PipelineSpec, where: str | None) -> tuple[str, int]:
    """Check ``where`` against the table (the server's own error if it refuses it), then put
    the request in. The request's id and the rows it covers now."""
    tables = _Pipeline(spec, pipeline)
    try:
        if tables.stored() is None:
            # Its first start would not read the request (it streams from then on), and its
            # first snapshot scores every row anyway.
            raise FatalError(
                f"pipeline {pipeline.name} has not run yet: start the daemon (its first "
                "snapshot scores every row), then ask for re-scores"
            )
        try:
            rows = tables.chunks().count(where)
        except FatalError as exc:
            if where is None:
                raise
            raise FatalError(f"--where {where!r} is refused by the server: {exc}") from exc
        return tables.signal(RESCORE, {"where": where, "reason": "requested"}), rows
    finally:
        tables.close()


def follow(
    spec: ScorerSpec,
    pipeline: PipelineSpec,
    request_id: str,
    rows: int,
    *,
    out: TextIO = sys.stderr,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Show a progress bar until the job ``request_id`` finishes (or the pipeline stops)."""
    tables = _Pipeline(spec, pipeline)
    told_no_daemon = False
    started = time.monotonic()
    bar = tqdm(total=rows, unit="rows", desc=f"re-score {pipeline.name}", file=out, leave=True)
    try:
        while True:
            stored = tables.stored()
            rescores = stored.checkpoint.rescores if stored is not None else None
            if stored is not None and stored.stopped_reason:
                return Outcome(None, stopped=stored.stopped_reason)
            if rescores is not None:
                ended = _finished(rescores, request_id)
                if ended is not None:
                    bar.n = ended.rows_done
                    bar.total = max(bar.total or 0, ended.rows_done)
                    bar.refresh()
                    return Outcome(ended)
                running = rescores.running
                if running is not None and running.id == request_id:
                    if running.rows_total is not None:
                        bar.total = running.rows_total
                    bar.n = running.rows_done
                    bar.set_postfix_str("")
                    bar.refresh()
                elif any(j.id == request_id for j in rescores.queued):
                    bar.set_postfix_str("waiting behind another re-score")
            if not told_no_daemon and tables.store.leader(pipeline) is None:
                bar.write(
                    f"no cdc-scorer is running pipeline {pipeline.name} now: the request waits "
                    "in the binlog until one does",
                    file=out,
                )
                told_no_daemon = True
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise FatalError(f"re-score {request_id} not done after {timeout_s:.0f} s")
            sleep(POLL_S)
    finally:
        bar.close()
        tables.close()


def cancel(
    spec: ScorerSpec,
    pipeline: PipelineSpec,
    job_id: str,
    *,
    timeout_s: float = 60,
    sleep: Callable[[float], None] = time.sleep,
) -> RescoreJob:
    """End the re-score ``job_id`` (running: after the chunk under way; waiting: at once)
    through the running daemon; the job as it ended."""
    tables = _Pipeline(spec, pipeline)
    try:
        stored = tables.stored()
        rescores = stored.checkpoint.rescores if stored is not None else None
        jobs = [] if rescores is None else [rescores.running, *rescores.queued]
        job = next((j for j in jobs if j is not None and j.id == job_id), None)
        if job is None:
            raise FatalError(
                f"--cancel {job_id}: no such re-score is running or waiting for pipeline "
                f"{pipeline.name} (`cdc-scorer status` lists them)"
            )
        if job.reason == FIRST_SNAPSHOT:
            raise FatalError(
                f"--cancel {job_id}: the first snapshot of pipeline {pipeline.name} is not "
                'cancelled (to go without it: snapshot = "never", and delete the pipeline\'s '
                "checkpoint row)"
            )
        request = tables.signal(CANCEL, {"id": job_id})
        deadline = time.monotonic() + timeout_s
        while True:
            stored = tables.stored()
            ended = None if stored is None else _finished(stored.checkpoint.rescores, job_id)
            if ended is not None:
                tables.chunks().forget([request, job_id])
                return ended
            if time.monotonic() > deadline:
                raise FatalError(
                    f"re-score {job_id} not cancelled after {timeout_s:.0f} s: is a cdc-scorer "
                    f"running pipeline {pipeline.name}? (the request waits in the binlog)"
                )
            sleep(POLL_S)
    finally:
        tables.close()
