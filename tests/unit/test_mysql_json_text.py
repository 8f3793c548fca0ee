"""MySQL's text of JSON values: each pair is what MySQL 9.7 printed for ``SELECT CAST(x AS
JSON)`` of the double on the left (recorded from the real server)."""

from __future__ import annotations

import pytest

from cdc_scorer.mysql.json_text import mysql_json_text

MYSQL_DOUBLES = [
    (1e-05, "0.00001"),
    (1.5e-07, "0.00000015"),
    (1e-10, "0.0000000001"),
    (1.234e-12, "0.000000000001234"),
    (1e-15, "0.000000000000001"),
    (1.5e-15, "0.0000000000000015"),
    (1e-16, "1e-16"),
    (1.25e-16, "1.25e-16"),
    (1e-20, "1e-20"),
    (1.5e-100, "1.5e-100"),
    (10.0, "10.0"),
    (120.0, "120.0"),
    (1e14, "100000000000000.0"),
    (1.5e14, "150000000000000.0"),
    (1e15, "1e15"),
    (1.5e15, "1.5e15"),
    (1234567890123456.0, "1.234567890123456e15"),
    (1e20, "1e20"),
    (1.2345678901234567e20, "1.2345678901234567e20"),
    (1.25e25, "1.25e25"),
    (123456.789, "123456.789"),
    (0.1, "0.1"),
    (1 / 3, "0.3333333333333333"),
    (2.0, "2.0"),
    (-0.0, "-0.0"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e308"),
    (0.0001, "0.0001"),
]


@pytest.mark.parametrize(("value", "text"), MYSQL_DOUBLES)
def test_doubles_as_mysql_writes_them(value: float, text: str) -> None:
    assert mysql_json_text(value) == text
    assert mysql_json_text(-value) == ("-" + text if not text.startswith("-") else text[1:])


def test_structures_as_mysql_writes_them() -> None:
    decoded = {b"n": [1, 2.5, None], b"plan": b"gold", b"ok": True, b"q": b'a"b\xc3\xa9'}
    assert (
        mysql_json_text(decoded)
        == '{"n": [1, 2.5, null], "plan": "gold", "ok": true, "q": "a\\"bé"}'
    )
    assert mysql_json_text([]) == "[]" and mysql_json_text({}) == "{}"
