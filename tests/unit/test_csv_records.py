"""SageMaker CSV records: the fast join gives exactly what the csv module writes."""

from __future__ import annotations

import csv
import io
import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_scorer.core.errors import PoisonError
from cdc_scorer.core.records import row_picker
from cdc_scorer.services.sagemaker import csv_field, csv_line

FIELD = st.text(alphabet=st.sampled_from('ab ,"\r\n1.-é'), max_size=6) | st.none()


@given(st.lists(FIELD, min_size=1, max_size=8))
def test_csv_line_matches_the_csv_module(values: list[str | None]) -> None:
    columns = [f"c{i}" for i in range(len(values))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    assert csv_line(dict(zip(columns, values, strict=True)), columns) == out.getvalue()


def test_quoting_cases() -> None:
    columns = ["a", "b", "c"]
    assert csv_line({"a": "TX", "b": 1.5, "c": None}, columns) == "TX,1.5,\n"
    assert csv_line({"a": 'say "hi"', "b": "x,y", "c": "l1\nl2"}, columns) == (
        '"say ""hi""","x,y","l1\nl2"\n'
    )
    assert csv_line({"a": ""}, ["a"]) == '""\n'  # a lone empty field is quoted


VALUE = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.binary(max_size=4).filter(lambda b: b.isascii())
    | st.datetimes()
    | st.dates()
)


@given(st.lists(VALUE, min_size=1, max_size=8))
def test_typed_fields_are_csv_field_answers(values: list[object]) -> None:
    """The per-type shortcut answers what the general csv_field does, for every type."""
    columns = [f"c{i}" for i in range(len(values))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([csv_field(v) for v in values])
    row = dict(zip(columns, values, strict=True))
    assert csv_line(row, columns) == out.getvalue()
    # Picked once per codec (itemgetter), as SageMakerCodec.prepare does: the same answer.
    assert csv_line(row, columns, row_picker(columns)) == out.getvalue()


def test_non_finite_floats_are_poison() -> None:
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(PoisonError, match="not finite"):
            csv_line({"a": 1, "b": value}, ["a", "b"])
    assert csv_line({"a": True, "b": Decimal("1.50")}, ["a", "b"]) == "1,1.50\n"
