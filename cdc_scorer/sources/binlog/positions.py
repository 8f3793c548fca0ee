"""Binlog positions: one class per kind, each with the operations the stream and the
checkpoints need (a new flavour of position is a new class here, not a branch elsewhere).

- ``MariadbGtidPosition``: MariaDB's GTID state, the last GTID per replication domain;
- ``MysqlGtidSetPosition``: MySQL's executed GTID set (``gtid_mode=ON``);
- ``FilePosition``: ``file:pos`` (MySQL without GTIDs, Aurora MySQL's default, or
  ``source.binlog.positions = "file"``).

A position is always a transaction boundary: resuming inside a transaction loses its table
maps (docs/architecture.md, library traps).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc_scorer.core.positions import Position, TxId, decode_position


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


# The binlog's transaction ids: a GTID (MariaDB or MySQL), or where the transaction starts in
# the binlog files (servers read by file:pos).
BinlogTxId = Gtid | MysqlGtid | BinlogCoordinate


@dataclass(frozen=True)
class BinlogPosition(Position):
    """A binlog position, and what a binlog reader needs of it."""

    @abstractmethod
    def after(self, tx: TxId, commit_end: BinlogCoordinate, commit: str = "") -> BinlogPosition:
        """The position once ``tx`` has committed; ``commit_end``: where its commit event
        ends in the binlog files; ``commit``: that event's fingerprint (file:pos keeps it)."""

    @property
    @abstractmethod
    def auto_position(self) -> str | None:
        """The GTID state a reader resumes from by auto-positioning (None: by file:pos)."""

    @abstractmethod
    def reader_start(self) -> dict[str, Any]:
        """Where a binlog reader starts: the arguments of ``BinLogStreamReader``."""


@dataclass(frozen=True)
class MariadbGtidPosition(BinlogPosition):
    """MariaDB: the GTID state, the last GTID per replication domain."""

    kind: ClassVar[str] = "gtid"
    gtids: tuple[Gtid, ...] = ()

    def includes(self, tx: TxId) -> bool:
        if not isinstance(tx, Gtid):
            return False
        return any(g.domain == tx.domain and g.seq >= tx.seq for g in self.gtids)

    def after(self, tx: TxId, commit_end: BinlogCoordinate, commit: str = "") -> BinlogPosition:
        assert isinstance(tx, Gtid), tx
        others = tuple(g for g in self.gtids if g.domain != tx.domain)
        return MariadbGtidPosition(self.server_identity, tuple(sorted((*others, tx))))

    def value(self) -> str:
        return ",".join(str(g) for g in self.gtids)

    @property
    def auto_position(self) -> str | None:
        return self.value() or None

    def reader_start(self) -> dict[str, Any]:
        # MariaDB ignores file:pos without auto_position and replays the whole binlog.
        return {"is_mariadb": True, "auto_position": self.auto_position}

    def transactions_since(self, earlier: Position) -> int | None:
        if not isinstance(earlier, MariadbGtidPosition) or not (self.gtids or earlier.gtids):
            return None
        mine = {g.domain: g.seq for g in earlier.gtids}
        return sum(max(0, g.seq - mine.get(g.domain, 0)) for g in self.gtids)

    @classmethod
    def parse(cls, server_identity: str, value: str) -> MariadbGtidPosition:
        return cls(server_identity, tuple(sorted(Gtid.parse(p) for p in value.split(",") if p)))

    @classmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        gtid_positions = [p for p in positions if isinstance(p, MariadbGtidPosition)]
        seen_by: Counter[int] = Counter()
        lowest: dict[int, Gtid] = {}
        for position in gtid_positions:
            for gtid in position.gtids:
                seen_by[gtid.domain] += 1
                if gtid.domain not in lowest or gtid.seq < lowest[gtid.domain].seq:
                    lowest[gtid.domain] = gtid
        # A domain some pipeline has not seen yet must be read from its start: leave it out.
        kept = tuple(g for d, g in lowest.items() if seen_by[d] == len(gtid_positions))
        return cls(positions[0].server_identity, tuple(sorted(kept)))


@dataclass(frozen=True)
class MysqlGtidSetPosition(BinlogPosition):
    """MySQL with ``gtid_mode=ON``: the set of executed transactions."""

    kind: ClassVar[str] = "mysqlgtid"
    gtid_set: GtidSet = GtidSet()

    def includes(self, tx: TxId) -> bool:
        return tx in self.gtid_set

    def after(self, tx: TxId, commit_end: BinlogCoordinate, commit: str = "") -> BinlogPosition:
        assert isinstance(tx, MysqlGtid), tx
        return MysqlGtidSetPosition(self.server_identity, self.gtid_set.add(tx))

    def value(self) -> str:
        return str(self.gtid_set)

    @property
    def auto_position(self) -> str | None:
        return self.value() or None

    def reader_start(self) -> dict[str, Any]:
        # The server sends what is not in the set. An empty set (no GTID transaction yet)
        # starts at the current end, which is the same thing.
        return {"is_mariadb": False, "auto_position": self.auto_position}

    def transactions_since(self, earlier: Position) -> int | None:
        if not isinstance(earlier, MysqlGtidSetPosition):
            return None
        return max(0, self.gtid_set.transactions() - earlier.gtid_set.transactions())

    @classmethod
    def parse(cls, server_identity: str, value: str) -> MysqlGtidSetPosition:
        return cls(server_identity, GtidSet.parse(value))

    @classmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        # Each pipeline's set is a prefix of the same history: the smallest is the oldest.
        return min(
            positions,
            key=lambda p: p.gtid_set.transactions() if isinstance(p, MysqlGtidSetPosition) else 0,
        )


@dataclass(frozen=True)
class FilePosition(BinlogPosition):
    """``file:pos`` where a transaction ended, and the fingerprint of the commit event that
    ends there: ``<start>/<server_id>/<xid>`` as ``SHOW BINLOG EVENTS`` shows that event, so a
    resume finds out whether the file of that name is the one the checkpoint was taken in
    (encoded ``file:<file>:<pos>#<fingerprint>``; older checkpoints have none)."""

    kind: ClassVar[str] = "file"
    log_file: str = ""
    log_pos: int = 0
    commit: str = ""

    def includes(self, tx: TxId) -> bool:
        # Positions are transaction ends: a transaction starting before one ended there.
        return isinstance(tx, BinlogCoordinate) and (tx.log_file, tx.log_pos) < (
            self.log_file,
            self.log_pos,
        )

    def after(self, tx: TxId, commit_end: BinlogCoordinate, commit: str = "") -> BinlogPosition:
        return FilePosition(self.server_identity, commit_end.log_file, commit_end.log_pos, commit)

    def value(self) -> str:
        place = f"{self.log_file}:{self.log_pos}"
        return f"{place}#{self.commit}" if self.commit else place

    @property
    def auto_position(self) -> str | None:
        return None

    def reader_start(self) -> dict[str, Any]:
        return {"is_mariadb": False, "log_file": self.log_file, "log_pos": self.log_pos}

    def transactions_since(self, earlier: Position) -> int | None:
        return None

    @classmethod
    def parse(cls, server_identity: str, value: str) -> FilePosition:
        place, _, commit = value.partition("#")
        log_file, _, pos = place.rpartition(":")
        return cls(server_identity, log_file, int(pos), commit)

    @classmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        return min(
            positions,
            key=lambda p: (p.log_file, p.log_pos) if isinstance(p, FilePosition) else ("", 0),
        )


POSITION_KINDS: dict[str, type[Position]] = {
    cls.kind: cls for cls in (MariadbGtidPosition, MysqlGtidSetPosition, FilePosition)
}


def decode_binlog_position(server_identity: str, text: str) -> BinlogPosition:
    """A checkpoint's encoded binlog position read back (``Position.encode``)."""
    position = decode_position(POSITION_KINDS, server_identity, text)
    assert isinstance(position, BinlogPosition)
    return position
