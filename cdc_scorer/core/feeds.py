"""The contract of change feeds: a source (a database's change log, or Debezium's topics)
checks that its changes can be read, tells positions and whether a stored one can be resumed,
and gives the app its feeds — each a stream of source items (row changes and transaction
boundaries, in commit order) with its checkpoint step and its re-scorer. The implementations
live in ``sources/``, registered in ``sources/registry.py``; the core never names one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.pipeline import ChunkReader
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import Checkpoint, RescoreJob, SourceItem, TableInfo
from cdc_scorer.core.rescoring import ChunkExchange
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.core.store import DaemonStore, PipelineSink, Store


@dataclass(frozen=True)
class Capture:
    """What a stream carries: each captured table with its key columns, and the columns read
    downstream (None: all; a source may leave the others undecoded)."""

    key_columns: Mapping[str, tuple[str, ...]]
    read_columns: Mapping[str, frozenset[str] | None]
    # Each captured table's columns and types as the store found them at start (a source
    # whose log describes tables itself compares: an ALTER before the first change shows).
    column_types: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceInfo:
    """The server a source reads, as preflight found it."""

    identity: str  # kept with every checkpoint: a position belongs to one history
    description: str  # for the log: the server's version


@dataclass(frozen=True)
class StreamHooks:
    """What a stream reports as it goes (the daemon's telemetry)."""

    on_connect: Callable[[], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    on_rows: Callable[[str, str, int], None] | None = None  # table, operation, rows read


@dataclass(frozen=True)
class TableCheck:
    """What a source says of the captured tables (`check` prints it; `run` stops on a fatal
    problem and logs the others)."""

    name: str
    problem: str | None  # None: fine
    fatal: bool  # the stream cannot carry the pipelines' rows as they need


@dataclass(frozen=True)
class PipelineReport:
    """A pipeline as ``status`` shows it: the lines it prints (the summary first), and the
    fields of ``status --json``."""

    pipeline: str
    lines: tuple[str, ...]
    fields: Mapping[str, object]


@dataclass(frozen=True)
class Target:
    """Where ``reposition`` moves a pipeline, as the operator named it: ``position`` (a
    position's text: ``gtid:…``, ``file:…:N``, ``lsn:…``), the source's position ``now``, or
    a partition offset in Kafka's words (``earliest``, ``latest``, ``datetime`` — an ISO
    date-time —, ``offset`` N of ``partition``). A source refuses what it cannot do."""

    to: Literal["position", "now", "earliest", "latest", "datetime", "offset"]
    value: str | None = None
    partition: int | None = None
    rescore: bool = False  # and re-score every row of the table


@dataclass(frozen=True)
class RescoreTicket:
    """A re-score asked for: its id, the rows it covers now (None: not known), what the
    command says of it, and whether its progress can be followed."""

    id: str
    rows: int | None
    said: str
    followable: bool


@dataclass(frozen=True)
class RescoreOutcome:
    job: RescoreJob | None  # the finished job (None: not followed)
    stopped: str | None = None  # the pipeline stopped meanwhile, for this reason


class Rescores(Protocol):
    """``cdc-scorer rescore`` on one source: ask, follow, cancel (blocking)."""

    def request(self, pipeline: PipelineSpec, where: str | None) -> RescoreTicket: ...

    def follow(
        self,
        pipeline: PipelineSpec,
        ticket: RescoreTicket,
        *,
        out: TextIO,
        timeout_s: float | None,
    ) -> RescoreOutcome: ...

    def cancel(self, pipeline: PipelineSpec, job_id: str, *, timeout_s: float) -> RescoreJob: ...


class ChangeStream(Protocol):
    """Source items in commit order (``tuple`` batches of one table's rows, or a boundary)."""

    def acknowledge(self, position: Position) -> None:
        """Every pipeline has durably applied ``position``: a source that keeps changes for
        its reader (a replication slot) may let go of what is before it."""

    def changes(self) -> AsyncGenerator[tuple[SourceItem, ...], None]: ...

    def stop(self) -> None:
        """Stop at the next transaction boundary; :meth:`changes` then ends."""

    def queue_depth(self) -> int:
        """Items read and not yet taken (the queue-depth gauge)."""

    def retained_bytes(self) -> int | None:
        """Change log the server keeps for this reader, as last measured (None: none is kept
        for it, or not known): the retained-bytes gauge."""


class Feed(Protocol):
    """A stream of changes for some pipelines, with what differs between change feeds: how a
    batch's commit covers its position (the checkpoint step of the sinks it gives), how a
    pipeline re-scores its table (its re-scorer), and what it takes before and after running.
    The app runs every feed alike (``app.py``)."""

    pipelines: tuple[PipelineSpec, ...]

    async def start(self, stopping: asyncio.Event) -> bool:
        """Take what running the pipelines needs (leader locks, positions, re-score claims);
        False if ``stopping`` came first (nothing is held then)."""

    @property
    def checkpoints(self) -> Mapping[str, Checkpoint]:
        """Each pipeline's checkpoint to start from (after :meth:`start`)."""

    def sink(self, pipeline: PipelineSpec) -> PipelineSink:
        """The pipeline's writer: its batches and the position they cover, in one step."""

    def rescorer(
        self,
        pipeline: PipelineSpec,
        exchange: ChunkExchange,
        stream_quiet: Callable[[], bool],
        batch: BatchService | None = None,
    ) -> ChunkReader | None:
        """What reads the pipeline's re-score chunks (None: the feed re-reads the table
        itself, its rows arriving in the stream); ``stream_quiet``: whether the model's budget
        saw no stream call within the minute (the chunks' pace, ``PipelineSpec.rescore_pace``);
        ``batch``: the model's batch jobs, for re-scores its backfill section sends there (a
        feed that re-reads the table itself cannot: config.py refuses the section for it).
        """

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Work beside the pipelines until the stop (named: a heartbeat), cancelled then."""

    def open(self) -> ChangeStream:
        """The stream from the pipelines' checkpoints (the coordinator's, once)."""

    async def finish(self, committed: Position | None) -> None:
        """Every pipeline has drained; ``committed`` is what all of them applied."""

    def close(self) -> None:
        """What :meth:`start` took, let go after a failure before the pipelines ran."""


class Source(Protocol):
    """A change log. The blocking methods open their own connections: run them in a thread."""

    probe_name: str  # `check`'s name of :meth:`probe`, e.g. "grant: binlog replication"

    def refusals(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        """Why capturing these tables would harm the application or could not carry their
        rows (each naming the table and the fix): asked before ``init`` or ``run`` change
        anything on the server, which then change nothing (blocking)."""

    def prepare(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        """`init` and `run`: what the change log needs on the server (a publication, a slot),
        made idempotently after the store's tables; the statements run. ``FatalError`` with
        the :meth:`refusals`, and nothing made, when there are some."""

    def preflight(self) -> SourceInfo:
        """The change log can be read as the scorer needs it, or ``FatalError`` naming the
        setting and its fix."""

    def settings(self, resuming: bool = False) -> list[tuple[str, str | None]]:
        """Each setting the scorer needs, with its problem and fix (None: fine) — `check`;
        ``resuming``: some pipeline has a checkpoint to resume (what is missing now was lost,
        not yet made)."""

    def notes(self) -> list[tuple[str, str]]:
        """What `check` tells beside the settings: (name, what it means), e.g. what a failover
        does with these positions."""

    def state_notes(self) -> list[tuple[str, str]]:
        """What `status` tells of the change log now, beside the pipelines (name, text): e.g.
        the WAL a replication slot keeps."""

    def probe(self) -> str:
        """Read from the change log now (proves the grants) — `check`: what was read."""

    def current_position(self) -> Position:
        """The position now: where a new pipeline starts streaming."""

    def check_resumable(self, position: Position) -> None:
        """``FatalError`` with the cause and the fix unless the stream can resume at
        ``position`` on this server."""

    def decode_position(self, server_identity: str, text: str) -> Position:
        """A checkpoint's position read back (the inverse of ``Position.encode``)."""

    def position_from(self, text: str) -> Position:
        """A position an operator names (``cdc-scorer reposition``), in this server's kind,
        completed from the server where it needs more (``FatalError`` if it names no
        transaction boundary here)."""

    def table_checks(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[TableCheck]:
        """What the change log does with the pipelines' tables: problems that would stop or
        dead-letter some pipeline's rows, each with its fix."""

    def release(self, position: Position) -> None:
        """A clean stop: every pipeline has durably applied ``position`` and the stream is
        closed (a replication slot is moved to it, not left where the last feedback put it)."""

    def open(self, start: Position, capture: Capture, hooks: StreamHooks) -> ChangeStream:
        """The stream from ``start`` (a position :meth:`check_resumable` accepted)."""

    def feeds(
        self,
        pipelines: Sequence[PipelineSpec],
        tables: Mapping[str, TableInfo],
        store: DaemonStore,
        telemetry: Observer,
    ) -> list[Feed]:
        """The feeds that carry ``pipelines`` (a database's log: one for all; Debezium's
        topics: one per pipeline)."""

    # ---------------------------------------------------------------- the admin commands
    def status(
        self, pipelines: Sequence[PipelineSpec], store: Store
    ) -> tuple[list[PipelineReport], list[tuple[str, str]]]:
        """``status``: each pipeline as its feed keeps it, and the source's own notes."""

    def reposition(self, pipeline: PipelineSpec, store: Store, target: Target) -> list[str]:
        """``reposition``: the pipeline's stored position moved to ``target`` (checked against
        the server), refused while the pipeline runs; what was done, a line each."""

    def rescores(self, store: Store) -> Rescores:
        """``rescore``: how this source re-reads a pipeline's table."""
