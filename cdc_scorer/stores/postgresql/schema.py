"""PostgreSQL: the source tables' shapes, and the DDL of ``init`` (tables, views, indexes).

DDL is transactional here: ``init`` runs in one transaction, and a view is dropped and made
again in one (``CREATE OR REPLACE VIEW`` cannot drop or rename a column of the view)."""

from __future__ import annotations

from collections.abc import Sequence

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.models import PredictionColumn
from cdc_scorer.core.own_tables import (
    BATCH_JOB_TABLE,
    CHECKPOINT_TABLE,
    DEAD_LETTER_TABLE,
    HEARTBEAT_TABLE,
    OWN_TABLES,
    SIGNAL_TABLE,
)
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.postgresql.connection import Connection, pg_errors, quote
from cdc_scorer.stores import table_info, vector_storage

_COLUMNS = """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
_PRIMARY_KEY = """SELECT a.attname
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, place) ON true
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.place"""


def column_types(conn: Connection, schema: str, table: str) -> dict[str, str]:
    """The table's columns and their types (``format_type``), in table order."""
    with conn.cursor() as cursor:
        cursor.execute(_COLUMNS, (schema, table))
        return {str(name): str(kind) for name, kind in cursor.fetchall()}


def inspect_tables(
    conn: Connection, schema: str, pipelines: Sequence[PipelineSpec]
) -> dict[str, TableInfo]:
    problems: list[str] = []
    tables: dict[str, TableInfo] = {}
    with pg_errors("reading the source tables' columns"), conn.cursor() as cursor:
        for index, pipeline in enumerate(pipelines):
            columns = column_types(conn, schema, pipeline.table)
            if not columns:
                problems.append(
                    f"pipelines.{index}.table: table {schema}.{pipeline.table} does not exist "
                    "(or the user cannot see it) — create it or fix the name"
                )
                continue
            primary_key: tuple[str, ...] = ()
            if not pipeline.key_columns:
                cursor.execute(_PRIMARY_KEY, (schema, pipeline.table))
                primary_key = tuple(str(r[0]) for r in cursor.fetchall())
            info = table_info(index, pipeline, columns, primary_key, problems)
            if info is not None:
                tables[pipeline.table] = info
    if problems:
        raise FatalError("; ".join(problems))
    return tables


_TYPES = {"text": "text", "number": "double precision", "integer": "bigint", "boolean": "boolean"}


def vector_type(conn: Connection) -> bool:
    """Whether pgvector is installed in the database (``CREATE EXTENSION vector``); else a
    vector is a jsonb array."""
    with pg_errors("looking for pgvector"), conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone() is not None


def column_type(column: PredictionColumn, vectors: bool) -> str:
    if column.kind == "label":
        return f"varchar({column.length})"
    if column.kind == "vector":
        return f"vector({column.length})" if vectors else "jsonb"
    return _TYPES[column.kind]


def _column(column: PredictionColumn, vectors: bool) -> str:
    return f"{quote(column.name)} {column_type(column, vectors)} NULL"


def prediction_storage(
    conn: Connection, schema: str, pipeline: PipelineSpec
) -> list[tuple[str, str]]:
    if not any(c.kind == "vector" for c in pipeline.model.prediction_columns()):
        return []
    with pg_errors("reading the predictions table's columns"):
        present = column_types(conn, schema, pipeline.predictions)
        server = vector_type(conn)
    return vector_storage(
        pipeline,
        present,
        lambda column: column_type(column, server),
        "pgvector",
        "CREATE EXTENSION vector before init makes it vector(N)",
    )


def own_tables(schema: str) -> list[str]:
    s = quote(schema)
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.{CHECKPOINT_TABLE} (
  pipeline varchar(64) PRIMARY KEY,
  position varchar(4096) NULL,
  server_identity varchar(255) NOT NULL,
  snapshot_state varchar(16) NOT NULL,
  snapshot_cursor text NULL,
  snapshot_position varchar(4096) NULL,
  updated_at timestamp(6) NOT NULL,
  stopped_reason text NULL,
  rescore text NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.{SIGNAL_TABLE} (
  id varchar(64) PRIMARY KEY,
  pipeline varchar(64) NOT NULL,
  kind varchar(32) NOT NULL,
  data text NULL,
  created_at timestamp(6) NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.{DEAD_LETTER_TABLE} (
  id bigserial PRIMARY KEY,
  pipeline varchar(64) NOT NULL,
  source_key text NOT NULL,
  source_position varchar(255) NULL,
  reason varchar(64) NOT NULL,
  error text NOT NULL,
  payload text NULL,
  created_at timestamp(6) NOT NULL
)""",
        f"CREATE INDEX IF NOT EXISTS {DEAD_LETTER_TABLE}_at ON {s}.{DEAD_LETTER_TABLE} "
        "(pipeline, created_at)",
        f"""CREATE TABLE IF NOT EXISTS {s}.{HEARTBEAT_TABLE} (
  instance varchar(64) PRIMARY KEY,
  beat_at timestamp(6) NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.{BATCH_JOB_TABLE} (
  pipeline varchar(64) NOT NULL,
  name varchar(64) NOT NULL,
  rescore_id varchar(64) NOT NULL,
  sequence integer NOT NULL,
  state varchar(16) NOT NULL,
  data text NOT NULL,
  updated_at timestamp(6) NOT NULL,
  PRIMARY KEY (pipeline, name)
)""",
    ]


def prediction_value_columns(pipeline: PipelineSpec) -> tuple[str, ...]:
    return tuple(c.name for c in pipeline.model.prediction_columns())


def nearest_sql(
    conn: Connection, schema: str, pipeline: PipelineSpec, column: str, limit: int
) -> str:
    """The rows whose vector in ``column`` is nearest a query vector (``%s``: its JSON array
    text), by cosine similarity, from the analysts' view: pgvector's ``<=>`` on a vector
    column, else the dot product summed over the jsonb array (the vectors are normalized)."""
    with pg_errors("reading the predictions table's columns"):
        stored = column_types(conn, schema, pipeline.predictions).get(column, "")
        keys = inspect_tables(conn, schema, [pipeline])[pipeline.table].key_columns
    shown_columns = [f"v.{quote(c)}" for c in (*keys, *pipeline.input_columns)]
    shown = ", ".join(shown_columns)
    view, col = f"{quote(schema)}.{quote(pipeline.view)}", quote(column)
    if stored.startswith("vector"):
        return (
            f"SELECT {shown}, 1 - (v.{col} <=> %s::vector) AS similarity FROM {view} v "
            f"WHERE v.{col} IS NOT NULL ORDER BY v.{col} <=> %s::vector LIMIT {limit}"
        )
    return f"""SELECT {shown}, SUM(e.x::float8 * q.x::float8) AS similarity
FROM {view} v
  CROSS JOIN LATERAL jsonb_array_elements_text(v.{col}) WITH ORDINALITY e(x, i)
  JOIN jsonb_array_elements_text(%s::jsonb) WITH ORDINALITY q(x, i) ON q.i = e.i
GROUP BY {shown} ORDER BY similarity DESC LIMIT {limit}"""


def predictions_table(
    schema: str, pipeline: PipelineSpec, table: TableInfo, vectors: bool = False
) -> list[str]:
    s, name = quote(schema), quote(pipeline.predictions)
    keys = [f"{quote(c)} {table.column_types[c]} NULL" for c in table.key_columns]
    index = quote(f"{pipeline.predictions}_source_key")
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.{name} (
  key_hash bytea PRIMARY KEY,
  {", ".join(keys)},
  {", ".join(_column(c, vectors) for c in pipeline.model.prediction_columns())},
  model_endpoint varchar(255) NOT NULL,
  model_variant varchar(255) NULL,
  model_version varchar(64) NULL,
  source_position varchar(255) NULL,
  source_committed_at timestamp(6) NULL,
  scored_at timestamp(6) NOT NULL
)""",
        f"CREATE INDEX IF NOT EXISTS {index} ON {s}.{name} "
        f"({', '.join(quote(c) for c in table.key_columns)})",
    ]


def view_statements(schema: str, pipeline: PipelineSpec, key_columns: tuple[str, ...]) -> list[str]:
    """The analysts' view, source LEFT JOIN predictions, dropped and made again (run them in one
    transaction: readers never see it missing)."""
    s = quote(schema)
    join = " AND ".join(f"s.{quote(c)} = p.{quote(c)}" for c in key_columns)
    extra = ", ".join(f"p.{quote(c)}" for c in prediction_value_columns(pipeline))
    return [
        f"DROP VIEW IF EXISTS {s}.{quote(pipeline.view)}",
        f"""CREATE VIEW {s}.{quote(pipeline.view)} AS
SELECT s.*, {extra}, p.model_endpoint, p.model_variant, p.model_version, p.scored_at
FROM {s}.{quote(pipeline.table)} s LEFT JOIN {s}.{quote(pipeline.predictions)} p ON {join}""",
    ]


def init_schema(conn: Connection, schema: str, pipelines: Sequence[PipelineSpec]) -> list[str]:
    """Every table, index and view, in one transaction (idempotent)."""
    tables = inspect_tables(conn, schema, pipelines)
    statements = own_tables(schema)
    vectors = vector_type(conn)
    for pipeline in pipelines:
        statements += predictions_table(schema, pipeline, tables[pipeline.table], vectors)
        statements += view_statements(schema, pipeline, tables[pipeline.table].key_columns)
    autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with pg_errors("creating the scorer's tables"), conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = autocommit
    return statements


def check_schema(conn: Connection, schema: str, pipelines: Sequence[PipelineSpec]) -> None:
    wanted = [*OWN_TABLES, *(p.predictions for p in pipelines)]
    with pg_errors("listing the scorer's tables"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        )
        present = {str(r[0]) for r in cursor.fetchall()}
    missing = [t for t in wanted if t not in present]
    if missing:
        raise FatalError(
            f"tables {', '.join(missing)} are missing in schema {schema}: run "
            "`cdc-scorer init --config FILE` first"
        )
