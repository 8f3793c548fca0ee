"""``text_template`` and ``prompt_template``: Python format strings over a row's columns
(``{column}``, with an optional format spec: ``{amount:.2f}``)."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from cdc_scorer.core.spec import sql_identifier

_FORMATTER = string.Formatter()


def template_columns(template: str) -> tuple[tuple[str, ...], list[str]]:
    """The columns a template names, in order, once each; and what is wrong with it."""
    names: list[str] = []
    problems: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return (), [f"{exc} (write a literal brace as {{{{ or }}}})"]
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if not sql_identifier(field):
            problems.append(
                f"{{{field}}} is not a column name (name columns as {{column}}, with no "
                "positional, attribute or index fields)"
            )
        elif field not in names:
            names.append(field)
    if not names and not problems:
        problems.append("names no column (write {column} where a value goes)")
    return tuple(names), problems


def render(template: str, values: Mapping[str, Any], columns: tuple[str, ...]) -> str:
    """The template over a row's values: NULL as an empty string, bytes as UTF-8 text."""
    row: dict[str, Any] = {}
    for column in columns:
        value = values.get(column)
        if value is None:
            value = ""
        elif isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", errors="replace")
        row[column] = value
    return template.format_map(row)
