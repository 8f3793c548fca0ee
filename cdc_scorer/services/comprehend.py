"""Amazon Comprehend BatchDetectSentiment: ≤ 25 documents of ≤ 5,000 bytes a call, one
language a call, per-item errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Predicate

from cdc_scorer.core.errors import PoisonError
from cdc_scorer.core.models import Answer, ItemError, ModelSpec, Outcome, PredictionColumn
from cdc_scorer.core.records import RowChange
from cdc_scorer.core.spec import STRICT, Identifier, column_prefix

MAX_DOCUMENTS = 25
MAX_DOCUMENT_BYTES = 5_000
# Per-item codes that a later attempt can cure; the others are the document's own fault.
RETRIABLE_ITEM_CODES = {"INTERNAL_SERVER_ERROR", "ThrottlingException"}
SCORE_KEYS = ("Positive", "Negative", "Neutral", "Mixed")


@dataclass(frozen=True)
class ComprehendSpec(ModelSpec):
    """``[pipelines.comprehend]``: the sentiment of a text column."""

    __pydantic_config__ = STRICT
    service: ClassVar[str] = "comprehend"
    client_name: ClassVar[str] = "comprehend"
    default_max_rows: ClassVar[int] = 100  # 25 documents a call, four calls a batch

    text_column: Identifier  # the column whose sentiment is detected
    language: str = "en"  # the texts' language code
    language_column: Identifier | None = None  # or each row's, from this column
    # A text over Comprehend's 5,000 bytes: cut at a UTF-8 boundary, or a dead letter
    overlong_text: Literal["truncate", "dead_letter"] = "truncate"
    sentiment_column: Identifier = "sentiment"  # POSITIVE, NEGATIVE, NEUTRAL or MIXED
    # The four scores' columns: <prefix>positive, …negative, …neutral, …mixed
    score_column_prefix: Annotated[str, Predicate(column_prefix)] = "sentiment_"

    @property
    def input_columns(self) -> tuple[str, ...]:
        language = (self.language_column,) if self.language_column else ()
        return (self.text_column, *language)

    def prediction_columns(self) -> tuple[PredictionColumn, ...]:
        return (
            PredictionColumn(self.sentiment_column, "label", 16),
            *(
                PredictionColumn(self.score_column_prefix + key.lower(), "number")
                for key in SCORE_KEYS
            ),
        )

    @property
    def model_endpoint(self) -> str:
        return "comprehend:BatchDetectSentiment"

    @property
    def display_name(self) -> str:
        return "comprehend"

    def check_sample(self) -> dict[str, Any] | None:
        return {self.text_column: "cdc-scorer check: this works well"}

    def codec(self) -> ComprehendCodec:
        return ComprehendCodec(self)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` UTF-8 bytes (never a split char)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


# An item: (language, text).
Document = tuple[str, str]


class ComprehendCodec:
    operation = "batch_detect_sentiment"
    describe = "BatchDetectSentiment"

    def __init__(self, spec: ComprehendSpec) -> None:
        self._spec = spec
        prefix = spec.score_column_prefix
        self._scores = [(key, prefix + key.lower()) for key in SCORE_KEYS]

    def prepare(self, change: RowChange) -> Document:
        """(language, text) of a row, or PoisonError saying why it cannot be scored."""
        text = change.values.get(self._spec.text_column)
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if text is None:
            raise PoisonError("text is NULL", reason="null_text")
        if not isinstance(text, str):
            text = str(text)
        if not text.strip():
            raise PoisonError("text is empty", reason="empty_text")
        size = len(text.encode("utf-8"))
        if size > MAX_DOCUMENT_BYTES:
            if self._spec.overlong_text == "dead_letter":
                raise PoisonError(
                    f"text is {size} UTF-8 bytes, over Comprehend's {MAX_DOCUMENT_BYTES}",
                    reason="text_too_long",
                )
            text = truncate_utf8(text, MAX_DOCUMENT_BYTES)
        language = self._spec.language
        if self._spec.language_column:
            value = change.values.get(self._spec.language_column)
            if not value:
                raise PoisonError("language column is empty", reason="no_language")
            language = str(value)
        return language, text

    def requests(
        self, items: Sequence[tuple[RowChange, Document]]
    ) -> Iterable[Sequence[tuple[RowChange, Document]]]:
        by_language: dict[str, list[tuple[RowChange, Document]]] = {}
        for item in items:
            by_language.setdefault(item[1][0], []).append(item)
        for documents in by_language.values():
            for start in range(0, len(documents), MAX_DOCUMENTS):
                yield documents[start : start + MAX_DOCUMENTS]

    def encode(self, items: Sequence[Document]) -> dict[str, Any]:
        return {"TextList": [text for _, text in items], "LanguageCode": items[0][0]}

    def decode(self, response: Mapping[str, Any], count: int) -> Answer:
        outcomes: list[Outcome] = [
            ItemError("bad_response", "Comprehend returned neither a result nor an error")
        ] * count
        sentiment_column = self._spec.sentiment_column
        for item in response.get("ResultList", []):
            scores = item["SentimentScore"]
            columns = {sentiment_column: item["Sentiment"]}
            columns.update((column, scores[key]) for key, column in self._scores)
            outcomes[item["Index"]] = columns
        for error in response.get("ErrorList", []):
            code = str(error.get("ErrorCode", "item_error"))
            outcomes[error["Index"]] = ItemError(
                code.lower(), str(error.get("ErrorMessage", "")), code in RETRIABLE_ITEM_CODES
            )
        return Answer(outcomes)
