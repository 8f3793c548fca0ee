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


@dataclass(frozen=True, order=True)
class MysqlGtid:
    """One MySQL GTID, ``source_uuid:transaction_number``."""

    uuid: str
    seq: int

    def __str__(self) -> str:
        return f"{self.uuid}:{self.seq}"


@dataclass(frozen=True)
class GtidSet:
    """A MySQL GTID set (``gtid_executed``): per source UUID, closed intervals."""

    intervals: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> GtidSet:
        """``uuid:1-5:7,uuid2:1-3`` (whitespace, as MySQL prints it, is ignored)."""
        by_uuid: dict[str, list[tuple[int, int]]] = {}
        for part in "".join(text.split()).split(","):
            if not part:
                continue
            uuid, *ranges = part.split(":")
            for text_range in ranges:
                low, _, high = text_range.partition("-")
                by_uuid.setdefault(uuid.lower(), []).append((int(low), int(high or low)))
        return cls._of(by_uuid)

    @classmethod
    def _of(cls, by_uuid: dict[str, list[tuple[int, int]]]) -> GtidSet:
        merged: list[tuple[str, tuple[tuple[int, int], ...]]] = []
        for uuid in sorted(by_uuid):
            ranges: list[tuple[int, int]] = []
            for low, high in sorted(by_uuid[uuid]):
                if ranges and low <= ranges[-1][1] + 1:
                    ranges[-1] = (ranges[-1][0], max(high, ranges[-1][1]))
                else:
                    ranges.append((low, high))
            merged.append((uuid, tuple(ranges)))
        return cls(tuple(merged))

    def __contains__(self, gtid: object) -> bool:
        if not isinstance(gtid, MysqlGtid):
            return False
        for uuid, ranges in self.intervals:
            if uuid == gtid.uuid:
                return any(low <= gtid.seq <= high for low, high in ranges)
        return False

    def add(self, gtid: MysqlGtid) -> GtidSet:
        by_uuid = {uuid: list(ranges) for uuid, ranges in self.intervals}
        by_uuid.setdefault(gtid.uuid, []).append((gtid.seq, gtid.seq))
        return GtidSet._of(by_uuid)

    def transactions(self) -> int:
        return sum(high - low + 1 for _, ranges in self.intervals for low, high in ranges)

    def __str__(self) -> str:
        return ",".join(
            uuid + "".join(f":{lo}" if lo == hi else f":{lo}-{hi}" for lo, hi in ranges)
            for uuid, ranges in self.intervals
        )


# What a row change and a commit name their transaction by: its GTID (MariaDB or MySQL), or
# where it starts in the binlog files (servers read by file:pos).
TxId = Gtid | MysqlGtid | BinlogCoordinate


@dataclass(frozen=True)
class Position:
    """A transaction boundary in the binlog, with the identity of the server it belongs to.

    MariaDB: the GTID state (last GTID per domain). MySQL with ``gtid_mode=ON``: the GTID set
    of executed transactions. Otherwise ``file:pos``.
    Never points inside a transaction (resuming there loses table maps: ARCHITECTURE §7).
    """

    server_identity: str
    gtids: tuple[Gtid, ...] = ()
    log_file: str | None = None
    log_pos: int | None = None
    gtid_set: GtidSet | None = None  # MySQL GTIDs

    @property
    def gtid_state(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    def after(self, gtid: Gtid | MysqlGtid) -> Position:
        """The position once ``gtid`` has committed."""
        if isinstance(gtid, MysqlGtid):
            executed = (self.gtid_set or GtidSet()).add(gtid)
            return Position(self.server_identity, gtid_set=executed)
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
        if isinstance(tx, MysqlGtid):
            return self.gtid_set is not None and tx in self.gtid_set
        return any(g.domain == tx.domain and g.seq >= tx.seq for g in self.gtids)

    def encode(self) -> str:
        if self.log_file is not None:
            return f"file:{self.log_file}:{self.log_pos}"
        if self.gtid_set is not None:
            return f"mysqlgtid:{self.gtid_set}"
        return f"gtid:{self.gtid_state}"

    @classmethod
    def decode(cls, server_identity: str, text: str) -> Position:
        kind, _, rest = text.partition(":")
        if kind == "file":
            log_file, _, pos = rest.rpartition(":")
            return cls(server_identity, log_file=log_file, log_pos=int(pos))
        if kind == "mysqlgtid":
            return cls(server_identity, gtid_set=GtidSet.parse(rest))
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
