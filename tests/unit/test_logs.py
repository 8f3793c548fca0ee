"""The daemon's log is one format: the libraries' stdlib records go through structlog too."""

from __future__ import annotations

import json
import subprocess
import sys

_EMIT = """
import logging, sys
import structlog
from cdc_scorer.ops.logs import configure_logging
configure_logging("json", getattr(logging, sys.argv[1]))
logging.getLogger("pymysqlreplication").info("allowed_events_in_packet: frozenset()")
logging.getLogger("aiobotocore.credentials").warning("credentials expire soon")
structlog.get_logger("cdc_scorer.app").info("starting", pipelines=["churn"])
"""


def _emit(level: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-c", _EMIT, level], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in result.stderr.splitlines()]


def test_library_records_are_rendered_like_ours_and_their_chatter_waits_for_debug() -> None:
    records = _emit("INFO")
    assert [r["event"] for r in records] == ["credentials expire soon", "starting"]
    assert records[0]["level"] == "warning"
    assert records[0]["logger"] == "aiobotocore.credentials"
    assert "timestamp" in records[0]


def test_debug_shows_the_libraries_info_records_as_json() -> None:
    events = [r["event"] for r in _emit("DEBUG")]
    assert events == [
        "allowed_events_in_packet: frozenset()",
        "credentials expire soon",
        "starting",
    ]
