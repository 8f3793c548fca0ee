"""The fenced writer every dialect's sink is: one pipeline's scored batches, in order, each in
ONE transaction with the checkpoint that covers it, through a connection that holds the
pipeline's leader lock.

If that connection dies the lock goes with it; a new connection must win the lock again and
find the checkpoint as this process left it before it writes anything — otherwise another
instance has scored meanwhile and this one stops (fencing). A dialect adds its SQL only.

The pipelines of a process share a few such connections (:class:`WriterConnection`, a store
hands them out): each sink holds its own lock on the connection it commits through, the
sinks take turns on it, and a lost connection makes every sink on it fence again. Batches of
several pipelines waiting for the same connection commit together, in one transaction (a group
commit: 100 pipelines' one-row batches cost a few commits, not 100); if that transaction fails,
each batch is written again on its own, so one pipeline's failure stays its own.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from cdc_scorer.core.errors import CdcScorerError, FatalError
from cdc_scorer.core.records import Checkpoint, ScoredBatch
from cdc_scorer.core.rescoring import encode_rescores
from cdc_scorer.core.retry import retrying
from cdc_scorer.core.spec import PipelineSpec, RetrySpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.stores import OnRetry, PositionDecoder, StoredCheckpoint

log = structlog.get_logger("cdc_scorer.stores.fenced")

ConnectionT = TypeVar("ConnectionT")


def checkpoint_row(name: str, checkpoint: Checkpoint, identity: str) -> tuple[Any, ...]:
    """A checkpoint as its row's values (also what a fenced sink compares)."""
    return (
        name,
        checkpoint.position.encode() if checkpoint.position else None,
        identity,
        checkpoint.snapshot_state,
        encode_rescores(checkpoint.rescores),
    )


class WriterConnection(Generic[ConnectionT]):
    """One database connection the sinks of several pipelines commit through, a transaction at
    a time: a sink writes while holding :attr:`turn` (and waits for it on the event loop,
    :attr:`queue`, not in a thread). ``generation`` counts the connections made: a sink fenced
    on an older one fences again before it writes."""

    def __init__(
        self, open_: Callable[[], ConnectionT], close: Callable[[ConnectionT | None], None]
    ) -> None:
        self._open = open_
        self._close = close
        self._conn: ConnectionT | None = None
        self.generation = 0
        self.turn = threading.Lock()  # taken by the thread that uses the connection
        self._queue: asyncio.Lock | None = None
        self._users = 0
        # Batches waiting for the connection, in the order their sinks asked (the queue's).
        self.pending: deque[_Write] = deque()
        self.turns: set[asyncio.Future[None]] = set()  # group writes under way (kept alive)

    @property
    def queue(self) -> asyncio.Lock:
        if self._queue is None:
            self._queue = asyncio.Lock()
        return self._queue

    def current(self) -> tuple[int, ConnectionT]:
        """The connection (made now if there is none) and its generation; hold :attr:`turn`."""
        if self._conn is None:
            self._conn = self._open()
            self.generation += 1
        return self.generation, self._conn

    def alive(self, generation: int) -> ConnectionT | None:
        """The connection if it is still generation ``generation``; hold :attr:`turn`."""
        return self._conn if self.generation == generation else None

    def drop(self) -> None:
        """After a failure (its transaction state unknown), or when no sink uses it: closed;
        the locks held on it go with it. Hold :attr:`turn`."""
        conn, self._conn = self._conn, None
        self._close(conn)

    def attach(self) -> None:
        self._users += 1

    def detach(self) -> None:
        """A sink is done with it; the last one closes it. Hold :attr:`turn`."""
        self._users -= 1
        if self._users <= 0:
            self._users = 0
            self.drop()

    def take(self) -> list[_Write]:
        """The batches one transaction writes: the oldest waiting, and those behind it while
        the transaction stays moderate (the first alone however big it is)."""
        group = [self.pending.popleft()]
        rows = group[0].rows
        while self.pending and len(group) < GROUP_BATCHES:
            rows += self.pending[0].rows
            if rows > GROUP_ROWS:
                break
            group.append(self.pending.popleft())
        return group


class _Abandoned(Exception):
    """A batch whose sink stopped waiting: not tried again."""


@dataclass(eq=False)
class _Write:
    """A batch waiting for its writer connection; ``done`` is set when it committed (or failed:
    then with the error its sink raises)."""

    sink: FencedSink[Any]
    batch: ScoredBatch
    done: asyncio.Future[None] = field(init=False)
    abandoned: bool = False  # its sink stopped waiting (cancelled)

    def __post_init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        # Its sink may be gone (its pipeline stopped while it waited): the outcome is then
        # nobody's, and not an "exception never retrieved".
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    @property
    def rows(self) -> int:
        b = self.batch
        return len(b.upserts) + len(b.deletes) + len(b.dead_letters)


# A group commit's bounds: a transaction of many pipelines' batches stays short enough that no
# one waits long behind it, and small enough that a failure costs little to write again.
GROUP_BATCHES = 200
GROUP_ROWS = 2_000


# Connections a process's sinks write through, whatever its number of pipelines: two, so one
# pipeline's long transaction (a big UPDATE's batches) leaves the others a connection.
WRITER_CONNECTIONS = 2


class WriterPool(Generic[ConnectionT]):
    """The writer connections of a store, handed to its sinks in turn."""

    def __init__(
        self,
        open_: Callable[[], ConnectionT],
        close: Callable[[ConnectionT | None], None],
        size: int = WRITER_CONNECTIONS,
    ) -> None:
        self._writers = [WriterConnection(open_, close) for _ in range(size)]
        self._handed = 0

    def next(self) -> WriterConnection[ConnectionT]:
        writer = self._writers[self._handed % len(self._writers)]
        self._handed += 1
        return writer


class FencedSink(ABC, Generic[ConnectionT]):
    def __init__(
        self,
        pipeline: PipelineSpec,
        server_identity: str,
        retry: RetrySpec,
        on_retry: OnRetry | None = None,
        *,
        lock: str,
        decode: PositionDecoder,
        step: PositionStep | None = None,
        writer: WriterConnection[ConnectionT] | None = None,
    ) -> None:
        self.lock = lock
        # The connection it commits through: shared with other pipelines' sinks, or its own.
        self._writer: WriterConnection[ConnectionT] = (
            writer if writer is not None else WriterConnection(self._open, self._close)
        )
        self._attached = False
        self._fenced_on: int | None = None  # the writer's generation our lock is held on
        # A feed that keeps its positions otherwise (Debezium's: each partition's offset, moved
        # by compare-and-set): no leader lock and no checkpoint row to fence on.
        self._step = step
        self._pipeline = pipeline
        self._identity = server_identity
        self._retry = retry
        self._on_retry = on_retry
        self._decode = decode
        self._leading = False
        self._written: tuple[Any, ...] | None = None  # the checkpoint row we last committed
        self._attempted: tuple[Any, ...] | None = None  # the one of a commit under way
        self._failed: Exception | None = None  # a batch's write failed: no later one is written

    # ---------------------------------------------------------------- the dialect's part
    @abstractmethod
    def _open(self) -> ConnectionT: ...

    @abstractmethod
    def _close(self, conn: ConnectionT | None) -> None: ...

    @abstractmethod
    def _errors(self, doing: str) -> AbstractContextManager[None]:
        """The database library's boundary: its errors leave as ours."""

    @abstractmethod
    def _try_lock(self, conn: ConnectionT, wait_s: float) -> bool: ...

    @abstractmethod
    def _release_lock(self, conn: ConnectionT) -> None:
        """Let the leader lock go on a connection other sinks go on using."""

    @abstractmethod
    def _stored(self, conn: ConnectionT) -> StoredCheckpoint | None: ...

    @abstractmethod
    def _record_stop(self, conn: ConnectionT, reason: str) -> None: ...

    def _before(self, conn: ConnectionT, batch: ScoredBatch) -> None:
        """What must run before the batch's transaction, committing on its own (MySQL's DDL);
        run again if the transaction is replayed, so idempotent."""

    @abstractmethod
    def _begin(self, conn: ConnectionT) -> None: ...

    @abstractmethod
    def _statements(
        self, conn: ConnectionT, batch: ScoredBatch, row: tuple[Any, ...] | None
    ) -> None:
        """The batch's writes and its checkpoint row ``row`` inside an open transaction (with
        :meth:`_checkpoint_step` last); other pipelines' batches may share the transaction."""

    @abstractmethod
    def _commit(self, conn: ConnectionT) -> None:
        """Commit. (A failed transaction is never rolled back here: its connection is closed,
        which rolls it back.)"""

    def _checkpoint_step(self, cursor: Any, statement: str, batch: ScoredBatch, row: Any) -> None:
        """The batch's last step: the checkpoint row, or the feed's own step (none for a batch
        followed by another of this pipeline in the same transaction: ``row`` is None)."""
        if row is None:
            return
        if self._step is not None:
            self._step.advance(cursor, batch.checkpoint.position)
        else:
            cursor.execute(statement, row)

    # ---------------------------------------------------------------- the fence
    async def write(self, batches: Sequence[ScoredBatch]) -> None:
        """The batches, in order, committed with their checkpoints: together in a transaction
        (with other pipelines' batches waiting for the same connection too) while it stays
        moderate; only the last of a transaction carries this pipeline's checkpoint, which
        covers the batches before it."""
        writer = self._writer
        entries = [_Write(self, batch) for batch in batches]
        writer.pending.extend(entries)
        try:
            async with writer.queue:  # the sinks sharing the connection take turns here
                while any(entry in writer.pending for entry in entries):
                    # The oldest batches waiting are ours or before ours: a turn writes them.
                    group = writer.take()
                    # Shielded: other pipelines' batches are in it, and a cancelled sink (its
                    # pipeline stopped) must not take their commits down with it.
                    turn = asyncio.ensure_future(_write_group(group))
                    writer.turns.add(turn)
                    turn.add_done_callback(writer.turns.discard)
                    await asyncio.shield(turn)
            for entry in entries:
                await asyncio.shield(entry.done)  # written by our turns or earlier ones
        except asyncio.CancelledError:
            # Not written again if their group fails (what a turn has begun may still commit,
            # as a transaction under way in a thread always could).
            for entry in entries:
                entry.abandoned = True
            raise
        finally:
            for entry in entries:
                if not entry.done.done() and entry in writer.pending:
                    writer.pending.remove(entry)  # cancelled while waiting: nobody writes it

    def try_lead(self, wait_s: float) -> bool:
        """Try to take the leader lock for up to ``wait_s`` (blocking; run in a thread)."""
        if self._step is not None:
            self._leading = True
            return True
        writer = self._writer
        with writer.turn:
            self._attach()
            try:
                generation, conn = writer.current()
                self._leading = self._try_lock(conn, wait_s)
            except BaseException:
                writer.drop()
                raise
            if self._leading:
                self._fenced_on = generation
        return self._leading

    def expect(self, checkpoint: Checkpoint) -> None:
        """The checkpoint the table holds now; a reconnect must find what we wrote last."""
        self._written = checkpoint_row(self._pipeline.name, checkpoint, self._identity)

    def _attach(self) -> None:
        if not self._attached:
            self._writer.attach()
            self._attached = True

    def _connection(self) -> ConnectionT:
        """The writer's connection, this pipeline's lock held on it (fenced again on a new
        one). Hold the writer's turn."""
        assert self._leading, "try_lead() first"
        self._attach()
        generation, conn = self._writer.current()
        if self._step is not None or self._fenced_on == generation:
            return conn
        name = self._pipeline.name
        if not self._try_lock(conn, 0):
            raise FatalError(
                f"lost the leader lock {self.lock}: another instance is scoring pipeline "
                f"{name}; this one stops (restart it to run as a standby)"
            )
        self._fenced_on = generation
        found = self._stored(conn)
        row = (
            None if found is None else checkpoint_row(name, found.checkpoint, found.server_identity)
        )
        # A commit whose answer was lost may have landed: the retried batch is idempotent.
        if row not in (self._written, self._attempted):
            raise FatalError(
                f"the checkpoint of pipeline {name} changed while this instance was "
                "disconnected: another instance scored it; this one stops (restart it to "
                "resume from the new checkpoint)"
            )
        return conn

    def stopped(self, reason: str) -> None:
        """Record why the pipeline stopped (for `status`), through the fenced connection."""
        with self._writer.turn:
            try:
                with self._errors(f"recording that {self._pipeline.name} stopped"):
                    self._record_stop(self._connection(), reason)
            except BaseException:
                self._writer.drop()
                raise

    def close(self) -> None:
        """Done: the lock goes (with the connection, when no other sink uses it)."""
        writer = self._writer
        with writer.turn:
            fenced, self._fenced_on = self._fenced_on, None
            if not self._attached:
                return
            self._attached = False
            conn = None if fenced is None or self._step is not None else writer.alive(fenced)
            if conn is not None:
                try:
                    with self._errors(f"letting the leader lock {self.lock} go"):
                        self._release_lock(conn)
                except CdcScorerError:  # the connection that failed here is not reused
                    writer.drop()
            writer.detach()

    async def _write_alone(self, write: _Write) -> None:
        """The batch in a transaction of its own, retried while the failure is retriable and
        its sink still waits for it: a pipeline that stopped (or restarted from its
        checkpoint) must not have an older batch written after it, over newer predictions."""

        async def attempt() -> None:
            if write.abandoned:
                raise _Abandoned(f"pipeline {self._pipeline.name} no longer waits for its batch")
            await asyncio.to_thread(self._write_transaction, [(self, write.batch)])

        await retrying(attempt, spec=self._retry, stage="sink", on_retry=self._on_retry)

    def _write_transaction(self, parts: list[tuple[FencedSink[Any], ScoredBatch]]) -> None:
        """Batches of sinks on this writer, in order, in ONE transaction; each sink's last
        batch in it carries the sink's checkpoint (a checkpoint covers the batches before
        it, and a feed's step moves once). Blocking: run in a thread."""
        last = {id(sink): i for i, (sink, _) in enumerate(parts)}
        rows = [
            checkpoint_row(sink._pipeline.name, batch.checkpoint, sink._identity)
            if last[id(sink)] == i
            else None
            for i, (sink, batch) in enumerate(parts)
        ]
        names = ", ".join(dict.fromkeys(sink._pipeline.name for sink, _ in parts))
        with self._writer.turn:
            try:
                with self._errors(f"writing predictions of {names}"):
                    conn = self._connection()
                    for sink, _ in parts[1:]:
                        sink._connection()  # fenced on this connection too
                    for sink, batch in parts:
                        sink._before(conn, batch)
                    self._begin(conn)
                    for (sink, batch), row in zip(parts, rows, strict=True):
                        if row is not None:
                            sink._attempted = row
                        sink._statements(conn, batch, row)
                    self._commit(conn)
                    for (sink, _), row in zip(parts, rows, strict=True):
                        if row is not None:
                            sink._written = row
                            if sink._step is not None:
                                sink._step.committed()
            except BaseException:
                # A failed transaction's connection is not reused: every sink on it fences
                # again on the next one.
                self._writer.drop()
                raise


async def _write_group(group: list[_Write]) -> None:
    """One turn on a writer: the group's batches in one transaction; if that fails, each again
    in its own (retried as a sink retries), so a failure reaches only the sink it belongs to,
    and none of that sink's later batches is written. Every batch's ``done`` is set, whatever
    happens."""
    try:
        live = []
        for w in group:
            if w.sink._failed is not None:  # an earlier batch of its pipeline failed
                _settle(w, w.sink._failed)
            else:
                live.append(w)
        if len(live) > 1:
            first = live[0].sink
            try:
                await asyncio.to_thread(first._write_transaction, [(w.sink, w.batch) for w in live])
            except Exception as error:  # written again one by one, below
                log.info(
                    "group commit failed; writing its batches one by one",
                    batches=len(live),
                    error=str(error),
                )
            else:
                for w in live:
                    _settle(w, None)
                return
        for w in live:
            if w.abandoned:
                continue
            if w.sink._failed is not None:
                _settle(w, w.sink._failed)
                continue
            try:
                await w.sink._write_alone(w)
            except Exception as error:
                w.sink._failed = error
                _settle(w, error)
            else:
                _settle(w, None)
    finally:
        for w in group:
            if not w.done.done():  # abandoned, or the process is stopping
                w.done.cancel()


def _settle(write: _Write, error: Exception | None) -> None:
    if write.done.done():
        return
    if error is None:
        write.done.set_result(None)
    else:
        write.done.set_exception(error)
