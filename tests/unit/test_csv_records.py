"""SageMaker CSV records: the fast join gives exactly what the csv module writes."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from cdc_scorer.scoring.sagemaker import csv_line

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
