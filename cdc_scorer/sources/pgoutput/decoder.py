"""pgoutput messages → source items, at transaction boundaries: the reader thread's logic.

``TransactionDecoder`` names every row by its transaction (BEGIN carries the commit record's
LSN), turns the rows of captured tables into ``RowChange``s with values typed as a SELECT
would give them (``postgresql/values.py``), a TRUNCATE into ``TableTruncated``, and what a
Relation message says of a table — a column a model reads gone, a type changed, the table
renamed — into the items the pipelines act on. Nothing is skipped silently: a row of a
relation never described, or a message this decoder does not know, is one clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.records import (
    ColumnsGone,
    Commit,
    Op,
    RowChange,
    SourceItem,
    TableAltered,
    TableGone,
    TableTruncated,
)
from cdc_scorer.postgresql.values import Caster, TextCasters
from cdc_scorer.sources.pgoutput.positions import LsnPosition, PgTransaction
from cdc_scorer.sources.pgoutput.protocol import (
    UNCHANGED,
    Begin,
    CommitMessage,
    Delete,
    Field,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeMessage,
    Update,
)

SourceBatch = tuple[SourceItem, ...]  # one table's consecutive row changes, or one item
# A large transaction is handed over in runs of about this many row changes.
RUN_ROWS = 200


@dataclass(frozen=True)
class _Plan:
    """How to read the tuples of one captured relation."""

    table: str
    relation: Relation
    # (index in the tuple, column name, caster) of each column read downstream.
    read: tuple[tuple[int, str, Caster], ...]
    key_columns: tuple[str, ...]
    full_identity: bool  # REPLICA IDENTITY FULL: the old image is the whole row

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

    def reconnected(self) -> None:
        """A new connection: the server describes every relation again; a transaction read in
        part is sent again whole."""
        self._plans.clear()
        self._run = []
        self.tx = None

    def handle(self, message: Message) -> None:
        if isinstance(message, Insert | Update | Delete):
            self._row(message)
        elif isinstance(message, Begin):
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
        if previous is not None and previous.table != table:
            # ALTER TABLE … RENAME: the rows change no more under the captured name.
            self._emit((TableGone(previous.table, self.tx, f"renamed to {table}"),))
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
            (index, column.name, self._casters.caster(column.type_oid))
            for index, column in enumerate(relation.columns)
            if wanted is None or column.name in wanted or column.name in key
        )
        return _Plan(relation.name, relation, read, key, relation.replica_identity == "f")

    # ---------------------------------------------------------------- rows
    def _row(self, message: Insert | Update | Delete) -> None:
        plan = self._plans.get(message.relation)
        if plan is None:
            if message.relation not in self._plans:
                raise FatalError(
                    f"pgoutput: a row of relation {message.relation} arrived before its "
                    "Relation message — the stream is out of order; restart the scorer"
                )
            return  # a table of the publication no pipeline reads
        tx, at = self.tx, self._committed_at
        if isinstance(message, Insert):
            values, _ = _values(plan, message.new, None)
            change = RowChange(Op.INSERT, plan.table, _key(plan, values), values, tx, at)
        elif isinstance(message, Update):
            before = None
            if message.old is not None:
                before, _ = _values(plan, message.old, None)
            values, unchanged = _values(plan, message.new, before if plan.full_identity else None)
            change = RowChange(
                Op.UPDATE,
                plan.table,
                _key(plan, values),
                values,
                tx,
                at,
                before,
                unchanged=unchanged,
            )
        else:
            values, _ = _values(plan, message.old, None)
            if message.old_is_key:
                # Only the replica identity's columns are real; the others arrive as NULLs.
                identity = {c.name for c in plan.relation.columns if c.in_key}
                values = {k: v for k, v in values.items() if k in identity}
            change = RowChange(Op.DELETE, plan.table, _key(plan, values), values, tx, at)
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


def _values(
    plan: _Plan, fields: tuple[Field, ...], old: dict[str, Any] | None
) -> tuple[dict[str, Any], frozenset[str]]:
    """The read columns of a tuple, typed; and the names of those the server left out as
    unchanged TOASTed values (taken from ``old`` when it is the whole old row)."""
    values: dict[str, Any] = {}
    unchanged: list[str] = []
    for index, name, cast in plan.read:
        field = fields[index] if index < len(fields) else None
        if field is None:
            values[name] = None
        elif field is UNCHANGED:
            if old is not None and name in old:
                values[name] = old[name]
            else:
                unchanged.append(name)
        else:
            assert isinstance(field, bytes)
            values[name] = cast(field.decode("utf-8"))
    return values, frozenset(unchanged)


def _key(plan: _Plan, values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(values.get(c) for c in plan.key_columns)
