"""Amazon SageMaker InvokeEndpoint with text/csv: one CSV line per row, one answer line each;
re-scores of whole tables also as Batch Transform jobs (``batch.py``)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import MinLen

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.errors import PoisonError
from cdc_scorer.core.models import Answer, ModelSpec, PredictionColumn
from cdc_scorer.core.records import RowChange, row_picker
from cdc_scorer.core.spec import STRICT, BackfillSpec, Identifier

OutputForm = Literal["predicted_label", "predicted_label,probability", "probabilities"]


@dataclass(frozen=True)
class SageMakerSpec(ModelSpec):
    """``[pipelines.sagemaker]``: an endpoint fed the feature columns as CSV."""

    __pydantic_config__ = STRICT
    service: ClassVar[str] = "sagemaker"
    client_name: ClassVar[str] = "sagemaker-runtime"
    # A call costs the scorer ~0.8 ms of CPU whatever its size and a 500-row CSV body is
    # ~100 KB of the 6 MB allowed, so bigger batches are what lets a backlog drain (100 → 500
    # rows: 12k → 17k rows/s end to end here, docs/benchmarks.md); under light load linger_ms
    # cuts batches long before.
    default_max_rows: ClassVar[int] = 500

    endpoint_name: Annotated[str, MinLen(1)]  # the SageMaker endpoint called
    feature_columns: Annotated[tuple[str, ...], MinLen(1)]  # the CSV's columns, in its order
    content_type: Literal["text/csv"] = "text/csv"  # the request body's (CSV, one row a line)
    # What the endpoint answers per row: "label,probability", the label alone, or the
    # probabilities "[p_neg, p_pos]"
    output_form: OutputForm = "predicted_label,probability"
    positive_label: str = "True."  # the label whose probability is stored
    negative_label: str = "False."  # the other label (output_form "probabilities")
    label_column: Identifier = "will_churn"  # the predictions table's label column
    probability_column: Identifier = "churn_probability"  # the positive label's probability

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.feature_columns

    def prediction_columns(self) -> tuple[PredictionColumn, ...]:
        return (
            PredictionColumn(self.label_column, "label", 255),
            PredictionColumn(self.probability_column, "number"),
        )

    @property
    def model_endpoint(self) -> str:
        return self.endpoint_name

    def codec(self) -> SageMakerCodec:
        return SageMakerCodec(self)

    batch_clients: ClassVar[tuple[str, ...]] = ("sagemaker", "s3")

    def batch(
        self, pipeline: str, backfill: BackfillSpec, clients: Mapping[str, Any]
    ) -> BatchService:
        from cdc_scorer.services.sagemaker.batch import SageMakerTransformJobs

        return SageMakerTransformJobs(self, pipeline, backfill, clients["sagemaker"], clients["s3"])


class SageMakerCodec:
    operation = "invoke_endpoint"

    def __init__(self, spec: SageMakerSpec) -> None:
        self._spec = spec
        self.describe = f"InvokeEndpoint {spec.endpoint_name}"
        self._pick = row_picker(spec.feature_columns)

    def prepare(self, change: RowChange) -> str:
        return csv_line(change.values, self._spec.feature_columns, self._pick)

    def requests(
        self, items: Sequence[tuple[RowChange, str]]
    ) -> Iterable[Sequence[tuple[RowChange, str]]]:
        return [items] if items else []  # the whole batch in one body (max_bytes ≤ 6 MB)

    def encode(self, items: Sequence[str]) -> dict[str, Any]:
        return {
            "EndpointName": self._spec.endpoint_name,
            "ContentType": self._spec.content_type,
            "Accept": "text/csv",
            "Body": "".join(items).encode("utf-8"),
        }

    def decode(self, response: Mapping[str, Any], count: int) -> Answer:
        text = bytes(response["Body"]).decode("utf-8")
        # Answers are rarely quoted: then splitting is what the csv module would read.
        records: Iterable[list[str]] = (
            csv.reader(io.StringIO(text))
            if '"' in text or "\r" in text
            else (line.split(",") for line in text.split("\n") if line)
        )
        label_column, probability_column = self._spec.label_column, self._spec.probability_column
        outcomes = []  # the driver holds their count against the rows sent
        for record in records:
            if record:
                label, probability = self.parse(record)
                outcomes.append({label_column: label, probability_column: probability})
        return Answer(outcomes, response.get("InvokedProductionVariant"))

    def parse(self, record: list[str]) -> tuple[str, float | None]:
        """(label, probability of the positive label) for each output form; a line that is no
        answer makes the request poison (split until the row is found)."""
        positive = self._spec.positive_label
        try:
            if self._spec.output_form == "predicted_label":
                return record[0], None
            if self._spec.output_form == "predicted_label,probability":
                label, probability = record[0], float(record[1])
                if not 0.0 <= probability <= 1.0:  # nan too: a probability, or no answer
                    raise ValueError("the probability is not within [0, 1]")
                return label, probability if label == positive else 1.0 - probability
            probabilities = json.loads(record[0])
            # Autopilot orders classes by label; for a binary model the positive class
            # ("True.", "yes", "1") sorts last.
            p_positive = float(probabilities[-1])
            if not 0.0 <= p_positive <= 1.0:
                raise ValueError("the probability is not within [0, 1]")
        except (IndexError, TypeError, ValueError) as exc:
            raise PoisonError(
                f"cannot parse model answer {record!r}: {exc}", reason="bad_response"
            ) from None
        return (positive if p_positive >= 0.5 else self._spec.negative_label), p_positive


def csv_field(value: Any) -> str:
    """One CSV field: NULL → empty; raises PoisonError for what cannot be written."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PoisonError(f"value {value!r} is not finite", reason="unserialisable")
        return repr(value)
    if isinstance(value, int | Decimal | str):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise PoisonError("binary value is not UTF-8 text", reason="unserialisable") from None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, set):
        return ",".join(sorted(str(v) for v in value))
    raise PoisonError(f"cannot serialise {type(value).__name__} to CSV", reason="unserialisable")


# The common column types by exact type: one dict lookup per value instead of csv_field's chain
# of isinstance tests (this runs for every feature of every row). bool is not int here, and
# subclasses go the long way, so the answers are csv_field's.
_FIELD_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: str,
    int: int.__repr__,
    float: float.__repr__,  # inf and nan are caught on the whole line, below
    Decimal: Decimal.__str__,
    type(None): lambda _: "",
}


# The types whose str() is csv_field's answer: a row of only these is joined in one C call.
_PLAIN: frozenset[type] = frozenset({int, float, str, Decimal, date, time, timedelta})


def csv_line(
    values: dict[str, Any],
    columns: Sequence[str],
    pick: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None,
) -> str:
    """One CSV record, quoted as the csv module quotes (QUOTE_MINIMAL). ``pick``: the
    columns' values as a tuple (``records.row_picker(columns)``, made once by a caller that has many
    rows)."""
    row = pick(values) if pick is not None else tuple(map(values.get, columns))
    if _PLAIN.issuperset(map(type, row)):
        line = ",".join(map(str, row))  # the common row: numbers and text, no NULL
    else:
        by_type = _FIELD_BY_TYPE
        line = ",".join([by_type.get(type(v), csv_field)(v) for v in row])
    if "inf" in line or "nan" in line:
        # Maybe a non-finite float (MySQL stores none, but a value must never reach the model
        # as "inf"): csv_field decides, value by value. Text that merely contains them agrees.
        line = ",".join([csv_field(v) for v in row])
    # Most records need no quoting: then joining is the csv module's answer, ~4x cheaper.
    count = len(row)
    if (
        count > 1
        and line.count(",") == count - 1
        and '"' not in line
        and "\n" not in line
        and "\r" not in line
    ):
        return line + "\n"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([csv_field(v) for v in row])
    return out.getvalue()
