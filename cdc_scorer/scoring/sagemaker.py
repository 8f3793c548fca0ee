"""SageMaker InvokeEndpoint with text/csv: serialise, call, parse one line per row."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from cdc_scorer.errors import PoisonError, RetriableError
from cdc_scorer.records import Batch, DeadLetter, Prediction, RowChange, ScoredBatch
from cdc_scorer.retry import retrying
from cdc_scorer.scoring import require_complete
from cdc_scorer.scoring.aws import CallObserver, aws_errors
from cdc_scorer.spec import RetrySpec, SageMakerSpec


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


def csv_line(values: dict[str, Any], columns: Sequence[str]) -> str:
    """One CSV record, quoted as the csv module quotes (QUOTE_MINIMAL)."""
    by_type = _FIELD_BY_TYPE
    fields = [by_type.get(type(v), csv_field)(v) for v in map(values.get, columns)]
    line = ",".join(fields)
    if "inf" in line or "nan" in line:
        # Maybe a non-finite float (MySQL stores none, but a value must never reach the model
        # as "inf"): csv_field decides, value by value. Text that merely contains them agrees.
        fields = [csv_field(v) for v in map(values.get, columns)]
        line = ",".join(fields)
    # Most records need no quoting: then joining is the csv module's answer, ~4x cheaper.
    if (
        len(fields) > 1
        and line.count(",") == len(fields) - 1
        and '"' not in line
        and "\n" not in line
        and "\r" not in line
    ):
        return line + "\n"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def payload_text(change: RowChange, columns: Sequence[str]) -> str:
    return json.dumps({c: change.values.get(c) for c in columns}, default=str)[:65_000]


class SageMakerScorer:
    def __init__(
        self,
        client: Any,
        spec: SageMakerSpec,
        retry: RetrySpec,
        on_retry: Callable[[str, RetriableError], None] | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self._client = client
        self._spec = spec
        self._retry = retry
        self._on_retry = on_retry
        self._on_call = on_call
        self.model_endpoint = spec.endpoint_name

    async def score(self, batch: Batch) -> ScoredBatch:
        dead: list[DeadLetter] = []
        lines: list[tuple[RowChange, str]] = []
        for change in batch.upserts:
            try:
                require_complete(change, self._spec.feature_columns)
                lines.append((change, csv_line(change.values, self._spec.feature_columns)))
            except PoisonError as exc:
                dead.append(_dead(change, exc, self._spec.feature_columns))
        predictions: list[Prediction] = []
        calls = await self._score_lines(lines, predictions, dead)
        return ScoredBatch(
            sequence=batch.sequence,
            upserts=tuple(predictions),
            deletes=tuple(c.key for c in batch.deletes),
            dead_letters=tuple(dead),
            checkpoint=batch.checkpoint,
            model_calls=calls,
            rows_skipped=batch.rows_skipped,
            truncate=batch.truncate,
        )

    async def _score_lines(
        self,
        lines: list[tuple[RowChange, str]],
        predictions: list[Prediction],
        dead: list[DeadLetter],
    ) -> int:
        """Score; on a poison answer split in halves to isolate the rejected rows."""
        if not lines:
            return 0
        try:
            answers, variant = await retrying(
                lambda: self._invoke("".join(line for _, line in lines), len(lines)),
                spec=self._retry,
                stage="sagemaker",
                on_retry=self._on_retry,
            )
        except PoisonError as exc:
            if len(lines) == 1:
                dead.append(_dead(lines[0][0], exc, self._spec.feature_columns))
                return 1
            middle = len(lines) // 2
            left = await self._score_lines(lines[:middle], predictions, dead)
            return 1 + left + await self._score_lines(lines[middle:], predictions, dead)
        label_column, probability_column = self._spec.label_column, self._spec.probability_column
        # The rows of one transaction share its id: format it once, not once per row.
        tx: object = None
        tx_text: str | None = None
        for (change, _), (label, probability) in zip(lines, answers, strict=True):
            if change.tx is not tx:
                tx = change.tx
                tx_text = str(tx) if tx else None
            predictions.append(
                Prediction(
                    key=change.key,
                    columns={label_column: label, probability_column: probability},
                    variant=variant,
                    source_position=tx_text,
                    source_committed_at=change.committed_at,
                )
            )
        return 1

    async def _invoke(
        self, body: str, rows: int
    ) -> tuple[list[tuple[str, float | None]], str | None]:
        with aws_errors(f"InvokeEndpoint {self._spec.endpoint_name}", self._on_call):
            response = await self._client.invoke_endpoint(
                EndpointName=self._spec.endpoint_name,
                ContentType=self._spec.content_type,
                Accept="text/csv",
                Body=body.encode("utf-8"),
            )
            async with response["Body"] as stream:
                text = (await stream.read()).decode("utf-8")
        # Answers are rarely quoted: then splitting is what the csv module would read.
        records: Iterable[list[str]] = (
            csv.reader(io.StringIO(text))
            if '"' in text or "\r" in text
            else (line.split(",") for line in text.split("\n") if line)
        )
        answers = [self._parse(record) for record in records if record]
        if len(answers) != rows:
            raise PoisonError(
                f"endpoint answered {len(answers)} lines for {rows} rows", reason="bad_response"
            )
        return answers, response.get("InvokedProductionVariant")

    def _parse(self, record: list[str]) -> tuple[str, float | None]:
        """(label, probability of the positive label) for each output form."""
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


def _dead(change: RowChange, exc: PoisonError, columns: Sequence[str]) -> DeadLetter:
    return DeadLetter(
        key=change.key,
        reason=exc.reason,
        error=str(exc)[:60_000],
        payload=payload_text(change, columns),
        source_position=str(change.tx) if change.tx else None,
    )
