"""The shapes of the source tables, and the tables and views the scorer owns."""

from __future__ import annotations

import re
from collections.abc import Sequence

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.models import PredictionColumn
from cdc_scorer.core.own_tables import (
    BATCH_JOB_TABLE,
    CHECKPOINT_TABLE,
    DEAD_LETTER_TABLE,
    HEARTBEAT_TABLE,
    OWN_TABLES,
)
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.mysql.connection import Connection, mysql_errors, quote, version_tuple
from cdc_scorer.stores import table_info, vector_storage
from cdc_scorer.stores.mysql.checkpoints import CHECKPOINT_DDL
from cdc_scorer.stores.mysql.signals import SIGNAL_DDL


def inspect_tables(
    conn: Connection, database: str, pipelines: Sequence[PipelineSpec]
) -> dict[str, TableInfo]:
    """Each pipeline's source table, its columns and key; every problem listed at once."""
    problems: list[str] = []
    tables: dict[str, TableInfo] = {}
    with mysql_errors("reading the source tables' columns"), conn.cursor() as cursor:
        for index, pipeline in enumerate(pipelines):
            cursor.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
                (database, pipeline.table),
            )
            rows = cursor.fetchall()
            if not rows:
                problems.append(
                    f"pipelines.{index}.table: table {database}.{pipeline.table} "
                    "does not exist (or the user cannot see it) — create it or fix the name"
                )
                continue
            column_types = {str(name): str(ctype) for name, ctype, _ in rows}
            primary_key: tuple[str, ...] = ()
            if not pipeline.key_columns:
                cursor.execute(
                    "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA=%s "
                    "AND TABLE_NAME=%s AND INDEX_NAME='PRIMARY' ORDER BY SEQ_IN_INDEX",
                    (database, pipeline.table),
                )
                primary_key = tuple(str(r[0]) for r in cursor.fetchall())
            info = table_info(index, pipeline, column_types, primary_key, problems)
            if info is not None:
                tables[pipeline.table] = info
    if problems:
        raise FatalError("; ".join(problems))
    return tables


_TYPES = {"text": "TEXT", "number": "DOUBLE", "integer": "BIGINT", "boolean": "BOOLEAN"}


def vector_type(conn: Connection) -> bool:
    """Whether the server has a VECTOR type (MySQL 9.0+, MariaDB 11.7+); else a vector is a
    JSON array (MySQL 8.0 and Aurora MySQL 3, MariaDB before 11.7)."""
    version = _version(conn)
    minimum = (11, 7) if "mariadb" in version.lower() else (9, 0)
    return version_tuple(version) >= minimum


def column_type(column: PredictionColumn, vectors: bool) -> str:
    """A prediction column in MySQL's types."""
    if column.kind == "label":
        return f"VARCHAR({column.length})"
    if column.kind == "vector":
        return f"VECTOR({column.length})" if vectors else "JSON"
    return _TYPES[column.kind]


def _column_definition(column: PredictionColumn, vectors: bool) -> str:
    return f"{quote(column.name)} {column_type(column, vectors)} NULL"


def prediction_value_columns(pipeline: PipelineSpec) -> tuple[str, ...]:
    return tuple(c.name for c in pipeline.model.prediction_columns())


def schema_statements(
    pipelines: Sequence[PipelineSpec], tables: dict[str, TableInfo], vectors: bool = False
) -> list[str]:
    """Idempotent DDL for the scorer's tables and views (``vectors``: the server has VECTOR)."""
    statements = [
        CHECKPOINT_DDL,
        SIGNAL_DDL,
        f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  pipeline VARCHAR(64) NOT NULL,
  source_key TEXT NOT NULL,
  source_position VARCHAR(255) NULL,
  reason VARCHAR(64) NOT NULL,
  error TEXT NOT NULL,
  payload MEDIUMTEXT NULL,
  created_at DATETIME(6) NOT NULL,
  KEY (pipeline, created_at)
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
        f"""CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (
  instance VARCHAR(64) NOT NULL PRIMARY KEY,
  beat_at DATETIME(6) NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
        f"""CREATE TABLE IF NOT EXISTS {BATCH_JOB_TABLE} (
  pipeline VARCHAR(64) NOT NULL,
  name VARCHAR(64) NOT NULL,
  rescore_id VARCHAR(64) NOT NULL,
  sequence INT NOT NULL,
  state VARCHAR(16) NOT NULL,
  data MEDIUMTEXT NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (pipeline, name)
) ENGINE=InnoDB CHARACTER SET utf8mb4""",
    ]
    for pipeline in pipelines:
        table = tables[pipeline.table]
        key_defs = [f"{quote(c)} {table.column_types[c]} NULL" for c in table.key_columns]
        # The key's hash is the primary key: keys of any type/length (VARCHAR(2048)) fit.
        key_index = ", ".join(_index_part(c, table.column_types[c]) for c in table.key_columns)
        statements.append(
            f"""CREATE TABLE IF NOT EXISTS {quote(pipeline.predictions)} (
  key_hash BINARY(32) NOT NULL PRIMARY KEY,
  {", ".join(key_defs)},
  {", ".join(_column_definition(c, vectors) for c in pipeline.model.prediction_columns())},
  model_endpoint VARCHAR(255) NOT NULL,
  model_variant VARCHAR(255) NULL,
  model_version VARCHAR(64) NULL,
  source_position VARCHAR(255) NULL,
  source_committed_at DATETIME(6) NULL,
  scored_at DATETIME(6) NOT NULL,
  KEY source_key ({key_index})
) ENGINE=InnoDB CHARACTER SET utf8mb4"""
        )
        statements.append(view_statement(pipeline, table.key_columns))
    return statements


def view_statement(pipeline: PipelineSpec, key_columns: tuple[str, ...]) -> str:
    """The analysts' view, source LEFT JOIN predictions. The server expands ``s.*`` into the
    table's columns as they are when the view is made: the pipeline makes it again whenever
    an ALTER TABLE of the source reaches it in the stream."""
    join = " AND ".join(f"s.{quote(c)} = p.{quote(c)}" for c in key_columns)
    extra = ", ".join(f"p.{quote(c)}" for c in prediction_value_columns(pipeline))
    return f"""CREATE OR REPLACE VIEW {quote(pipeline.view)} AS
SELECT s.*, {extra}, p.model_endpoint, p.model_variant, p.model_version, p.scored_at
FROM {quote(pipeline.table)} s LEFT JOIN {quote(pipeline.predictions)} p ON {join}"""


# The longest key part indexed whole: 191 characters of utf8mb4 are 764 bytes, so four such
# parts stay within InnoDB's 3,072-byte key.
_MAX_WHOLE_KEY_PART = 191


def _index_part(column: str, column_type: str) -> str:
    """One part of the predictions' ``source_key`` index: a TEXT or BLOB key, or a string
    longer than 191 characters, by a 191-character prefix; anything shorter (``CHAR(36)``,
    ``BINARY(16)``) whole, since a prefix longer than the column is refused (error 1089)."""
    lowered = column_type.lower()
    if "text" in lowered or "blob" in lowered:
        return f"{quote(column)}({_MAX_WHOLE_KEY_PART})"
    length = re.match(r"(?:var)?(?:char|binary)\((\d+)\)", lowered)
    if length is not None and int(length.group(1)) > _MAX_WHOLE_KEY_PART:
        return f"{quote(column)}({_MAX_WHOLE_KEY_PART})"
    return quote(column)


# Columns added after a table's first release: ``init`` adds them to tables made before
# (name, definition, after which column), to each predictions table and to the checkpoints.
ADDED_COLUMNS = (("model_version", "VARCHAR(64) NULL", "model_variant"),)
ADDED_CHECKPOINT_COLUMNS = (
    ("stopped_reason", "TEXT NULL", "updated_at"),
    ("rescore", "MEDIUMTEXT NULL", "stopped_reason"),
)


def init_schema(conn: Connection, database: str, pipelines: Sequence[PipelineSpec]) -> list[str]:
    tables = inspect_tables(conn, database, pipelines)
    statements = schema_statements(pipelines, tables, vector_type(conn))
    views = [s for s in statements if s.startswith("CREATE OR REPLACE VIEW")]
    creates = [s for s in statements if s not in views]
    _execute(conn, creates)
    # A view names its tables' columns: tables made by an older version get theirs first.
    added = [
        f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {definition} AFTER {quote(after)}"
        for table, name, definition, after in _missing_columns(conn, database, pipelines)
    ]
    _execute(conn, [*added, *views])
    return [*creates, *added, *views]


def _execute(conn: Connection, statements: list[str]) -> None:
    with conn.cursor() as cursor:
        for statement in statements:
            with mysql_errors("creating the scorer's tables"):
                cursor.execute(statement)


def _missing_columns(
    conn: Connection, database: str, pipelines: Sequence[PipelineSpec]
) -> list[tuple[str, str, str, str]]:
    """(table, column, definition, after) for each added column a predictions table lacks."""
    missing = []
    tables: list[tuple[str, tuple[tuple[str, str, str], ...]]] = [
        (p.predictions, ADDED_COLUMNS) for p in pipelines
    ]
    tables.append((CHECKPOINT_TABLE, ADDED_CHECKPOINT_COLUMNS))
    with mysql_errors("reading the scorer tables' columns"), conn.cursor() as cursor:
        for table, added in tables:
            cursor.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s "
                "AND TABLE_NAME=%s",
                (database, table),
            )
            present = {str(r[0]) for r in cursor.fetchall()}
            if not present:
                continue  # not made yet
            missing += [
                (table, name, definition, after)
                for name, definition, after in added
                if name not in present
            ]
    return missing


def stored_types(conn: Connection, database: str, table: str) -> dict[str, str]:
    """A table's columns and their types as the server reports them (lower case)."""
    with mysql_errors("reading the predictions table's columns"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
            (database, table),
        )
        return {str(name): str(kind).lower() for name, kind in cursor.fetchall()}


def prediction_storage(
    conn: Connection, database: str, pipeline: PipelineSpec
) -> list[tuple[str, str]]:
    if not any(c.kind == "vector" for c in pipeline.model.prediction_columns()):
        return []
    server = vector_type(conn)
    return vector_storage(
        pipeline,
        {k: v.upper() for k, v in stored_types(conn, database, pipeline.predictions).items()},
        lambda column: column_type(column, server),
        "the server's vector type",
        "VECTOR needs MySQL 9.0+ or MariaDB 11.7+: the table keeps JSON until re-made there",
    )


def nearest_sql(
    conn: Connection, database: str, pipeline: PipelineSpec, column: str, limit: int
) -> str:
    """The rows whose vector in ``column`` is nearest a query vector (``%s``: its JSON array
    text), by cosine similarity, from the analysts' view. MariaDB 11.7 has VEC_DISTANCE_COSINE;
    MySQL 9 community has VECTOR but no distance function (DISTANCE() is HeatWave's), so
    there and on a JSON column the dot product is summed over JSON_TABLE (the vectors are
    normalized: it is the cosine)."""
    stored = stored_types(conn, database, pipeline.predictions).get(column, "")
    keys = inspect_tables(conn, database, [pipeline])[pipeline.table].key_columns
    shown = ", ".join(f"v.{quote(c)}" for c in (*keys, *pipeline.input_columns))
    view, col = quote(pipeline.view), quote(column)
    if stored.startswith("vector") and "mariadb" in _version(conn).lower():
        return (
            f"SELECT {shown}, 1 - VEC_DISTANCE_COSINE(v.{col}, VEC_FromText(%s)) AS similarity "
            f"FROM {view} v WHERE v.{col} IS NOT NULL ORDER BY similarity DESC LIMIT {limit}"
        )
    vector = f"VECTOR_TO_STRING(p.{col})" if stored.startswith("vector") else f"p.{col}"
    key_list = ", ".join(f"p.{quote(c)}" for c in keys)
    join = " AND ".join(f"v.{quote(c)} = n.{quote(c)}" for c in keys)
    return f"""SELECT {shown}, n.similarity FROM (
  SELECT {key_list}, SUM(e.x * q.x) AS similarity
  FROM {quote(pipeline.predictions)} p,
    JSON_TABLE({vector}, '$[*]' COLUMNS (i FOR ORDINALITY, x DOUBLE PATH '$')) e,
    JSON_TABLE(%s, '$[*]' COLUMNS (i FOR ORDINALITY, x DOUBLE PATH '$')) q
  WHERE q.i = e.i GROUP BY {key_list}
) n JOIN {view} v ON {join}
ORDER BY n.similarity DESC LIMIT {limit}"""


def _version(conn: Connection) -> str:
    with mysql_errors("reading the server's version"), conn.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        row = cursor.fetchone()
    return str(row[0]) if row else ""


def check_schema(conn: Connection, database: str, pipelines: Sequence[PipelineSpec]) -> None:
    """The scorer's own tables exist (``cdc-scorer init`` makes them)."""
    wanted = [*OWN_TABLES, *(p.predictions for p in pipelines)]
    with mysql_errors("listing the scorer's tables"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s",
            (database,),
        )
        present = {str(r[0]) for r in cursor.fetchall()}
    missing = [t for t in wanted if t not in present]
    if not missing:
        columns = _missing_columns(conn, database, pipelines)
        if columns:
            names = ", ".join(f"{table}.{name}" for table, name, _, _ in columns)
            raise FatalError(
                f"columns {names} are missing (tables made by an older cdc-scorer): run "
                "`cdc-scorer init --config FILE` (it adds them)"
            )
    if missing:
        raise FatalError(
            f"tables {', '.join(missing)} are missing in {database}: "
            "run `cdc-scorer init --config FILE` first"
        )
