"""Every PostgreSQL type family a model input can have, through the real server: the value
the stream (pgoutput's text output) gives equals the one a snapshot chunk (a SELECT) gives, and
the CSV field sent to the model is what a user would expect."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from cdc_scorer.core.records import Commit, RowChange
from cdc_scorer.core.spec import PipelineSpec, RetrySpec, SourceSpec
from cdc_scorer.services.sagemaker import SageMakerSpec, csv_line
from cdc_scorer.sources import Capture, StreamHooks
from cdc_scorer.sources.pgoutput import PgoutputSource
from cdc_scorer.sources.pgoutput.spec import PgoutputSpec
from cdc_scorer.stores.registry import build_store
from tests.pg import PgDatabase

UUID = "9b2d6f0e-5a4c-4f3e-9d1a-2b3c4d5e6f70"
# (column, type, SQL literal, the CSV field the model gets)
FAMILIES = [
    ("small", "smallint", "-7", "-7"),
    ("whole", "integer", "2147483647", "2147483647"),
    ("big", "bigint", "9007199254740993", "9007199254740993"),  # past a double's integers
    ("money_like", "numeric(12,2)", "12.50", "12.50"),
    ("huge", "numeric", "123456789012345678901234.5", "123456789012345678901234.5"),
    ("single", "real", "1.5", "1.5"),
    ("double", "double precision", "0.1", "0.1"),
    ("note", "text", "'fast, friendly'", '"fast, friendly"'),
    ("code", "varchar(8)", "'AK'", "AK"),
    ("padded", "char(3)", "'ab'", "ab "),
    ("flag", "boolean", "true", "1"),
    ("day", "date", "'2026-12-01'", "2026-12-01"),
    ("clock", "time", "'10:30:00.5'", "10:30:00.500000"),
    ("at", "timestamp", "'2026-12-01 10:30:00.25'", "2026-12-01T10:30:00.250000"),
    ("at_tz", "timestamptz", "'2026-12-01 12:30:00+02'", "2026-12-01T10:30:00+00:00"),
    ("span", "interval", "'1 day 02:00:00'", "1 day 02:00:00"),
    ("ident", "uuid", f"'{UUID}'", UUID),
    ("doc", "json", """'{"plan": "gold", "n": 1}'""", '"{""plan"": ""gold"", ""n"": 1}"'),
    ("docb", "jsonb", """'{"n": 1, "plan": "gold"}'""", '"{""n"": 1, ""plan"": ""gold""}"'),
    ("counts", "integer[]", "'{1,2,3}'", '"{1,2,3}"'),
    ("tags", "text[]", """'{a,"b c"}'""", '"{a,""b c""}"'),
    ("feeling", "mood", "'happy'", "happy"),
    ("raw", "bytea", "'\\x6869'", "hi"),
    ("nothing", "integer", "NULL", ""),
]


def _spec(db: PgDatabase) -> tuple[SourceSpec, PipelineSpec]:
    source = SourceSpec(
        database=db.name,
        engine="postgresql",
        host=db.server.host,
        port=db.server.port,
        user=db.server.user,
        feed=PgoutputSpec(slot_name=db.slot),
    )
    model = SageMakerSpec("types-endpoint", tuple(c for c, *_ in FAMILIES))
    return source, PipelineSpec("types", "types", model)


async def _streamed(source: SourceSpec, start: Any) -> list[RowChange]:
    """The row changes of the next transaction, read through the slot."""
    stream = PgoutputSource(source, RetrySpec(base_ms=10, cap_ms=50)).open(
        start, Capture({"types": ("id",)}, {"types": None}), StreamHooks()
    )
    rows: list[RowChange] = []
    async with aclosing(stream.changes()) as changes:
        async for items in changes:
            rows += [i for i in items if isinstance(i, RowChange) and i.table == "types"]
            if rows and any(isinstance(i, Commit) for i in items):
                stream.stop()
    return rows


async def test_each_type_family_reads_alike_from_the_log_and_a_select(pg: PgDatabase) -> None:
    pg.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    columns = ", ".join(f"{name} {kind}" for name, kind, *_ in FAMILIES)
    pg.execute(f"CREATE TABLE types (id integer PRIMARY KEY, {columns})")
    source, pipeline = _spec(pg)
    store = build_store(source, RetrySpec())
    store.init([pipeline])
    tables = store.inspect_tables([pipeline])
    PgoutputSource(source, RetrySpec()).prepare([pipeline], tables)
    start = PgoutputSource(source, RetrySpec()).current_position()
    literals = ", ".join(literal for *_, literal, _csv in FAMILIES)
    pg.execute(f"INSERT INTO types VALUES (1, {literals})")

    (change,) = await asyncio.wait_for(_streamed(source, start), 30)
    table = store.inspect_tables([pipeline])["types"]
    (chunk_row,) = store.chunks(pipeline, table).select(None, None, 10)
    store.close()
    names = [name for name, *_ in FAMILIES]
    for name in names:
        assert change.values[name] == chunk_row[name], name
        assert type(change.values[name]) is type(chunk_row[name]), name
    expected = ",".join(field for *_, field in FAMILIES) + "\n"
    assert csv_line(change.values, names) == expected
    assert csv_line(chunk_row, names) == expected
