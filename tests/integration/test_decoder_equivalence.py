"""The fast rows decoder gives exactly the stock decoder's values, for every column type.

Hypothesis writes random rows (NULLs anywhere) of a wide table into a real MariaDB and a real
MySQL (v2 rows events, FULL row metadata, utf8mb4_0900_ai_ci text) — inserts, then updates and
deletes of the same rows — and both decoders read that stretch of binlog; every value of every
row image must be equal, type included, and the fast decoder must have decoded every event of
the wide table itself (counted: a comparison of the stock decoder with itself proves nothing).
A table with a JSON column is left to the stock decoder, and counted as such.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import HeartbeatLogEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.sources.binlog.decoder import FastRowsDecoder
from cdc_scorer.sources.binlog.events import row_changes
from cdc_scorer.sources.binlog.positions import BinlogPosition
from cdc_scorer.sources.binlog.resume import current_position
from cdc_scorer.sources.binlog.server import server_info
from tests.conftest import source_of

# MariaDB's latin1 is cp1252: the C1 controls other than its five holes are not in it.
_LATIN1 = st.characters(
    codec="latin-1", min_codepoint=32, exclude_characters="".join(map(chr, range(0x7F, 0xA0)))
)
_TEXT = st.characters(exclude_categories=["Cs"])  # any Unicode scalar, 4-byte ones too
_TIME_MAX = datetime.timedelta(hours=838, minutes=59, seconds=59)


def _time(micro: bool) -> st.SearchStrategy[datetime.timedelta]:
    values = st.timedeltas(min_value=-_TIME_MAX, max_value=_TIME_MAX)
    if micro:
        return values
    return values.map(lambda t: datetime.timedelta(seconds=int(t.total_seconds())))


_DATETIMES = st.datetimes(datetime.datetime(1000, 1, 1), datetime.datetime(9999, 12, 31))
_TIMESTAMPS = st.datetimes(datetime.datetime(1970, 1, 2), datetime.datetime(2038, 1, 18))


def _int(bits: int, unsigned: bool) -> st.SearchStrategy[int]:
    if unsigned:
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


# (column definition, values) — every type the fast path decodes.
COLUMNS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "c_tiny": ("TINYINT", _int(8, False)),
    "c_tiny_u": ("TINYINT UNSIGNED", _int(8, True)),
    "c_small": ("SMALLINT", _int(16, False)),
    "c_small_u": ("SMALLINT UNSIGNED", _int(16, True)),
    "c_medium": ("MEDIUMINT", _int(24, False)),
    "c_medium_u": ("MEDIUMINT UNSIGNED", _int(24, True)),
    "c_int": ("INT", _int(32, False)),
    "c_int_u": ("INT UNSIGNED", _int(32, True)),
    "c_big": ("BIGINT", _int(64, False)),
    "c_big_u": ("BIGINT UNSIGNED", _int(64, True)),
    "c_dec_small": ("DECIMAL(5,0)", st.integers(-99999, 99999).map(decimal.Decimal)),
    "c_dec": (
        "DECIMAL(10,2)",
        st.decimals(-99999999, 99999999, places=2, allow_nan=False, allow_infinity=False),
    ),
    "c_dec_wide": (
        "DECIMAL(40,17)",
        st.decimals(-(10**22) + 1, 10**22 - 1, places=17, allow_nan=False, allow_infinity=False),
    ),
    "c_float": ("FLOAT", st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "c_double": ("DOUBLE", st.floats(allow_nan=False, allow_infinity=False)),
    "c_char": ("CHAR(10)", st.text(_TEXT, max_size=10)),
    "c_varchar": ("VARCHAR(40)", st.text(_TEXT, max_size=12)),
    "c_varchar_long": ("VARCHAR(300)", st.text(_TEXT, max_size=300)),  # 2-byte length
    "c_latin1": ("VARCHAR(30) CHARACTER SET latin1", st.text(_LATIN1, max_size=12)),
    "c_binary": ("BINARY(8)", st.binary(min_size=8, max_size=8)),
    "c_varbinary": ("VARBINARY(300)", st.binary(max_size=12)),
    "c_tinytext": ("TINYTEXT", st.text(_TEXT, max_size=12)),
    "c_text": ("TEXT", st.text(_TEXT, max_size=12)),
    "c_mediumtext": ("MEDIUMTEXT", st.text(_TEXT, max_size=12)),
    "c_longtext": ("LONGTEXT", st.text(_TEXT, max_size=12)),
    "c_tinyblob": ("TINYBLOB", st.binary(max_size=12)),
    "c_blob": ("BLOB", st.binary(max_size=12)),
    "c_longblob": ("LONGBLOB", st.binary(max_size=12)),
    "c_date": (
        "DATE",
        st.dates(datetime.date(1000, 1, 1), datetime.date(9999, 12, 31)),
    ),
    "c_time": ("TIME", _time(False)),
    "c_time3": ("TIME(3)", _time(True)),
    "c_time6": ("TIME(6)", _time(True)),
    "c_datetime": ("DATETIME", _DATETIMES),
    "c_datetime2": ("DATETIME(2)", _DATETIMES),
    "c_datetime6": ("DATETIME(6)", _DATETIMES),
    "c_timestamp": ("TIMESTAMP NULL", _TIMESTAMPS),
    "c_timestamp4": ("TIMESTAMP(4) NULL", _TIMESTAMPS),
    "c_year": ("YEAR", st.integers(1901, 2155)),
    "c_bit1": ("BIT(1)", st.integers(0, 1)),
    "c_bit13": ("BIT(13)", st.integers(0, 2**13 - 1)),
    "c_bit64": ("BIT(64)", st.integers(0, 2**64 - 1)),
    "c_enum": ("ENUM('a','bb','ccc')", st.sampled_from(["a", "bb", "ccc"])),
    "c_set": (
        "SET('x','yy','zzz')",
        st.sets(st.sampled_from(["x", "yy", "zzz"])).map(lambda s: ",".join(sorted(s))),
    ),
}
NAMES = list(COLUMNS)
# Rows with no NULL (the no-NULL plan) and rows with NULLs anywhere (a plan per pattern).
ROW = st.fixed_dictionaries({name: values for name, (_, values) in COLUMNS.items()}) | (
    st.fixed_dictionaries({name: st.none() | values for name, (_, values) in COLUMNS.items()})
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(_TEXT, max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@pytest.fixture(scope="module", params=["mariadb", "mysql-gtid"])
def schema(request: pytest.FixtureRequest) -> Iterator[tuple[DatabaseServer, str, Any]]:
    server = source_of(
        request, "mariadb-gtid" if request.param == "mariadb" else "mysql-gtid"
    ).server
    database = f"decode_{uuid.uuid4().hex[:6]}"
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        cursor.execute(f"USE {database}")
        columns = ", ".join(f"{name} {ddl}" for name, (ddl, _) in COLUMNS.items())
        cursor.execute(f"CREATE TABLE wide (id BIGINT PRIMARY KEY, {columns})")
        # MySQL's JSON has no fast path: the table falls back to the stock decoder, values
        # included (MariaDB's JSON is LONGTEXT).
        cursor.execute("CREATE TABLE doc (id BIGINT PRIMARY KEY, body JSON, note VARCHAR(20))")
        cursor.execute("CREATE TABLE marker (id BIGINT)")  # ends a stretch of binlog
        cursor.execute("SET time_zone = '+00:00'")  # TIMESTAMPs without DST gaps
    yield server, database, conn
    conn.close()


def _position(conn: Any) -> BinlogPosition:
    position = current_position(conn, server_info(conn)[0])
    assert isinstance(position, BinlogPosition)
    return position


def _stream(server: DatabaseServer, start: BinlogPosition, server_id: int, **options: Any) -> Any:
    return BinLogStreamReader(
        connection_settings={"host": server.host, "port": server.port, "user": "root"},
        server_id=server_id,
        blocking=True,
        slave_heartbeat=0.5,
        **start.reader_start(),
        **options,
    )


def _read(
    server: DatabaseServer, database: str, start: BinlogPosition, decoder: FastRowsDecoder | None
) -> tuple[list[Any], Counter[str]]:
    """Every row change of the stretch after ``start`` — (table, op, key, values, before) —
    and the rows events read per table. The stretch ends at the marker table's row: MySQL
    sends a heartbeat at once when auto-positioning skips what was executed."""
    stream = _stream(
        server,
        start,
        4_000_000 + (decoder is not None),
        freeze_schema=True,
        only_schemas=[database],
        only_events=[HeartbeatLogEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
    )
    changes: list[Any] = []
    events: Counter[str] = Counter()
    try:
        for event in stream:
            if isinstance(event, HeartbeatLogEvent):
                continue
            if event.table == "marker":
                break
            events[event.table] += 1
            for c in row_changes(event, ("id",), None, decoder):
                changes.append((c.table, c.op, c.key, c.values, c.before))
    finally:
        stream.close()
    return changes, events


def write_wide(cursor: Any, rows: list[dict[str, Any]], updates: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into the wide table, update each to another random row's values (NULLs
    move around too), delete every third."""
    insert = (
        f"INSERT INTO wide (id, {', '.join(NAMES)}) VALUES (%s, {', '.join(['%s'] * len(NAMES))})"
    )
    cursor.executemany(insert, [(i, *(r[n] for n in NAMES)) for i, r in enumerate(rows)])
    assignments = ", ".join(f"{n} = %s" for n in NAMES)
    for i, new in enumerate(updates[: len(rows)]):
        cursor.execute(
            f"UPDATE wide SET {assignments} WHERE id = %s", (*(new[n] for n in NAMES), i)
        )
    cursor.execute("DELETE FROM wide WHERE id % 3 = 0")


def _typed(changes: list[Any]) -> list[Any]:
    """Values with their types: 1 == 1.0 == True must not pass for equal."""

    def typed(values: dict[str, Any] | None) -> Any:
        if values is None:
            return None
        return {k: (type(v).__name__, v) for k, v in values.items()}

    return [(t, op, key, typed(values), typed(before)) for t, op, key, values, before in changes]


@settings(
    max_examples=25,  # per server: about 800 row changes (and before images), NULLs anywhere
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,  # wide rows overrun Hypothesis's buffer now and then
    ],
)
@given(
    rows=st.lists(ROW, min_size=8, max_size=20),
    updates=st.lists(ROW, min_size=8, max_size=20),
    docs=st.lists(JSON_VALUES, min_size=1, max_size=5),
)
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_fast_decoder_equals_stock_decoder(
    schema: tuple[DatabaseServer, str, Any],
    rows: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    docs: list[Any],
) -> None:
    server, database, conn = schema
    with conn.cursor() as cursor:
        cursor.execute("DELETE FROM wide")
        cursor.execute("DELETE FROM doc")
        cursor.execute("DELETE FROM marker")
        start = _position(conn)
        write_wide(cursor, rows, updates)
        cursor.executemany(
            "INSERT INTO doc (id, body, note) VALUES (%s, %s, %s)",
            [(i, json.dumps(d), f"n{i}") for i, d in enumerate(docs)],
        )
        cursor.execute("UPDATE doc SET note = 'changed'")
        cursor.execute("INSERT INTO marker VALUES (1)")
    stock, events = _read(server, database, start, None)
    decoder = FastRowsDecoder({})
    fast, _ = _read(server, database, start, decoder)
    # The fast decoder did decode every event of the wide table. MySQL's JSON type went to
    # the stock decoder, and nothing else did; MariaDB's JSON is LONGTEXT, decoded fast.
    json_stock = events["doc"] if server.flavor == "mysql" else 0
    assert events["wide"] > 0
    assert decoder.fast_events == events["wide"] + events["doc"] - json_stock
    assert dict(decoder.stock_events) == ({"table": json_stock} if json_stock else {})
    # Every change is there (an UPDATE that changes nothing is not logged, so not counted).
    ops = Counter((table, op.value) for table, op, *_ in stock)
    assert ops[("wide", "insert")] == len(rows)
    assert ops[("wide", "delete")] == (len(rows) + 2) // 3
    assert ops[("doc", "insert")] == len(docs)
    assert _typed(fast) == _typed(stock), _first_difference(_typed(fast), _typed(stock))


def _first_difference(fast: list[Any], stock: list[Any]) -> str:
    for index, (a, b) in enumerate(zip(fast, stock, strict=False)):
        if a == b:
            continue
        for image in (3, 4):
            for column in (b[image] or {}).keys() | (a[image] or {}).keys():
                x, y = (a[image] or {}).get(column), (b[image] or {}).get(column)
                if x != y:
                    which = "after" if image == 3 else "before"
                    return f"change {index} ({a[1]}) {which}.{column}: fast {x!r}, stock {y!r}"
        return f"change {index}: {a[:3]} vs {b[:3]}"
    return f"{len(fast)} changes vs {len(stock)}"


def test_generated_code_per_null_pattern(schema: tuple[DatabaseServer, str, Any]) -> None:
    """Rows of one NULL pattern share one compiled variant with no NULL tests."""
    server, database, conn = schema
    with conn.cursor() as cursor:
        cursor.execute("DELETE FROM wide")
        start = _position(conn)
        cursor.executemany(
            "INSERT INTO wide (id, c_int, c_varchar) VALUES (%s, %s, %s)",
            [(i, i, f"v{i}") for i in range(50)],
        )
        cursor.execute("INSERT INTO marker VALUES (1)")
    decoder = FastRowsDecoder({})
    stream = _stream(
        server,
        start,
        4_000_010,
        only_schemas=[database],
        only_events=[HeartbeatLogEvent, WriteRowsEvent],
    )
    try:
        for event in stream:
            if isinstance(event, HeartbeatLogEvent):
                continue
            if event.table == "marker":
                break
            row_changes(event, ("id",), None, decoder)
            plan = decoder.plan(event.table_map[event.table_id])
    finally:
        stream.close()
    assert plan is not None
    sources = plan.image.sources  # type: ignore[attr-defined]
    patterns = [p for p in sources if p is not None]
    assert len(patterns) == 1  # one NULL pattern seen, one variant compiled
    (variant,) = (sources[p] for p in patterns)
    assert "nulls" not in variant and "= None" in variant
