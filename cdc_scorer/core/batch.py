"""The contract of batch model services (a backfill's jobs: Bedrock batch inference, SageMaker
Batch Transform), as the core's backfill (``backfill.py``) drives them: write a job's records
where the service reads them, submit it idempotently, follow its state, read its answers by
record, stop it. A model section offers one through ``ModelSpec.batch``; the implementations
live in ``services/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

# A job's states in the core's words (each service maps its own onto these).
PREPARED = "prepared"  # its row is written, its input maybe; not known to be submitted
SUBMITTED = "submitted"  # the service has it (waiting, validating, running)
DONE = "done"  # the service finished it: every record answered (some perhaps with errors)
ENDED = "ended"  # it ended short (failed, stopped, expired): unanswered records go real-time
MERGED = "merged"  # its answers are written (or given up): nothing more to do
REALTIME = "realtime"  # too few rows for a job: they go through the real-time path
ABANDONED = "abandoned"  # its re-score ended or changed (a new model version): stopped
FINISHED = (MERGED, ABANDONED)


@dataclass(frozen=True)
class BatchJob:
    """One batch job of a re-score: a row of the scorer's own job table, written before the
    job is submitted (its name and token derive from it: a retried submission is the same
    job), kept until the re-score ends."""

    pipeline: str
    rescore_id: str
    sequence: int  # the job's place in its re-score: ranges are merged in this order
    name: str  # the service's job name (deterministic)
    token: str  # the idempotency token of its submission (deterministic)
    after: tuple[Any, ...] | None  # its range of keys: after this one (None: from the start)
    last: tuple[Any, ...]  # through this one
    records: int
    final: bool  # the last range of the re-score
    state: str = PREPARED
    arn: str | None = None  # the service's id of it, once submitted
    input_uri: str | None = None
    output_uri: str | None = None
    service_state: str | None = None  # in the service's words
    message: str | None = None  # the service's, when it ended short
    processed: int = 0
    failed: int = 0
    # What the merge did: rows written with the job's answer, rows the stream changed since
    # (its prediction stands), rows sent through the real-time path, dead letters.
    answered: int = 0
    superseded: int = 0
    realtime: int = 0
    dead: int = 0
    submitted_at: str | None = None
    updated_at: str | None = None
    model_version: str | None = None

    def encode(self) -> str:
        data = {k: getattr(self, k) for k in _FIELDS}
        data["after"] = None if self.after is None else key_json(self.after)
        data["last"] = key_json(self.last)
        return json.dumps(data, default=str)

    @staticmethod
    def decode(text: str) -> BatchJob:
        data = json.loads(text)
        after, last = data.pop("after"), data.pop("last")
        known = {k: v for k, v in data.items() if k in _FIELDS}
        return BatchJob(
            after=None if after is None else key_from_json(after),
            last=key_from_json(last),
            **known,
        )

    def moved(self, **changes: Any) -> BatchJob:
        return replace(self, **changes)


_FIELDS = tuple(f for f in BatchJob.__dataclass_fields__ if f not in ("after", "last"))


def key_json(key: Sequence[Any]) -> list[Any]:
    """A key as JSON: a binary part as its hex, tagged (bytes compare with bytes after a
    restart); a date or a decimal as its text."""
    return [{"hex": v.hex()} if isinstance(v, bytes) else v for v in key]


def key_from_json(parts: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        bytes.fromhex(p["hex"]) if isinstance(p, dict) and set(p) == {"hex"} else p for p in parts
    )


def key_text(key: Sequence[Any]) -> str:
    """A key as the text a job's records are matched by (the same for the same key read
    again: a date, a decimal as its text)."""
    return json.dumps(key_json(key), default=str, separators=(",", ":"))


@dataclass(frozen=True)
class JobProgress:
    """A job's state as the service reports it."""

    state: str  # SUBMITTED, DONE or ENDED
    service_state: str  # in the service's words
    message: str | None = None
    total: int = 0
    processed: int = 0
    failed: int = 0


@dataclass(frozen=True)
class RecordResult:
    """A job's answer for one record: its input as the service got it (compared with the row
    now), and its prediction columns, or why it has none — ``retry``: not the row's fault
    (not processed, an internal error): it goes through the real-time path; else a dead
    letter with ``reason``."""

    input: str
    columns: Mapping[str, Any] | None
    reason: str = ""
    error: str = ""
    retry: bool = False


@dataclass(frozen=True)
class Estimate:
    """What a backfill's records would use, both ways (``rescore --estimate``): ``units`` as
    batch jobs, ``realtime_units`` through the endpoint; prices are per ``per`` units."""

    records: int
    jobs: int
    units: float  # input tokens (Bedrock), instance-hours of transform jobs (SageMaker)
    unit: str
    method: str  # how ``units`` was estimated
    realtime_units: float  # the same records through the real-time endpoint
    realtime_unit: str
    per: int = 1  # the prices' quantity: 1,000 input tokens, 1 instance-hour
    price_unit: str = "unit"  # what a price is for, e.g. "1,000 input tokens"


class BatchService(Protocol):
    """One pipeline's batch jobs on its model service."""

    describe: str  # e.g. "Bedrock batch inference of amazon.titan-embed-text-v2:0"
    min_records: int  # a job of fewer records is refused by the service
    max_records: int

    def record(self, values: Mapping[str, Any]) -> str:
        """A row's record input as text, exactly as a job's results give it back (what the
        merge compares); ``PoisonError`` for a row the service cannot take."""

    async def submit(self, job: BatchJob, records: Sequence[tuple[str, str]]) -> BatchJob:
        """Write the job's records (key text, record input) where the service reads them —
        unless they were written before (a job's input never changes once written: the job
        may be running on it) — and submit it with its name and token (the same job if it
        was submitted before); the job with its ARN and URIs. ``FatalError`` when the
        service refuses it for a setting (the role, the bucket, a quota), naming the
        setting."""

    async def progress(self, job: BatchJob) -> JobProgress: ...

    async def results(self, job: BatchJob) -> Mapping[str, RecordResult]:
        """Every record of the job by key text: answered, failed, or not processed."""

    async def stop(self, job: BatchJob) -> None:
        """Stop a job still running (nothing if it ended)."""

    def estimate(self, records: int, characters: int, jobs: int) -> Estimate:
        """What ``records`` records of ``characters`` characters in all (their inputs as
        :meth:`record` writes them) would use as ``jobs`` jobs, and through the endpoint."""
