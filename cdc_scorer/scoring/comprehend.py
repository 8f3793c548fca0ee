"""Comprehend BatchDetectSentiment: ≤ 25 documents of ≤ 5,000 bytes a call, per-item errors."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from cdc_scorer.errors import PoisonError, RetriableError
from cdc_scorer.records import Batch, DeadLetter, Prediction, RowChange, ScoredBatch
from cdc_scorer.retry import backoff_s, retrying
from cdc_scorer.scoring import require_complete
from cdc_scorer.scoring.aws import CallObserver, aws_errors
from cdc_scorer.scoring.sagemaker import payload_text
from cdc_scorer.spec import ComprehendSpec, RetrySpec

MAX_DOCUMENTS = 25
MAX_DOCUMENT_BYTES = 5_000
# Per-item codes that a later attempt can cure; the others are the document's own fault.
RETRIABLE_ITEM_CODES = {"INTERNAL_SERVER_ERROR", "ThrottlingException"}


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` UTF-8 bytes (never a split char)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


class ComprehendScorer:
    model_endpoint = "comprehend:BatchDetectSentiment"

    def __init__(
        self,
        client: Any,
        spec: ComprehendSpec,
        retry: RetrySpec,
        on_retry: Callable[[str, RetriableError], None] | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self._client = client
        self._spec = spec
        self._retry = retry
        self._on_retry = on_retry
        self._on_call = on_call
        self._columns = (
            spec.text_column,
            *((spec.language_column,) if spec.language_column else ()),
        )

    def _document(self, change: RowChange) -> tuple[str, str]:
        """(language, text) of a row, or PoisonError saying why it cannot be scored."""
        require_complete(change, self._columns)
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

    async def score(self, batch: Batch) -> ScoredBatch:
        dead: list[DeadLetter] = []
        by_language: dict[str, list[tuple[RowChange, str]]] = {}
        for change in batch.upserts:
            try:
                language, text = self._document(change)
            except PoisonError as exc:
                dead.append(self._dead(change, exc.reason, str(exc)))
                continue
            by_language.setdefault(language, []).append((change, text))
        predictions: list[Prediction] = []
        calls = 0
        for language, documents in by_language.items():
            for start in range(0, len(documents), MAX_DOCUMENTS):
                chunk = documents[start : start + MAX_DOCUMENTS]
                calls += await self._score_chunk(language, chunk, predictions, dead)
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

    async def _score_chunk(
        self,
        language: str,
        documents: list[tuple[RowChange, str]],
        predictions: list[Prediction],
        dead: list[DeadLetter],
    ) -> int:
        calls = 0
        attempt = 0
        while documents:
            try:
                calls += 1
                texts = [text for _, text in documents]
                result = await retrying(
                    functools.partial(self._call, language, texts),
                    spec=self._retry,
                    stage="comprehend",
                    on_retry=self._on_retry,
                )
            except PoisonError as exc:
                if len(documents) == 1:
                    dead.append(self._dead(documents[0][0], exc.reason, str(exc)))
                    return calls
                middle = len(documents) // 2
                calls += await self._score_chunk(language, documents[:middle], predictions, dead)
                return calls + await self._score_chunk(
                    language, documents[middle:], predictions, dead
                )
            for item in result.get("ResultList", []):
                change = documents[item["Index"]][0]
                scores = item["SentimentScore"]
                prefix = self._spec.score_column_prefix
                predictions.append(
                    Prediction(
                        key=change.key,
                        columns={
                            self._spec.sentiment_column: item["Sentiment"],
                            prefix + "positive": scores["Positive"],
                            prefix + "negative": scores["Negative"],
                            prefix + "neutral": scores["Neutral"],
                            prefix + "mixed": scores["Mixed"],
                        },
                        variant=None,
                        source_position=str(change.tx) if change.tx else None,
                        source_committed_at=change.committed_at,
                    )
                )
            again: list[tuple[RowChange, str]] = []
            for error in result.get("ErrorList", []):
                document = documents[error["Index"]]
                if error.get("ErrorCode") in RETRIABLE_ITEM_CODES:
                    again.append(document)
                else:
                    dead.append(
                        self._dead(
                            document[0],
                            str(error.get("ErrorCode", "item_error")).lower(),
                            str(error.get("ErrorMessage", "")),
                        )
                    )
            documents = again
            if documents:
                if self._on_retry is not None:
                    self._on_retry(
                        "comprehend_items", RetriableError("item errors", code="item_error")
                    )
                await asyncio.sleep(backoff_s(self._retry, attempt))
                attempt += 1
        return calls

    async def _call(self, language: str, texts: list[str]) -> dict[str, Any]:
        with aws_errors("BatchDetectSentiment", self._on_call):
            result: dict[str, Any] = await self._client.batch_detect_sentiment(
                TextList=texts, LanguageCode=language
            )
        return result

    def _dead(self, change: RowChange, reason: str, error: str) -> DeadLetter:
        return DeadLetter(
            key=change.key,
            reason=reason,
            error=error[:60_000],
            payload=payload_text(change, self._columns),
            source_position=str(change.tx) if change.tx else None,
        )
