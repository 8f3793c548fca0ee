"""The fenced writer every dialect's sink is: one pipeline's scored batches, in order, each in
ONE transaction with the checkpoint that covers it, through a connection that holds the
pipeline's leader lock.

If that connection dies the lock goes with it; a new connection must win the lock again and
find the checkpoint as this process left it before it writes anything — otherwise another
instance has scored meanwhile and this one stops (fencing). A dialect adds its SQL only.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.records import Checkpoint, ScoredBatch
from cdc_scorer.core.rescoring import encode_rescores
from cdc_scorer.core.retry import retrying
from cdc_scorer.core.spec import PipelineSpec, RetrySpec
from cdc_scorer.core.store import PositionStep
from cdc_scorer.stores import OnRetry, PositionDecoder, StoredCheckpoint

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
    ) -> None:
        self.lock = lock
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
        self._conn: ConnectionT | None = None

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
    def _stored(self, conn: ConnectionT) -> StoredCheckpoint | None: ...

    @abstractmethod
    def _record_stop(self, conn: ConnectionT, reason: str) -> None: ...

    @abstractmethod
    def _apply(self, conn: ConnectionT, batch: ScoredBatch, row: tuple[Any, ...]) -> None:
        """The batch and its checkpoint row ``row`` in one transaction, committed (with
        :meth:`_checkpoint_step` last in it)."""

    def _checkpoint_step(self, cursor: Any, statement: str, batch: ScoredBatch, row: Any) -> None:
        """The transaction's last step: the checkpoint row, or the feed's own step."""
        if self._step is not None:
            self._step.advance(cursor, batch.checkpoint.position)
        else:
            cursor.execute(statement, row)

    # ---------------------------------------------------------------- the fence
    async def write(self, batch: ScoredBatch) -> None:
        await retrying(
            lambda: asyncio.to_thread(self._write_transaction, batch),
            spec=self._retry,
            stage="sink",
            on_retry=self._on_retry,
        )

    def try_lead(self, wait_s: float) -> bool:
        """Try to take the leader lock for up to ``wait_s`` (blocking; run in a thread)."""
        if self._step is not None:
            self._leading = True
            return True
        try:
            if self._conn is None:
                self._conn = self._open()
            self._leading = self._try_lock(self._conn, wait_s)
        except BaseException:
            self.close()
            raise
        return self._leading

    def expect(self, checkpoint: Checkpoint) -> None:
        """The checkpoint the table holds now; a reconnect must find what we wrote last."""
        self._written = checkpoint_row(self._pipeline.name, checkpoint, self._identity)

    def _connection(self) -> ConnectionT:
        if self._conn is not None:
            return self._conn
        assert self._leading, "try_lead() first"
        conn = self._open()
        if self._step is not None:
            self._conn = conn
            return conn
        try:
            name = self._pipeline.name
            if not self._try_lock(conn, 0):
                raise FatalError(
                    f"lost the leader lock {self.lock}: another instance is scoring pipeline "
                    f"{name}; this one stops (restart it to run as a standby)"
                )
            found = self._stored(conn)
            row = (
                None
                if found is None
                else checkpoint_row(name, found.checkpoint, found.server_identity)
            )
            # A commit whose answer was lost may have landed: the retried batch is idempotent.
            if row not in (self._written, self._attempted):
                raise FatalError(
                    f"the checkpoint of pipeline {name} changed while this instance was "
                    "disconnected: another instance scored it; this one stops (restart it to "
                    "resume from the new checkpoint)"
                )
        except BaseException:
            self._close(conn)
            raise
        self._conn = conn
        return conn

    def stopped(self, reason: str) -> None:
        """Record why the pipeline stopped (for `status`), through the fenced connection."""
        try:
            with self._errors(f"recording that {self._pipeline.name} stopped"):
                self._record_stop(self._connection(), reason)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._close(conn)

    def _write_transaction(self, batch: ScoredBatch) -> None:
        row = checkpoint_row(self._pipeline.name, batch.checkpoint, self._identity)
        try:
            with self._errors(f"writing predictions of {self._pipeline.name}"):
                conn = self._connection()
                self._attempted = row
                self._apply(conn, batch, row)
                self._written = row
                if self._step is not None:
                    self._step.committed()
        except BaseException:
            self.close()  # a failed transaction's connection is not reused
            raise
