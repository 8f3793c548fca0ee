"""``cdc-scorer rescore`` on a database's own log: ask the running daemon to re-score a
pipeline's rows, and follow it.

The request is a row of the signal table; the daemon reads it from the change log (no restart, no
port to reach: an ECS service keeps running) and queues a re-score job in the pipeline's
checkpoint. Progress is read from that checkpoint row, which moves with every chunk committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.feeds import RescoreOutcome, RescoreTicket, Source
from cdc_scorer.core.own_tables import CANCEL, RESCORE
from cdc_scorer.core.records import RescoreJob, Rescores
from cdc_scorer.core.rescoring import FIRST_SNAPSHOT
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.stores import ChunkStore, Store, StoredCheckpoint

POLL_S = 0.5


def _finished(rescores: Rescores, job_id: str) -> RescoreJob | None:
    return next((j for j in rescores.finished if j.id == job_id), None)


class _Pipeline:
    """The pipeline's tables in the store, as the commands read and write them."""

    def __init__(self, source: Source, store: Store, pipeline: PipelineSpec) -> None:
        self.pipeline = pipeline
        self.store = store
        self._decode = source.decode_position
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


class LogRescores:
    """``Source.rescores`` of a database's own log: requests through the signal table, the
    job's progress from the checkpoint row."""

    def __init__(
        self, source: Source, store: Store, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._source = source
        self._store = store
        self._sleep = sleep

    def request(self, pipeline: PipelineSpec, where: str | None) -> RescoreTicket:
        request_id, rows = request(_Pipeline(self._source, self._store, pipeline), where)
        said = (
            f"re-score {request_id} of pipeline {pipeline.name} requested: {rows} rows of "
            f"{pipeline.table}{f' where {where}' if where else ''}, model version "
            f"{pipeline.model_version}"
        )
        return RescoreTicket(request_id, rows, said, followable=True)

    def follow(
        self,
        pipeline: PipelineSpec,
        ticket: RescoreTicket,
        *,
        out: TextIO,
        timeout_s: float | None,
    ) -> RescoreOutcome:
        tables = _Pipeline(self._source, self._store, pipeline)
        return follow(tables, ticket.id, ticket.rows or 0, out, timeout_s, self._sleep)

    def cancel(self, pipeline: PipelineSpec, job_id: str, *, timeout_s: float) -> RescoreJob:
        tables = _Pipeline(self._source, self._store, pipeline)
        return cancel(tables, job_id, timeout_s, self._sleep)


def request(tables: _Pipeline, where: str | None) -> tuple[str, int]:
    """Check ``where`` against the table (the server's own error if it refuses it), then put
    the request in. The request's id and the rows it covers now."""
    pipeline = tables.pipeline
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
    tables: _Pipeline,
    request_id: str,
    rows: int,
    out: TextIO,
    timeout_s: float | None,
    sleep: Callable[[float], None],
) -> RescoreOutcome:
    """Show a progress bar until the job ``request_id`` finishes (or the pipeline stops)."""
    pipeline = tables.pipeline
    told_no_daemon = False
    started = time.monotonic()
    bar = tqdm(total=rows, unit="rows", desc=f"re-score {pipeline.name}", file=out, leave=True)
    try:
        while True:
            stored = tables.stored()
            rescores = stored.checkpoint.rescores if stored is not None else None
            if stored is not None and stored.stopped_reason:
                return RescoreOutcome(None, stopped=stored.stopped_reason)
            if rescores is not None:
                ended = _finished(rescores, request_id)
                if ended is not None:
                    bar.n = ended.rows_done
                    bar.total = max(bar.total or 0, ended.rows_done)
                    bar.refresh()
                    return RescoreOutcome(ended)
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
                    "in the change log until one does",
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
    tables: _Pipeline, job_id: str, timeout_s: float, sleep: Callable[[float], None]
) -> RescoreJob:
    """End the re-score ``job_id`` (running: after the chunk under way; waiting: at once)
    through the running daemon; the job as it ended."""
    pipeline = tables.pipeline
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
                "cancelled: its rows have no predictions yet (pace it with "
                "rescore.max_rows_per_s instead)"
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
                    f"running pipeline {pipeline.name}? (the request waits in the change log)"
                )
            sleep(POLL_S)
    finally:
        tables.close()
