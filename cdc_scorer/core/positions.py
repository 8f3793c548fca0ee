"""Positions in a change log, as the core sees them: an order and an encoding, nothing else.

A source (``sources/``) defines its kinds of position — binlog GTIDs or file:pos, PostgreSQL
LSNs, Kafka offsets — and how a reader starts from one; the core only asks whether a
transaction is at or before a position, which of several positions is the oldest, how far
apart two are, and how one is written into a checkpoint and read back (the source's codec).
A position is always a transaction boundary: resuming inside a transaction is not allowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

# What a row change and a commit name their transaction by (a GTID, where it starts in the
# binlog, an LSN…): the source's own type; the core only compares it with positions, keeps
# it and prints it.
TxId: TypeAlias = Hashable


@dataclass(frozen=True)
class Position(ABC):
    """A transaction boundary in a change log, with the identity of the server it belongs to."""

    kind: ClassVar[str]  # the tag of the encoded form, ``kind:value``
    server_identity: str

    @abstractmethod
    def includes(self, tx: TxId) -> bool:
        """Whether the transaction ``tx`` is at or before this position."""

    @abstractmethod
    def value(self) -> str:
        """The position without its kind, as the server writes it."""

    @abstractmethod
    def transactions_since(self, earlier: Position) -> int | None:
        """Transactions from ``earlier`` to here, or None where positions cannot tell."""

    @classmethod
    @abstractmethod
    def parse(cls, server_identity: str, value: str) -> Position:
        """The inverse of :meth:`value`."""

    @classmethod
    @abstractmethod
    def oldest(cls, positions: Sequence[Position]) -> Position:
        """The oldest of positions of this kind: where a shared reader must start."""

    def encode(self) -> str:
        return f"{self.kind}:{self.value()}"

    def __str__(self) -> str:
        return self.encode()


def decode_position(
    kinds: Mapping[str, type[Position]], server_identity: str, text: str
) -> Position:
    """The inverse of :meth:`Position.encode`, for a source whose kinds are ``kinds``."""
    kind, _, value = text.partition(":")
    cls = kinds.get(kind)
    if cls is None:
        raise ValueError(f"unknown position encoding {text!r}")
    return cls.parse(server_identity, value)


def oldest_position(positions: Sequence[Position]) -> Position:
    """The oldest position any of ``positions`` (one kind, one server) still needs."""
    if not positions:
        raise ValueError("no positions")
    kinds = {type(p) for p in positions}
    if len(kinds) != 1:
        raise ValueError(f"positions of different kinds: {sorted(k.kind for k in kinds)}")
    return kinds.pop().oldest(positions)
