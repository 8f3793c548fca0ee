"""The preflight names binlog_row_value_options=PARTIAL_JSON, with its fix, for each pipeline
whose model reads a JSON column (`check` fails with it, `run` warns)."""

from __future__ import annotations

from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec
from cdc_scorer.services.comprehend import ComprehendSpec
from cdc_scorer.sources.binlog import partial_json_inputs
from cdc_scorer.sources.binlog.server import ServerInfo

PIPELINES = (
    PipelineSpec("notes", "notes", ComprehendSpec("body")),
    PipelineSpec("feedback", "feedback", ComprehendSpec("text")),
)
TABLES = {
    "notes": TableInfo("notes", {"id": "int", "body": "json"}, ("id",)),
    "feedback": TableInfo("feedback", {"id": "int", "text": "text", "meta": "json"}, ("id",)),
}


def server(options: str) -> ServerInfo:
    return ServerInfo("mysql", "9.7.4", "mysql:x", True, "mysqlgtid", options)


def test_only_pipelines_whose_model_reads_json_are_named() -> None:
    (problem,) = partial_json_inputs(server("PARTIAL_JSON"), PIPELINES, TABLES)
    assert problem.startswith("pipeline notes reads JSON column body, and ")
    assert "set binlog_row_value_options=''" in problem
    # feedback has a JSON column, but its model does not read it: nothing to say.


def test_nothing_without_partial_json() -> None:
    assert partial_json_inputs(server(""), PIPELINES, TABLES) == []
