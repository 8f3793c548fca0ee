"""Bedrock InvokeModel of an embedding model: Titan Text Embeddings (V2: ``inputText``,
``dimensions``, ``normalize``; V1: ``inputText``), one text a call; Cohere Embed (``texts``,
``input_type``), up to 96 texts a call. The vector goes to one prediction column."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cdc_scorer.core.errors import PoisonError
from cdc_scorer.core.models import Answer, ItemError, Outcome
from cdc_scorer.core.records import RowChange
from cdc_scorer.services.bedrock import BedrockSpec, embedding_shape
from cdc_scorer.services.bedrock.templates import render

MAX_COHERE_TEXTS = 96
MAX_COHERE_CHARS = 2_048  # Cohere Embed v3 on Bedrock: per text
MAX_TITAN_CHARS = 50_000  # Titan Text Embeddings: per call (and 8,192 tokens)
# Tokens reserved per character before the answer says: English runs ~4-5 characters a token;
# a third is the safe side for other scripts.
CHARS_PER_TOKEN = 3


def row_text(spec: BedrockSpec, change: RowChange) -> str:
    """The text of a row that a model reads: its column, or the template over its columns."""
    if spec.template is None:
        assert spec.text_column is not None
        value = change.values.get(spec.text_column)
        if value is None:
            raise PoisonError(f"{spec.text_column} is NULL", reason="null_text")
        text = (
            bytes(value).decode("utf-8", errors="replace")
            if isinstance(value, bytes | bytearray)
            else str(value)
        )
    else:
        try:
            text = render(spec.template, change.values, spec.input_columns)
        except (ValueError, TypeError) as exc:
            raise PoisonError(
                f"the template cannot format this row: {exc}", reason="template_error"
            ) from None
    if not text.strip():
        raise PoisonError("the text is empty", reason="empty_text")
    return text


class EmbeddingCodec:
    operation = "invoke_model"

    def __init__(self, spec: BedrockSpec) -> None:
        self._spec = spec
        shape = embedding_shape(spec.model_id)
        assert shape is not None  # the section's own check
        self._shape = shape[0]
        self._dimensions = spec.vector_dimensions
        self._column = spec.embedding_column
        self.describe = f"InvokeModel {spec.model_id}"

    def prepare(self, change: RowChange) -> str:
        text = row_text(self._spec, change)
        limit = MAX_COHERE_CHARS if self._shape == "cohere" else MAX_TITAN_CHARS
        if len(text) > limit:
            # Bedrock refuses it with a ValidationException: said here, without a call.
            raise PoisonError(
                f"the text is {len(text)} characters, over the model's {limit}",
                reason="text_too_long",
            )
        return text

    def requests(
        self, items: Sequence[tuple[RowChange, str]]
    ) -> Iterable[Sequence[tuple[RowChange, str]]]:
        size = MAX_COHERE_TEXTS if self._shape == "cohere" else 1
        for start in range(0, len(items), size):
            yield items[start : start + size]

    def encode(self, items: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any]
        if self._shape == "cohere":
            body = {"texts": list(items), "input_type": self._spec.input_type}
        elif self._shape == "titan-v2":
            body = {
                "inputText": items[0],
                "dimensions": self._dimensions,
                "normalize": self._spec.normalize,
            }
        else:
            body = {"inputText": items[0]}
        return {
            "modelId": self._spec.model_id,
            "contentType": "application/json",
            "accept": "application/json",
            "body": json.dumps(body, ensure_ascii=False).encode("utf-8"),
        }

    def decode(self, response: Mapping[str, Any], count: int) -> Answer:
        answer = json.loads(bytes(response["body"]))
        if self._shape == "cohere":
            vectors = answer["embeddings"]
            if isinstance(vectors, Mapping):  # asked with embedding_types: by type
                vectors = vectors["float"]
        else:
            vectors = [answer["embedding"]]
        return Answer([self._outcome(v) for v in vectors])

    def _outcome(self, vector: Any) -> Outcome:
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in vector
        ):
            return ItemError("bad_response", "the embedding is not a list of finite numbers")
        if len(vector) != self._dimensions:
            return ItemError(
                "wrong_dimensions",
                f"the model answered {len(vector)} dimensions, the column holds "
                f"{self._dimensions}: set [pipelines.bedrock] dimensions = {len(vector)} (and "
                "re-create the predictions table)",
            )
        return {self._column: [float(x) for x in vector]}

    def estimate_tokens(self, items: Sequence[str]) -> int:
        return sum(max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) for t in items)

    def used_tokens(self, response: Mapping[str, Any]) -> tuple[int, int] | None:
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        count = headers.get("x-amzn-bedrock-input-token-count")
        return (int(count), 0) if count is not None and str(count).isdigit() else None
