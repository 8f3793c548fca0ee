"""Frozen records that flow source → batcher → scorer → sink → checkpoint."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Op(enum.Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SNAPSHOT = "snapshot"  # a row that existed before the pipeline started (read, not changed)


@dataclass(frozen=True, order=True)
class Gtid:
    """One MariaDB GTID, ``domain-server-seq``."""

    domain: int
    server: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> Gtid:
        domain, server, seq = (int(part) for part in text.split("-"))
        return cls(domain, server, seq)

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


@dataclass(frozen=True, order=True)
class BinlogCoordinate:
    """A place in the binlog files, ``file:pos``; for a transaction: where it starts."""

    log_file: str
    log_pos: int

    def __str__(self) -> str:
        return f"{self.log_file}:{self.log_pos}"


# What a row change and a commit name their transaction by: its GTID (MariaDB), or where it
# starts in the binlog files (servers read by file:pos).
TxId = Gtid | BinlogCoordinate


@dataclass(frozen=True)
class Position:
    """A transaction boundary in the binlog, with the identity of the server it belongs to.

    MariaDB: the GTID state (last GTID per domain). MySQL without GTIDs: ``file:pos``.
    Never points inside a transaction (resuming there loses table maps: ARCHITECTURE §7).
    """

    server_identity: str
    gtids: tuple[Gtid, ...] = ()
    log_file: str | None = None
    log_pos: int | None = None

    @property
    def gtid_state(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    def after(self, gtid: Gtid) -> Position:
        """The position once ``gtid`` has committed."""
        others = tuple(g for g in self.gtids if g.domain != gtid.domain)
        return Position(self.server_identity, tuple(sorted((*others, gtid))))

    def includes(self, tx: TxId) -> bool:
        """Whether the transaction ``tx`` is at or before this position."""
        if isinstance(tx, BinlogCoordinate):
            # Positions are transaction ends: a transaction starting before one ended there.
            return self.log_file is not None and (tx.log_file, tx.log_pos) < (
                self.log_file,
                self.log_pos or 0,
            )
        return any(g.domain == tx.domain and g.seq >= tx.seq for g in self.gtids)

    def encode(self) -> str:
        if self.log_file is not None:
            return f"file:{self.log_file}:{self.log_pos}"
        return f"gtid:{self.gtid_state}"

    @classmethod
    def decode(cls, server_identity: str, text: str) -> Position:
        kind, _, rest = text.partition(":")
        if kind == "file":
            log_file, _, pos = rest.rpartition(":")
            return cls(server_identity, log_file=log_file, log_pos=int(pos))
        if kind == "gtid":
            gtids = tuple(sorted(Gtid.parse(p) for p in rest.split(",") if p))
            return cls(server_identity, gtids)
        raise ValueError(f"unknown position encoding {text!r}")

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True)
class RowChange:
    """One changed (or snapshotted) row of a source table.

    ``values`` is the row's newest image (the before image for a delete). ``gtid`` is the
    transaction it belongs to (None for snapshot rows).
    """

    op: Op
    table: str
    key: tuple[Any, ...]
    values: dict[str, Any]
    gtid: TxId | None
    committed_at: datetime | None
    before: dict[str, Any] | None = None


@dataclass(frozen=True)
class Commit:
    """A transaction boundary: everything before it belongs to ``position``."""

    position: Position
    committed_at: datetime | None
    gtid: TxId | None = None


@dataclass(frozen=True)
class SnapshotProgress:
    """A snapshot chunk ended: rows up to ``cursor`` (a key) are read."""

    table: str
    cursor: tuple[Any, ...] | None
    done: bool


SourceItem = RowChange | Commit | SnapshotProgress


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one row, as columns of the predictions table."""

    key: tuple[Any, ...]
    columns: dict[str, Any]
    variant: str | None
    source_gtid: str | None
    source_committed_at: datetime | None


@dataclass(frozen=True)
class DeadLetter:
    key: tuple[Any, ...]
    reason: str
    error: str
    payload: str
    source_gtid: str | None


@dataclass(frozen=True)
class Checkpoint:
    """What a pipeline has durably applied."""

    position: Position | None
    snapshot_state: str = "pending"  # pending | running | done | skipped
    snapshot_cursor: tuple[Any, ...] | None = None
    snapshot_position: Position | None = None


@dataclass(frozen=True)
class Batch:
    """Rows of one pipeline to score and apply together; ``checkpoint`` is what it completes."""

    sequence: int
    upserts: tuple[RowChange, ...]
    deletes: tuple[RowChange, ...]
    checkpoint: Checkpoint
    rows_skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredBatch:
    """A batch after the model: what the sink writes in one transaction."""

    sequence: int
    upserts: tuple[Prediction, ...]
    deletes: tuple[tuple[Any, ...], ...]
    dead_letters: tuple[DeadLetter, ...]
    checkpoint: Checkpoint
    model_calls: int = 0
    rows_skipped: dict[str, int] = field(default_factory=dict)
