"""``cdc-scorer check``: what a user runs before deploying — one PASS/FAIL line per check.

Every check is a real action against the real systems: the binlog settings are read, the binlog
is opened and read, each source table is selected from, each of the scorer's tables gets a
write that changes nothing (so missing INSERT/UPDATE/DELETE grants show), and each endpoint
answers one real call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import pymysql

from cdc_scorer.db import Connection, connect, map_error, quote
from cdc_scorer.errors import CdcScorerError, PoisonError, RetriableError
from cdc_scorer.schema import (
    OWN_TABLES,
    TableInfo,
    check_schema,
    current_position,
    inspect_tables,
    server_info,
)
from cdc_scorer.scoring.aws import create_client_context, map_aws_error
from cdc_scorer.scoring.sagemaker import csv_line
from cdc_scorer.source.binlog import probe_replication
from cdc_scorer.spec import COMPREHEND, SAGEMAKER, PipelineSpec, ScorerSpec


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _mysql_error(exc: BaseException, doing: str) -> str:
    return str(map_error(exc, doing)) if isinstance(exc, pymysql.MySQLError) else str(exc)


def database_checks(spec: ScorerSpec) -> tuple[list[CheckResult], dict[str, TableInfo]]:
    results: list[CheckResult] = []
    source = spec.source
    target = f"{source.user}@{source.host}:{source.port}/{source.database}"
    try:
        conn = connect(source)
    except CdcScorerError as exc:
        return [CheckResult("database connection", False, str(exc))], {}
    results.append(CheckResult("database connection", True, target))
    try:
        return _with_connection(conn, spec, results)
    finally:
        conn.close()


def _with_connection(
    conn: Connection, spec: ScorerSpec, results: list[CheckResult]
) -> tuple[list[CheckResult], dict[str, TableInfo]]:
    server, settings = server_info(conn, spec.source.positions)
    for name, problem in settings:
        results.append(CheckResult(f"binlog {name}", problem is None, problem or "ok"))
    if all(problem is None for _, problem in settings):
        try:
            start = current_position(conn, server)
            probe_replication(spec.source, start)
            results.append(CheckResult("grant: binlog replication", True, "binlog read"))
        except CdcScorerError as exc:
            results.append(CheckResult("grant: binlog replication", False, str(exc)))
    tables: dict[str, TableInfo] = {}
    for pipeline in spec.pipelines:
        name = f"table {pipeline.table} (pipeline {pipeline.name})"
        try:
            one = dataclasses.replace(spec, pipelines=(pipeline,))
            info = inspect_tables(conn, one)[pipeline.table]
            with conn.cursor() as cursor:
                cursor.execute(f"SELECT * FROM {quote(pipeline.table)} LIMIT 0")
        except (CdcScorerError, pymysql.MySQLError) as exc:
            results.append(CheckResult(name, False, _mysql_error(exc, "reading the table")))
            continue
        tables[pipeline.table] = info
        results.append(CheckResult(name, True, f"key ({', '.join(info.key_columns)}), readable"))
    try:
        check_schema(conn, spec)
    except CdcScorerError as exc:
        results.append(CheckResult("scorer tables", False, str(exc)))
        return results, tables
    results.append(CheckResult("scorer tables", True, "present"))
    own = [*OWN_TABLES, *(p.predictions_table for p in spec.pipelines)]
    for table in own:
        try:
            _write_nothing(conn, table)
        except pymysql.MySQLError as exc:
            results.append(
                CheckResult(f"grant: write {table}", False, _mysql_error(exc, f"writing {table}"))
            )
        else:
            results.append(CheckResult(f"grant: write {table}", True, "INSERT, UPDATE, DELETE"))
    return results, tables


def _write_nothing(conn: Connection, table: str) -> None:
    """Statements that need INSERT, UPDATE and DELETE but change no row."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=DATABASE() "
            "AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION LIMIT 1",
            (table,),
        )
        (column,) = cursor.fetchone() or ("",)
        t, c = quote(table), quote(str(column))
        cursor.execute(f"INSERT INTO {t} SELECT * FROM {t} WHERE 1=0")
        cursor.execute(f"UPDATE {t} SET {c}={c} WHERE 1=0")
        cursor.execute(f"DELETE FROM {t} WHERE 1=0")


async def endpoint_checks(spec: ScorerSpec, tables: dict[str, TableInfo]) -> list[CheckResult]:
    results = []
    for pipeline in spec.pipelines:
        name = f"endpoint {_endpoint_name(pipeline)} (pipeline {pipeline.name})"
        try:
            detail = await _call_once(spec, pipeline, tables.get(pipeline.table))
        except PoisonError as exc:
            # The endpoint is up and answering; it disliked the sample, which says nothing bad.
            results.append(CheckResult(name, True, f"answered (rejected the sample: {exc})"))
        except RetriableError as exc:
            results.append(CheckResult(name, False, f"unreachable or unavailable: {exc}"))
        except CdcScorerError as exc:
            results.append(CheckResult(name, False, str(exc)))
        else:
            results.append(CheckResult(name, True, detail))
    return results


def _endpoint_name(pipeline: PipelineSpec) -> str:
    if pipeline.sagemaker is not None:
        return pipeline.sagemaker.endpoint_name
    return "comprehend"


async def _call_once(spec: ScorerSpec, pipeline: PipelineSpec, table: TableInfo | None) -> str:
    if pipeline.service == SAGEMAKER:
        assert pipeline.sagemaker is not None
        columns = pipeline.sagemaker.feature_columns
        body = csv_line(_sample_row(spec, pipeline, table), columns)
        async with create_client_context("sagemaker-runtime", spec.aws, 1) as client:
            try:
                response = await client.invoke_endpoint(
                    EndpointName=pipeline.sagemaker.endpoint_name,
                    ContentType=pipeline.sagemaker.content_type,
                    Accept="text/csv",
                    Body=body.encode(),
                )
                async with response["Body"] as stream:
                    answer = (await stream.read()).decode()
            except Exception as exc:
                raise map_aws_error(exc, "InvokeEndpoint") from exc
        return f"answered {answer.strip()[:60]!r}"
    assert pipeline.service == COMPREHEND and pipeline.comprehend is not None
    async with create_client_context("comprehend", spec.aws, 1) as client:
        try:
            result = await client.batch_detect_sentiment(
                TextList=["cdc-scorer check: this works well"],
                LanguageCode=pipeline.comprehend.language,
            )
        except Exception as exc:
            raise map_aws_error(exc, "BatchDetectSentiment") from exc
    items = result.get("ResultList", [])
    return f"answered {items[0]['Sentiment'] if items else result.get('ErrorList')}"


def _sample_row(
    spec: ScorerSpec, pipeline: PipelineSpec, table: TableInfo | None
) -> dict[str, Any]:
    """One real row of the table when there is one (the model should accept it)."""
    if table is None:
        return {}
    try:
        conn = connect(spec.source)
    except CdcScorerError:
        return {}
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cursor:
            cursor.execute(f"SELECT * FROM {quote(pipeline.table)} LIMIT 1")
            row = cursor.fetchone()
    except pymysql.MySQLError:
        return {}
    finally:
        conn.close()
    return dict(row) if row else {}


async def run_checks(spec: ScorerSpec) -> list[CheckResult]:
    results, tables = await asyncio.to_thread(database_checks, spec)
    results.extend(await endpoint_checks(spec, tables))
    return results
