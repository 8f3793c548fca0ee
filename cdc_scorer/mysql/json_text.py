"""A MySQL JSON value as the text MySQL itself writes for it (``SELECT body`` gives it to a
snapshot): ``{"n": [1, 2.5, null], "plan": "gold"}`` — ``", "`` and ``": "`` between parts,
keys in the order the server stores them, text unescaped beyond JSON's own escapes, doubles as MySQL
formats them (``0.00000015``, ``1e20``).

The binlog decoder gives a JSON column as a structure (dict with bytes keys, bytes strings)
and Debezium as its own compact text; both go through here, so that a JSON model input is the
same text from the binlog, from Debezium and from a snapshot's SELECT.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


def _double(value: float) -> str:
    """A double as MySQL writes it in JSON: Python's shortest digits, in plain notation for
    decimal exponents -15 … 14 (``0.00000015``, ``100000000000000.0``), else ``1.5e15`` /
    ``1e-16`` (measured on MySQL 9.7: tests/unit/test_mysql_json_text.py)."""
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return repr(value)
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0") or "0"
    scientific = len(digits) - 1 + exponent
    minus = "-" if sign else ""
    if -16 < scientific < 15:
        plain = format(Decimal(repr(abs(value))), "f")
        return minus + (plain if "." in plain else plain + ".0")
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    return f"{minus}{mantissa}e{scientific}"


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def mysql_json_text(value: Any) -> str:
    """The MySQL text of a decoded JSON value (``json.loads``'s or the binlog decoder's)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, bytes):
        return _string(value.decode("utf-8", "surrogateescape"))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _double(value)
    if isinstance(value, dict):
        parts = (f"{mysql_json_text(k)}: {mysql_json_text(v)}" for k, v in value.items())
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(mysql_json_text(v) for v in value) + "]"
    return _string(str(value))  # a date or decimal inside JSON: MySQL writes it quoted
