"""PostgreSQL positions: the end LSN of a committed transaction.

A transaction is named by its commit record's LSN (``PgTransaction``: what pgoutput's BEGIN
says, so every row of it knows before the COMMIT arrives); a position is the end of a commit
record. A transaction is at or before a position when its commit record starts before it: the
server's own rule when a stream restarts at a confirmed LSN (it skips what committed before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cdc_scorer.core.positions import Position, TxId
from cdc_scorer.sources.pgoutput.protocol import lsn_text, parse_lsn


@dataclass(frozen=True)
class PgTransaction:
    """A transaction of the stream, by its commit record's LSN (printed as the server does)."""

    commit_lsn: int
    xid: int

    def __str__(self) -> str:
        return lsn_text(self.commit_lsn)


@dataclass(frozen=True)
class LsnPosition(Position):
    """After the commit that ends at ``lsn`` (or the server's WAL position at some instant)."""

    kind: ClassVar[str] = "lsn"
    lsn: int

    def includes(self, tx: TxId) -> bool:
        return isinstance(tx, PgTransaction) and tx.commit_lsn < self.lsn

    def value(self) -> str:
        return lsn_text(self.lsn)

    def transactions_since(self, earlier: Position) -> int | None:
        return None  # LSNs count bytes of WAL, not transactions

    @classmethod
    def parse(cls, server_identity: str, value: str) -> LsnPosition:
        return cls(server_identity, parse_lsn(value))

    @classmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        return min(positions, key=lambda p: p.lsn if isinstance(p, LsnPosition) else 0)
