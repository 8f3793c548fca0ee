"""pgoutput's logical replication messages (protocol version 1), bytes → frozen messages.

The format is PostgreSQL's "Logical Replication Message Formats" (protocol.sgml): a one-byte
tag, big-endian integers, NUL-terminated strings. The row messages (Insert, Update, Delete) are
not parsed here: the decoder reads their TupleData straight from the bytes, with a reader
compiled per relation (``decoder.py``), the stream's hot path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cdc_scorer.core.errors import FatalError

# Microseconds of the PostgreSQL epoch (2000-01-01) after the Unix epoch.
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Begin:
    final_lsn: int  # the commit record's LSN: the transaction's id in the order of commits
    committed_at: datetime  # naive UTC
    xid: int


@dataclass(frozen=True)
class CommitMessage:
    commit_lsn: int
    end_lsn: int  # the end of the commit record: where a stream resumes after it
    committed_at: datetime  # naive UTC


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    in_key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class TypeMessage:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | CommitMessage | Relation | TypeMessage | Truncate | Origin | LogicalMessage
ROW_TAGS = frozenset(b"IUD")  # Insert, Update, Delete: read by the decoder, not parse()

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")


def timestamp(microseconds: int) -> datetime:
    """A protocol timestamp (µs since 2000-01-01 UTC) as naive UTC, as the binlog's are."""
    return (_PG_EPOCH + timedelta(microseconds=microseconds)).replace(tzinfo=None)


def _string(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode("utf-8"), end + 1


def parse(data: bytes) -> Message:
    """One pgoutput message other than a row; ``FatalError`` for one this reader does not know
    (never a skip)."""
    tag = data[0]
    if tag in ROW_TAGS:
        raise ValueError("row messages are read by the decoder's compiled tuple readers")
    if tag == 0x42:  # 'B'
        final_lsn, at, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, timestamp(at), xid)
    if tag == 0x43:  # 'C'
        _flags, commit_lsn, end_lsn, at = _COMMIT.unpack_from(data, 1)
        return CommitMessage(commit_lsn, end_lsn, timestamp(at))
    if tag == 0x52:  # 'R'
        return _relation(data)
    if tag == 0x59:  # 'Y'
        (oid,) = _U32.unpack_from(data, 1)
        namespace, at = _string(data, 5)
        name, _ = _string(data, at)
        return TypeMessage(oid, namespace, name)
    if tag == 0x54:  # 'T'
        (count,) = _I32.unpack_from(data, 1)
        options = data[5]
        oids = struct.unpack_from(f">{count}I", data, 6)
        return Truncate(tuple(oids), bool(options & 1), bool(options & 2))
    if tag == 0x4F:  # 'O'
        (lsn,) = _U64.unpack_from(data, 1)
        name, _ = _string(data, 9)
        return Origin(lsn, name)
    if tag == 0x4D:  # 'M'
        flags = data[1]
        (lsn,) = _U64.unpack_from(data, 2)
        prefix, at = _string(data, 10)
        (length,) = _I32.unpack_from(data, at)
        return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(data[at + 4 : at + 4 + length]))
    raise FatalError(
        f"pgoutput: message {chr(tag)!r} is not understood by this scorer (protocol version 1 "
        "asked for) — report it with the server's version"
    )


def _relation(data: bytes) -> Relation:
    (oid,) = _U32.unpack_from(data, 1)
    namespace, at = _string(data, 5)
    name, at = _string(data, at)
    identity = chr(data[at])
    (count,) = _I16.unpack_from(data, at + 1)
    at += 3
    columns = []
    for _ in range(count):
        flags = data[at]
        column, at = _string(data, at + 1)
        type_oid, modifier = struct.unpack_from(">Ii", data, at)
        at += 8
        columns.append(Column(column, type_oid, modifier, bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The inverse of :func:`lsn_text` (``ValueError`` for what is no LSN)."""
    high, sep, low = text.strip().partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN (like 16/B374D848)")
    return (int(high, 16) << 32) | int(low, 16)
