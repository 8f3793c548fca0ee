"""pgoutput messages → source items, at transaction boundaries: the reader thread's logic.

``TransactionDecoder`` names every row by its transaction (BEGIN carries the commit record's
LSN), turns the rows of captured tables into ``RowChange``s with values typed as a SELECT
would give them (``postgresql/values.py``), a TRUNCATE into ``TableTruncated``, and what a
Relation message says of a table — a column a model reads gone, a type changed, the table
renamed — into the items the pipelines act on. Nothing is skipped silently: a row of a
relation never described, or a message this decoder does not know, is one clear error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.records import (
    ColumnsGone,
    Commit,
    Gap,
    Op,
    RowChange,
    SourceItem,
    TableAltered,
    TableGone,
    TableTruncated,
)
from cdc_scorer.postgresql.values import TextCasters
from cdc_scorer.sources.pgoutput.positions import LsnPosition, PgTransaction
from cdc_scorer.sources.pgoutput.protocol import (
    ROW_TAGS,
    Begin,
    CommitMessage,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeMessage,
    parse,
)

# An unchanged TOASTed value is left out of an UPDATE (the dead letter's words).
UNCHANGED_TOAST = Gap(
    "unchanged_toast",
    "was left out of the change as an unchanged value stored out of line (PostgreSQL TOAST "
    "under REPLICA IDENTITY DEFAULT): ALTER TABLE {table} REPLICA IDENTITY FULL so the log "
    "carries whole rows",
)

SourceBatch = tuple[SourceItem, ...]  # one table's consecutive row changes, or one item
ColumnRead = tuple[str, Callable[[bytes], Any]]  # a read column: its name, its caster
# A large transaction is handed over in runs of about this many row changes.
RUN_ROWS = 200


@dataclass(frozen=True)
class _Plan:
    """How to read the tuples of one captured relation."""

    table: str
    relation: Relation
    # For each column of the tuple, in order: (name, caster from the text's bytes) when the
    # column is read downstream, else None (left undecoded).
    read: tuple[ColumnRead | None, ...]
    key_columns: tuple[str, ...]
    full_identity: bool  # REPLICA IDENTITY FULL: the old image is the whole row
    # The TupleData reader compiled for these columns (``compile_tuple_reader``).
    read_tuple: TupleReader
    key_of: Callable[[dict[str, Any]], tuple[Any, ...]]
    identity: frozenset[str]  # the replica identity's columns (a key-only old image's)

    @property
    def shape(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((c.name, c.type_oid, c.type_modifier) for c in self.relation.columns)


class TransactionDecoder:
    """Feeds ``emit`` with source batches in commit order; ``position`` is the last commit."""

    def __init__(
        self,
        schema: str,
        key_columns: Mapping[str, tuple[str, ...]],
        read_columns: Mapping[str, frozenset[str] | None],
        start: LsnPosition,
        casters: TextCasters,
        emit: Callable[[SourceBatch], None],
        on_rows: Callable[[str, str, int], None] | None = None,
        *,
        start_shapes: Mapping[str, Mapping[str, str]] | None = None,
        describe: Callable[[Relation], list[tuple[str, str]]] | None = None,
    ) -> None:
        self._schema = schema
        self._key_columns = dict(key_columns)
        self._read_columns = dict(read_columns)
        self._casters = casters
        self._emit = emit
        self._on_rows = on_rows
        self.position = start
        self.tx: PgTransaction | None = None  # the transaction being read (None: between)
        self._committed_at: Any = None
        self._plans: dict[int, _Plan | None] = {}  # None: a relation not captured
        # The shape each captured table had when this decoder last saw it (across reconnects:
        # a Relation message comes again on every new connection).
        self._shapes: dict[str, tuple[tuple[str, int, int], ...]] = {}
        # The columns and types the store found at start, and how to name a relation's types
        # the same way (format_type): the first description of a table is compared with them.
        self._start_shapes = dict(start_shapes or {})
        self._describe = describe
        self._run: list[RowChange] = []
        self._run_table = ""
        self._oids: dict[int, str] = {}

    def know_tables(self, oids: Mapping[int, str]) -> None:
        """The captured tables' OIDs as the catalog has them now: a Relation message of one of
        them under another name is that table renamed, even before any row of it streamed."""
        self._oids = dict(oids)

    def reconnected(self) -> None:
        """A new connection: the server describes every relation again; a transaction read in
        part is sent again whole."""
        self._plans.clear()
        self._run = []
        self.tx = None

    def handle_payload(self, payload: bytes) -> None:
        """One message as the server sent it: rows of captured tables are read straight from
        the bytes (the hot path: no field tuple, undecoded columns skipped), the rest parsed."""
        if payload[0] in ROW_TAGS:  # Insert, Update, Delete
            plan = self._plan_of(int.from_bytes(payload[1:5], "big"))
            if plan is None:
                return
            self._append(plan, _row_from_bytes(plan, payload, self.tx, self._committed_at))
            return
        self.handle(parse(payload))

    def _plan_of(self, relation: int) -> _Plan | None:
        plan = self._plans.get(relation)
        if plan is None and relation not in self._plans:
            raise FatalError(
                f"pgoutput: a row of relation {relation} arrived before its Relation message "
                "— the stream is out of order; restart the scorer"
            )
        return plan  # None: a table of the publication no pipeline reads

    def handle(self, message: Message) -> None:
        """A parsed message other than a row (rows go through :meth:`handle_payload`)."""
        if isinstance(message, Begin):
            self.tx = PgTransaction(message.final_lsn, message.xid)
            self._committed_at = message.committed_at
        elif isinstance(message, CommitMessage):
            self._flush_run()
            tx, self.tx = self.tx, None
            self.position = LsnPosition(self.position.server_identity, message.end_lsn)
            self._emit((Commit(self.position, message.committed_at, tx),))
        elif isinstance(message, Relation):
            self._flush_run()
            self._relation(message)
        elif isinstance(message, Truncate):
            self._flush_run()
            for oid in message.relations:
                plan = self._plans.get(oid)
                if plan is not None:
                    self._emit((TableTruncated(plan.table, self.tx),))
        elif isinstance(message, TypeMessage | Origin | LogicalMessage):
            pass  # a custom type's name, a replication origin, a logical message: no rows
        else:  # pragma: no cover - parse() returns only the kinds above
            raise FatalError(f"pgoutput: unexpected message {message!r}")

    # ---------------------------------------------------------------- relations (DDL)
    def _relation(self, relation: Relation) -> None:
        table = relation.name
        captured = relation.namespace == self._schema and table in self._key_columns
        previous = self._plans.get(relation.oid)
        was = previous.table if previous is not None else self._oids.get(relation.oid)
        if was is not None and was != table:
            # ALTER TABLE … RENAME: the rows change no more under the captured name.
            self._emit((TableGone(was, self.tx, f"renamed to {table}"),))
            self._oids.pop(relation.oid, None)
        if not captured:
            self._plans[relation.oid] = None
            return
        plan = self._plan(relation)
        self._plans[relation.oid] = plan
        names = {c.name for c in relation.columns}
        wanted = self._read_columns.get(table)
        gone = frozenset(c for c in (wanted or ()) if c not in names)
        if gone:
            self._emit((ColumnsGone(table, gone, self.tx),))
        seen = self._shapes.get(table)
        if self._altered_since_start(relation) if seen is None else seen != plan.shape:
            # Columns added, dropped, renamed or retyped: the view follows, and a model input
            # whose type changed is re-scored (the job compares the types it finds).
            self._emit((TableAltered(table, self.tx),))
        self._shapes[table] = plan.shape

    def _altered_since_start(self, relation: Relation) -> bool:
        """The table's first description in this process differs from what the store found at
        start (an ALTER before the table's first change since)."""
        expected = self._start_shapes.get(relation.name)
        if expected is None or self._describe is None:
            return False
        return self._describe(relation) != list(expected.items())

    def _plan(self, relation: Relation) -> _Plan:
        wanted = self._read_columns.get(relation.name)
        key = self._key_columns[relation.name]
        read = tuple(
            (column.name, self._casters.bytes_caster(column.type_oid))
            if wanted is None or column.name in wanted or column.name in key
            else None
            for column in relation.columns
        )
        return _Plan(
            relation.name,
            relation,
            read,
            key,
            relation.replica_identity == "f",
            compile_tuple_reader(read),
            _key_getter(key),
            frozenset(c.name for c in relation.columns if c.in_key),
        )

    # ---------------------------------------------------------------- rows
    def _append(self, plan: _Plan, change: RowChange) -> None:
        if self._run and (self._run_table != plan.table or len(self._run) >= RUN_ROWS):
            self._flush_run()
        self._run_table = plan.table
        self._run.append(change)

    def _flush_run(self) -> None:
        if not self._run:
            return
        run, self._run = self._run, []
        if self._on_rows is not None:
            self._on_rows(run[0].table, run[0].op.value, len(run))
        self._emit(tuple(run))


TupleReader = Callable[
    [bytes, int, "dict[str, Any] | None"], "tuple[dict[str, Any], frozenset[str], int]"
]
_NO_NAMES: frozenset[str] = frozenset()
_LENGTH = struct.Struct(">i")


def compile_tuple_reader(read: tuple[ColumnRead | None, ...]) -> TupleReader:
    """A TupleData reader unrolled for one relation's columns (as the binlog's fast decoder
    compiles a plan per table map): no per-field loop, lookups or tuple unpacking — the hot
    path of a stream is this function, once per image of every row. A tuple of another
    column count (never sent for the relation described) goes the generic way."""
    lines = [
        "def read_tuple(data, at, old):",
        f"    if ((data[at] << 8) | data[at + 1]) != {len(read)}:",
        "        return generic(plan_read, data, at, old)",
        "    at += 2",
        "    values = {}",
        "    unchanged = None",
    ]
    names: dict[str, Any] = {
        "generic": _generic_tuple,
        "plan_read": read,
        "FatalError": FatalError,
        "unpack": _LENGTH.unpack_from,
    }
    for index, column in enumerate(read):
        lines += ["    kind = data[at]", "    at += 1", "    if kind == 116:"]
        lines.append("        length = unpack(data, at)[0]")
        if column is None:
            lines.append("        at += 4 + length")
            lines.append("    elif kind != 110 and kind != 117:")
        else:
            name, cast = column
            names[f"cast{index}"] = cast
            lines += [
                "        at += 4",
                f"        values[{name!r}] = cast{index}(data[at : at + length])",
                "        at += length",
                "    elif kind == 110:",
                f"        values[{name!r}] = None",
                "    elif kind == 117:",
                f"        if old is not None and {name!r} in old:",
                f"            values[{name!r}] = old[{name!r}]",
                "        else:",
                f"            unchanged = (unchanged or []) + [{name!r}]",
                "    else:",
            ]
        lines.append(
            "        raise FatalError(f'pgoutput: tuple value of kind {chr(kind)!r} is not "
            "understood')"
        )
    lines.append("    return values, (frozenset(unchanged) if unchanged else NO_NAMES), at")
    names["NO_NAMES"] = _NO_NAMES
    exec("\n".join(lines), names)
    reader: TupleReader = names["read_tuple"]
    return reader


def _generic_tuple(
    read: tuple[ColumnRead | None, ...],
    data: bytes,
    at: int,
    old: dict[str, Any] | None,
) -> tuple[dict[str, Any], frozenset[str], int]:
    count = (data[at] << 8) | data[at + 1]
    at += 2
    values: dict[str, Any] = {}
    unchanged: list[str] = []
    for index in range(count):
        kind = data[at]
        at += 1
        wanted = read[index] if index < len(read) else None
        if kind == 0x74:  # 't'
            length = int.from_bytes(data[at : at + 4], "big")
            at += 4
            if wanted is not None:
                values[wanted[0]] = wanted[1](data[at : at + length])
            at += length
        elif kind == 0x6E:  # 'n'
            if wanted is not None:
                values[wanted[0]] = None
        elif kind == 0x75:  # 'u'
            if wanted is not None:
                if old is not None and wanted[0] in old:
                    values[wanted[0]] = old[wanted[0]]
                else:
                    unchanged.append(wanted[0])
        else:
            raise FatalError(f"pgoutput: tuple value of kind {chr(kind)!r} is not understood")
    return values, frozenset(unchanged), at


def _key_getter(key: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(key) == 1:
        only = key[0]
        return lambda values: (values.get(only),)
    return lambda values: tuple(map(values.get, key))


def _row_from_bytes(plan: _Plan, data: bytes, tx: Any, at: Any) -> RowChange:
    """An Insert, Update or Delete message of a captured table as a row change."""
    tag = data[0]
    if tag == 0x49:  # Insert: relation, 'N', the new tuple
        values, _, _ = plan.read_tuple(data, 6, None)
        return RowChange(Op.INSERT, plan.table, plan.key_of(values), values, tx, at)
    if tag == 0x55:  # Update: relation, ['K' | 'O' old tuple], 'N', the new tuple
        offset, before = 5, None
        if data[offset] == 0x4B or data[offset] == 0x4F:
            before, _, offset = plan.read_tuple(data, offset + 1, None)
        old = before if plan.full_identity else None
        values, unchanged, _ = plan.read_tuple(data, offset + 1, old)
        if unchanged and any(c in unchanged for c in plan.key_columns):
            raise FatalError(
                f"table {plan.table}: an UPDATE left its key column out of the change (an "
                "unchanged value stored out of line): the row it names cannot be known — "
                f"ALTER TABLE {plan.table} REPLICA IDENTITY FULL"
            )
        return RowChange(
            Op.UPDATE, plan.table, plan.key_of(values), values, tx, at, before,
            unchanged=unchanged, gap=UNCHANGED_TOAST if unchanged else None,
        )  # fmt: skip
    # Delete: relation, 'K' | 'O', the old tuple
    values, _, _ = plan.read_tuple(data, 6, None)
    if data[5] == 0x4B:
        # A key-only old image: only the replica identity's columns are real (the others
        # arrive as NULLs).
        values = {k: v for k, v in values.items() if k in plan.identity}
    return RowChange(Op.DELETE, plan.table, plan.key_of(values), values, tx, at)
