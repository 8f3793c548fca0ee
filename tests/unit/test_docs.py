"""The documentation cannot drift from the code: its reference pages are what the code
generates, every configuration it shows loads, every command line it shows parses, and the
Debezium connectors it shows are the files the tests register."""

from __future__ import annotations

import importlib.util
import io
import re
import shlex
import tomllib
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomli_w

from cdc_scorer.commands.cli import build_parser
from cdc_scorer.config import load_config
from cdc_scorer.local.kafka.connectors import DEPLOYMENT_KEYS, connector_file, mysql_connector
from cdc_scorer.local.servers import DatabaseServer

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference", ROOT / "scripts" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_pages_are_what_the_code_generates() -> None:
    reference = _reference()
    stale = [
        name
        for name, text in reference.render().items()
        if not (reference.OUT / name).exists() or (reference.OUT / name).read_text() != text
    ]
    assert not stale, f"docs/reference/ is stale ({', '.join(stale)}): run {reference.COMMAND}"


def _blocks(language: str) -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for match in _FENCE.finditer(page.read_text()):
            if match.group(1) == language:
                yield f"{page.relative_to(ROOT)}:{match.group(2)[:40]!r}", match.group(2)


# What a block that shows one part of a configuration is completed with.
_BASE: dict[str, Any] = {
    "source": {"database": "mltest"},
    "pipelines": [
        {
            "name": "docs",
            "table": "feedback",
            "service": "comprehend",
            "comprehend": {"text_column": "user_feedback"},
        }
    ],
}


@pytest.mark.parametrize("where, block", list(_blocks("toml")), ids=lambda x: str(x)[:60])
def test_every_toml_block_of_the_docs_loads(
    where: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each TOML block, completed with a [source] database and a pipeline where it shows only
    a part, is loaded by the real loader: a key that does not exist fails."""
    import os

    for name in [n for n in os.environ if n.upper().startswith("CDC_SCORER_")]:
        monkeypatch.delenv(name)
    shown = tomllib.loads(block)
    config = {
        **_BASE,
        **shown,
        "source": {**_BASE["source"], **shown.get("source", {})},
    }
    path = tmp_path / "shown.toml"
    path.write_text(tomli_w.dumps(config))
    load_config(path)


def _command_lines() -> Iterator[tuple[str, str]]:
    """Every ``cdc-scorer …`` line of the docs' code blocks and inline code, but synopses
    (``[optional]``, ``a | b``, ``(one of)``) and placeholders of the command itself."""
    for page in PAGES:
        text = page.read_text()
        candidates = [line for _lang, body in _FENCE.findall(text) for line in body.splitlines()]
        candidates += re.findall(r"`(cdc-scorer [^`]+)`", text)
        for line in candidates:
            line = re.sub(r"^(\w+=\S+\s+)+", "", line.strip())  # VAR=value cdc-scorer …
            line = line.split("  #", 1)[0].split(" # ", 1)[0].strip().removesuffix("&").strip()
            if not line.startswith("cdc-scorer ") or len(line.split()) < 3:
                continue  # not a command, or its name alone (`cdc-scorer rescore` asks…)
            if re.search(r"[\[\]|()…]|COMMAND", line) or line.endswith("\\"):
                continue
            yield f"{page.relative_to(ROOT)}: {line}", line


@pytest.mark.parametrize("where, line", list(_command_lines()), ids=lambda x: str(x)[:70])
def test_every_command_line_of_the_docs_parses(where: str, line: str) -> None:
    errors = io.StringIO()
    with redirect_stderr(errors):
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{where}: {errors.getvalue().strip()}")


def test_the_docs_show_the_connector_files_the_tests_register() -> None:
    """docs/how-to/debezium.md includes deploy/debezium/*.json as they are (snippets); what
    the tests register is each file but for a deployment's own keys, and each file has what
    Kafka Connect requires of a connector that makes its topics."""
    page = (ROOT / "docs" / "how-to" / "debezium.md").read_text()
    for name in ("mysql", "postgresql"):
        assert f'--8<-- "deploy/debezium/{name}-connector.json"' in page
        shown = connector_file(name)
        for required in (
            "topic.creation.default.partitions",
            "topic.creation.default.replication.factor",
        ):
            assert required in shown, (name, required)
    server = DatabaseServer("127.0.0.1", 3306, "root", "", 1, Path("."), Path("."))
    registered = mysql_connector(
        server, prefix="p", database="d", tables=["t"], bootstrap="127.0.0.1:9092"
    )
    as_written = {k: v for k, v in connector_file("mysql").items() if k not in DEPLOYMENT_KEYS}
    assert {k: v for k, v in registered.items() if k in as_written} == as_written


def test_the_generated_reports_name_no_path_of_this_machine() -> None:
    """The benchmark reports under docs/ name programs and files relative to the checkout
    (``benchmarks.harness.portable``), never this machine's paths."""
    for path in [*(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.json")]:
        text = path.read_text()
        assert str(ROOT) not in text and "site-packages/" not in text, path
