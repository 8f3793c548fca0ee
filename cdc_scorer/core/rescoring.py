"""Incremental snapshots (DBLog): the state of a pipeline's re-scores, and the hand-over of
chunks from the snapshotter to the stream.

The snapshotter (``snapshotter.py``) reads a key-ordered chunk between a low and a high
watermark it writes to the signal table. The pipeline's accumulator sees both watermarks in the
change log, in order with the table's changes: between them it notes every key the stream changes;
at the high watermark it takes the chunk from :class:`ChunkExchange`, drops those keys (the
stream carries a newer version of them) and adds the rest as ``Op.SNAPSHOT`` rows. The job's
cursor moves in the same checkpoint as the chunk's predictions.

Everything here is plain data and synchronous except the waits of the snapshotter side.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cdc_scorer.core.own_tables import CANCEL
from cdc_scorer.core.positions import TxId
from cdc_scorer.core.records import RescoreJob, Rescores, RowChange, Signal

FIRST_SNAPSHOT = "snapshot"  # the reason of a pipeline's first snapshot
KEEP_FINISHED = 5


def now_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


# ---------------------------------------------------------------- the jobs of one pipeline
def same_work(a: RescoreJob, b: RescoreJob) -> bool:
    """Whether ``b`` would re-score exactly what ``a`` will (a repeated request)."""
    return (a.reason, a.where, a.model_version, a.check_types, a.sweep) == (
        b.reason,
        b.where,
        b.model_version,
        b.check_types,
        b.sweep,
    )


def enqueue(rescores: Rescores, job: RescoreJob) -> Rescores:
    """``job`` runs now if none runs, else after the ones waiting; a request for work already
    waiting or running is dropped (a restart may repeat the scorer's own requests)."""
    waiting = [j for j in (rescores.running, *rescores.queued) if j is not None]
    if any(j.id == job.id or (j.reason != "requested" and same_work(j, job)) for j in waiting):
        return rescores
    if rescores.running is None:
        return replace(rescores, running=job)
    return replace(rescores, queued=(*rescores.queued, job))


def finish(
    rescores: Rescores, input_types: tuple[tuple[str, str], ...] | None, error: str | None = None
) -> Rescores:
    """The running job is done: it goes to the finished ones, the next waiting one runs."""
    assert rescores.running is not None
    done = replace(rescores.running, finished_at=now_iso(), error=error)
    queued = rescores.queued
    return Rescores(
        running=queued[0] if queued else None,
        queued=queued[1:],
        finished=(*rescores.finished, done)[-KEEP_FINISHED:],
        input_types=rescores.input_types if input_types is None else input_types,
    )


def on_request(rescores: Rescores, signal: Signal, model_version: str) -> Rescores:
    """A request read from the stream: a re-score to queue, or one to cancel."""
    if signal.kind == CANCEL:
        return cancel(rescores, str(signal.data.get("id")))
    where = signal.data.get("where")
    job = RescoreJob(
        id=signal.id,
        reason=str(signal.data.get("reason") or "requested"),
        model_version=model_version,
        where=None if where is None else str(where),
        requested_at=now_iso(),
    )
    return enqueue(rescores, job)


def on_alter(rescores: Rescores, tx: TxId | None, model_version: str) -> Rescores:
    """An ALTER TABLE read from the stream: a job that re-scores if an input's type changed
    (its id is the transaction's, so a replay of the ALTER queues nothing twice)."""
    job = RescoreJob(
        id=f"alter {tx}",
        reason="ALTER TABLE",
        model_version=model_version,
        check_types=rescores.input_types,
        requested_at=now_iso(),
    )
    return enqueue(rescores, job)


def advance(rescores: Rescores, chunk: Chunk, kept: int) -> Rescores:
    """The running job after ``kept`` rows of ``chunk`` joined the stream (finished after its
    last chunk); for a sweep chunk, ``kept`` of its orphans were removed (the sweep done after
    its last chunk, the rows still to come)."""
    job = rescores.running
    assert job is not None and job.id == chunk.job_id
    if chunk.orphans is not None:
        job = replace(
            job,
            sweep_cursor=chunk.cursor if chunk.cursor is not None else job.sweep_cursor,
            swept=chunk.last,
            orphans_removed=job.orphans_removed + kept,
            rows_total=job.rows_total if chunk.rows_total is None else chunk.rows_total,
        )
        return replace(rescores, running=job)
    job = replace(
        job,
        cursor=chunk.cursor if chunk.cursor is not None else job.cursor,
        rows_done=job.rows_done + kept,
        rows_total=job.rows_total if chunk.rows_total is None else chunk.rows_total,
    )
    rescores = replace(rescores, running=job)
    return finish(rescores, chunk.input_types, chunk.error) if chunk.last else rescores


def cancel(rescores: Rescores, job_id: str) -> Rescores:
    """The job ``job_id`` ends now, as cancelled: the running one (the next waiting one runs)
    or a waiting one. The first snapshot is not cancelled (the command refuses it)."""
    running = rescores.running
    if running is not None and running.id == job_id and running.reason != FIRST_SNAPSHOT:
        return finish(rescores, None, "cancelled")
    for job in rescores.queued:
        if job.id == job_id and job.reason != FIRST_SNAPSHOT:
            cancelled = replace(job, finished_at=now_iso(), error="cancelled")
            return replace(
                rescores,
                queued=tuple(j for j in rescores.queued if j.id != job_id),
                finished=(*rescores.finished, cancelled)[-KEEP_FINISHED:],
            )
    return rescores


def snapshot_state(state: str, rescores: Rescores) -> str:
    """The first snapshot's state: running while its job runs or waits, then done — or
    failed, when its job ended with an error (e.g. its batch jobs were refused: the rows have
    no predictions; `rescore` scores them once the cause is fixed)."""
    jobs = [j for j in (rescores.running, *rescores.queued) if j is not None]
    if any(j.reason == FIRST_SNAPSHOT for j in jobs):
        return "running"
    if state != "running":
        return state
    ended = next((j for j in reversed(rescores.finished) if j.reason == FIRST_SNAPSHOT), None)
    return "failed" if ended is not None and ended.error else "done"


def remaining_rows(rescores: Rescores) -> int:
    """Rows the running job still has to read (as counted when it started)."""
    job = rescores.running
    if job is None or job.rows_total is None:
        return 0
    return max(0, job.rows_total - job.rows_done)


# ---------------------------------------------------------------- stored as JSON
def job_dict(job: RescoreJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "reason": job.reason,
        "model_version": job.model_version,
        "where": job.where,
        "cursor": None if job.cursor is None else [_cursor_value(v) for v in job.cursor],
        "rows_done": job.rows_done,
        "rows_total": job.rows_total,
        "check_types": None if job.check_types is None else dict(job.check_types),
        "requested_at": job.requested_at,
        "finished_at": job.finished_at,
        "error": job.error,
        "sweep": job.sweep,
        "sweep_cursor": (
            None if job.sweep_cursor is None else [_cursor_value(v) for v in job.sweep_cursor]
        ),
        "swept": job.swept,
        "orphans_removed": job.orphans_removed,
    }


def _cursor_value(value: Any) -> Any:
    """A key part as JSON: a binary key (``BINARY(16)`` ids) as its hex, tagged, so that the
    chunk after a restart compares bytes with bytes; a date or a decimal compares as its text."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def _cursor_part(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def _job(data: dict[str, Any]) -> RescoreJob:
    cursor, types = data.get("cursor"), data.get("check_types")
    swept_to = data.get("sweep_cursor")
    return RescoreJob(
        id=str(data["id"]),
        reason=str(data["reason"]),
        model_version=data.get("model_version"),
        where=data.get("where"),
        cursor=None if cursor is None else tuple(map(_cursor_part, cursor)),
        rows_done=int(data.get("rows_done") or 0),
        rows_total=data.get("rows_total"),
        check_types=None if types is None else tuple(types.items()),
        requested_at=data.get("requested_at"),
        finished_at=data.get("finished_at"),
        error=data.get("error"),
        sweep=bool(data.get("sweep")),
        sweep_cursor=None if swept_to is None else tuple(map(_cursor_part, swept_to)),
        swept=bool(data.get("swept")),
        orphans_removed=int(data.get("orphans_removed") or 0),
    )


def encode_rescores(rescores: Rescores) -> str | None:
    if rescores == Rescores():
        return None
    return json.dumps(
        {
            "running": None if rescores.running is None else job_dict(rescores.running),
            "queued": [job_dict(j) for j in rescores.queued],
            "finished": [job_dict(j) for j in rescores.finished],
            "input_types": dict(rescores.input_types),
        },
        default=str,  # keys of any type: a date or a decimal key is compared as its text
    )


def decode_rescores(text: str | None) -> Rescores:
    if not text:
        return Rescores()
    data = json.loads(text)
    running = data.get("running")
    return Rescores(
        running=None if running is None else _job(running),
        queued=tuple(_job(j) for j in data.get("queued", ())),
        finished=tuple(_job(j) for j in data.get("finished", ())),
        input_types=tuple((data.get("input_types") or {}).items()),
    )


# ---------------------------------------------------------------- snapshotter → stream
@dataclass(frozen=True)
class Chunk:
    """Rows of one chunk as read between its watermarks (id ``id``)."""

    id: str
    job_id: str
    rows: tuple[RowChange, ...]
    cursor: tuple[Any, ...] | None  # the last key read (the job's cursor once applied)
    last: bool  # the job has no more rows
    rows_total: int | None  # the job's row count, when this chunk's read counted it
    input_types: tuple[tuple[str, str], ...] | None = None  # seen by an ALTER's check
    error: str | None = None  # the job ends without re-scoring, for this reason
    # A sweep chunk (no rows): the keys of predictions whose source row was not there when
    # the chunk was read; ``cursor`` the last predictions key read, ``last`` the sweep done.
    orphans: tuple[tuple[Any, ...], ...] | None = None


# Merged chunks not yet committed when the next is read (2 gave the stream nothing, measured).
CHUNKS_AHEAD = 1


class ChunkExchange:
    """Between one pipeline's snapshotter and its accumulator.

    The accumulator side (:meth:`open`, :meth:`touched`, :meth:`close`, :meth:`job_changed`)
    never waits; the snapshotter side waits for a job and for its chunk to be taken.
    """

    def __init__(self) -> None:
        self._expected: str | None = None  # the chunk whose watermarks are being written
        self._chunk: Chunk | None = None
        self.window_open = False  # the stream is between the expected chunk's watermarks
        self._touched: set[tuple[Any, ...]] = set()
        self._all_touched = False
        self._taken = asyncio.Event()
        self._job: RescoreJob | None = None
        self._job_changed = asyncio.Event()
        # The batches whose commits make the merged chunks durable (each checkpoint carries
        # its chunk's cursor): a chunk is read only while fewer than CHUNKS_AHEAD merged ones
        # wait for theirs, so a re-score keeps little of its rows ahead of the stream's.
        self._durable_at: collections.deque[int] = collections.deque()
        self._durable = asyncio.Event()
        self._durable.set()

    # ---- accumulator side
    def job_changed(self, job: RescoreJob | None) -> None:
        """The running job as the accumulator's checkpoint now holds it."""
        if job is None or self._job is None or job.id != self._job.id:
            self._job = job
            self._job_changed.set()

    def open(self, chunk_id: str) -> None:
        if chunk_id == self._expected:
            self.window_open = True
            self._touched, self._all_touched = set(), False

    def touched(self, key: tuple[Any, ...]) -> None:
        self._touched.add(key)

    def emptied(self) -> None:
        """The table was truncated inside the window: none of the chunk's rows exists now."""
        self._all_touched = True

    def close(self, chunk_id: str) -> tuple[Chunk, frozenset[tuple[Any, ...]]] | None:
        """The chunk whose high watermark the stream reached, with the keys the stream changed
        inside its window; None for watermarks of another run (replayed after a restart)."""
        if chunk_id != self._expected or self._chunk is None or not self.window_open:
            return None
        chunk = self._chunk
        touched = (
            frozenset(r.key for r in chunk.rows) if self._all_touched else frozenset(self._touched)
        )
        self._expected, self._chunk, self.window_open, self._touched = None, None, False, set()
        self._taken.set()
        return chunk, touched

    def merged(self, batch_sequence: int) -> None:
        """The chunk just merged is durable once batch ``batch_sequence`` has committed."""
        self._durable_at.append(batch_sequence)
        if len(self._durable_at) >= CHUNKS_AHEAD:
            self._durable.clear()

    def committed(self, batch_sequence: int) -> None:
        """Batch ``batch_sequence`` (and every one before it) has committed."""
        waiting = self._durable_at
        while waiting and waiting[0] <= batch_sequence:
            waiting.popleft()
        if len(waiting) < CHUNKS_AHEAD:
            self._durable.set()

    # ---- snapshotter side
    async def durable(self) -> None:
        """Until fewer than CHUNKS_AHEAD merged chunks wait for their commit (or the job
        changed)."""
        while not self._durable.is_set():
            self._job_changed.clear()
            waiting = asyncio.ensure_future(self._durable.wait())
            changed = asyncio.ensure_future(self._job_changed.wait())
            try:
                await asyncio.wait((waiting, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                changed.cancel()
            if changed.done() and not waiting.done():
                return  # the job changed (cancelled, finished, another one): read on

    async def next_job(self, after: str | None) -> RescoreJob:
        """The running job, once there is one other than ``after`` (the last one worked on)."""
        while self._job is None or self._job.id == after:
            self._job_changed.clear()
            await self._job_changed.wait()
        return self._job

    def current_job(self) -> RescoreJob | None:
        return self._job

    def expect(self, chunk_id: str) -> None:
        """A chunk's low watermark is about to be written."""
        self._expected, self._chunk, self.window_open = chunk_id, None, False
        self._taken.clear()

    def deposit(self, chunk: Chunk) -> None:
        """The chunk is read; its high watermark is written next."""
        assert chunk.id == self._expected
        self._chunk = chunk

    async def taken(self) -> None:
        """Until the accumulator has merged the deposited chunk into the stream."""
        await self._taken.wait()
