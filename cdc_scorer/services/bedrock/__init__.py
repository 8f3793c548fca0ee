"""Amazon Bedrock Runtime: an embedding of a row's text (``InvokeModel`` of Titan Text
Embeddings or Cohere Embed) or columns an LLM derives from the row (``Converse`` with one
forced tool whose input schema is ``output_schema``), within a per-minute budget of requests
and tokens (``services/budget.py``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, Gt, Le, MinLen, Predicate

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.models import ModelCodec, ModelSpec, PredictionColumn
from cdc_scorer.core.spec import STRICT, BackfillSpec, Identifier
from cdc_scorer.services.bedrock import answer_schema
from cdc_scorer.services.bedrock.templates import template_columns
from cdc_scorer.services.budget import CallBudget

# The request shape of an embedding model, by what its id (or an inference profile's, or an
# ARN) contains; and the length of its vectors when the section does not say.
EMBEDDING_SHAPES = (
    ("titan-embed-text-v2", "titan-v2", 1024),
    ("titan-embed-text-v1", "titan-v1", 1536),
    ("titan-embed-g1-text", "titan-v1", 1536),
    ("cohere.embed-", "cohere", 1024),
)
TITAN_V2_DIMENSIONS = (256, 512, 1024)


def embedding_shape(model_id: str) -> tuple[str, int] | None:
    """(request shape, default dimensions) of an embedding model id; None: not one we know."""
    for marker, shape, dimensions in EMBEDDING_SHAPES:
        if marker in model_id:
            return shape, dimensions
    return None


def _tool_name(text: str) -> bool:
    return re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_-]{0,63}", text) is not None


QUIET_PACE = 0.95  # the part of the budget a re-score paces itself to while the stream is quiet


@dataclass(frozen=True)
class BedrockSpec(ModelSpec):
    """``[pipelines.bedrock]``."""

    __pydantic_config__ = STRICT
    service: ClassVar[str] = "bedrock"
    client_name: ClassVar[str] = "bedrock-runtime"
    # Titan and Converse take one row a call: a batch is that many calls, in flight together
    # up to batching.max_in_flight.
    default_max_rows: ClassVar[int] = 96

    model_id: Annotated[str, MinLen(1)]  # e.g. amazon.titan-embed-text-v2:0
    # embedding: a vector column of a text; converse: columns of an LLM's structured answer
    task: Literal["embedding", "converse"]
    # Task embedding: the column embedded, or
    text_column: Identifier | None = None
    # a template of the row's columns ("{title}: {body}"), one of the two
    text_template: str | None = None
    embedding_column: Identifier = "embedding"  # the predictions table's vector column
    # The vectors' length: Titan V2's dimensions (256, 512 or 1024, sent with each call);
    # for the other models the length they answer (Titan V1 1536, Cohere Embed v3 1024).
    dimensions: Annotated[int, Ge(1), Le(16_000)] | None = None
    normalize: bool = True  # Titan V2
    # Cohere: the stored rows are documents
    input_type: Literal["search_document", "search_query", "classification", "clustering"] = (
        "search_document"
    )
    # Task converse: the prompt, a template of the row's columns
    prompt_template: str | None = None
    system: str | None = None  # the system prompt
    max_tokens: Annotated[int, Ge(1), Le(200_000)] | None = None  # the longest answer
    temperature: Annotated[float, Ge(0), Le(1)] = 0.0  # 0: the same answer for the same row
    # The JSON Schema of the answer (a table): each property becomes a column
    output_schema: dict[str, Any] | None = None
    tool_name: Annotated[str, Predicate(_tool_name)] = "record_answer"  # the answer's tool
    # Budget: Bedrock's quotas per model and region (None: not limited here), requests
    requests_per_minute: Annotated[int, Ge(1)] | None = None
    tokens_per_minute: Annotated[int, Ge(1)] | None = None  # and tokens
    # The part of the budget a re-score may use: the stream always may use all of it.
    rescore_share: Annotated[float, Gt(0), Le(1)] = 0.5

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("\n".join(problems))  # one line each: config.py lists them

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.task == "embedding":
            problems += [
                f'{key}: only for task = "converse" — remove it'
                for key in ("prompt_template", "system", "max_tokens", "output_schema")
                if getattr(self, key) is not None
            ]
            shape = embedding_shape(self.model_id)
            if shape is None:
                known = ", ".join(marker for marker, _, _ in EMBEDDING_SHAPES)
                problems.append(
                    f"model_id: {self.model_id!r} is not an embedding model cdc-scorer knows "
                    f"the request of (ids containing {known})"
                )
            elif (
                shape[0] == "titan-v2"
                and self.dimensions is not None
                and self.dimensions not in TITAN_V2_DIMENSIONS
            ):
                problems.append("dimensions: Titan Text Embeddings V2 makes 256, 512 or 1024")
            if (self.text_column is None) == (self.text_template is None):
                problems.append("set one of text_column and text_template (the text embedded)")
            elif self.text_template is not None:
                problems += [f"text_template: {w}" for w in template_columns(self.text_template)[1]]
        else:
            problems += [
                f'{key}: only for task = "embedding" — remove it'
                for key in ("text_column", "text_template", "dimensions")
                if getattr(self, key) is not None
            ]
            if self.prompt_template is None:
                problems.append('prompt_template: required for task = "converse"')
            else:
                wrong = template_columns(self.prompt_template)[1]
                problems += [f"prompt_template: {w}" for w in wrong]
            if self.max_tokens is None:
                problems.append(
                    'max_tokens: required for task = "converse" (Bedrock reserves tokens per '
                    "minute from it: set the longest answer you expect, e.g. 512)"
                )
            if self.output_schema is None:
                problems.append(
                    'output_schema: required for task = "converse" — a table holding the JSON '
                    "Schema of the answer (each property becomes a column)"
                )
            else:
                problems += answer_schema.schema_problems(self.output_schema)
        return problems

    @property
    def template(self) -> str | None:
        """The text embedded or the prompt, as a template (None: ``text_column`` as it is)."""
        return self.text_template if self.task == "embedding" else self.prompt_template

    @functools.cached_property
    def input_columns(self) -> tuple[str, ...]:
        if self.template is None:
            return (self.text_column,) if self.text_column else ()
        return template_columns(self.template)[0]

    @property
    def vector_dimensions(self) -> int:
        shape = embedding_shape(self.model_id)
        assert shape is not None
        return self.dimensions or shape[1]

    def prediction_columns(self) -> tuple[PredictionColumn, ...]:
        if self.task == "embedding":
            return (PredictionColumn(self.embedding_column, "vector", self.vector_dimensions),)
        assert self.output_schema is not None
        return answer_schema.columns(self.output_schema)

    @property
    def model_endpoint(self) -> str:
        operation = "InvokeModel" if self.task == "embedding" else "Converse"
        return f"bedrock:{operation}:{self.model_id}"[:255]

    @property
    def display_name(self) -> str:
        return f"bedrock {self.model_id}"

    @property
    def pricing_key(self) -> str:
        return self.model_id

    def check_sample(self) -> dict[str, Any] | None:
        return {c: "cdc-scorer check: my bill is wrong" for c in self.input_columns}

    def codec(self) -> ModelCodec[Any]:
        if self.task == "embedding":
            from cdc_scorer.services.bedrock.embedding import EmbeddingCodec

            return EmbeddingCodec(self)
        from cdc_scorer.services.bedrock.converse import ConverseCodec

        return ConverseCodec(self)

    def rescore_rows_per_s(self, stream_quiet: bool = False) -> float | None:
        if self.requests_per_minute is None:
            return None
        shape = embedding_shape(self.model_id) if self.task == "embedding" else None
        rows_per_call = 96 if shape is not None and shape[0] == "cohere" else 1
        calls_per_s = self.requests_per_minute / 60
        if stream_quiet:
            # Nothing to queue in front of: nearly the whole budget (the budget itself holds
            # the limit; a pace just under it keeps the calls from waiting one by one).
            return QUIET_PACE * calls_per_s * rows_per_call
        # Four fifths of the share: a re-score at its full share would wait for the budget
        # call by call, and the stream's rows queue behind its batches (measured: freshness
        # p50 35 s beside a re-score at its full share, docs/bedrock-benchmarks.md).
        return 0.8 * self.rescore_share * calls_per_s * rows_per_call

    batch_clients: ClassVar[tuple[str, ...]] = ("bedrock", "s3")

    def batch_problems(self, backfill: BackfillSpec) -> list[str]:
        if backfill.mode == "realtime":
            return []
        from cdc_scorer.services.bedrock.batch import MAX_RECORDS, MIN_RECORDS

        if not MIN_RECORDS <= backfill.records_per_job <= MAX_RECORDS:
            return [
                f"records_per_job: Bedrock batch inference takes {MIN_RECORDS} to "
                f"{MAX_RECORDS:,} records a job (its quotas) — set one in that range"
            ]
        return []

    def batch(
        self, pipeline: str, backfill: BackfillSpec, clients: Mapping[str, Any]
    ) -> BatchService:
        from cdc_scorer.services.bedrock.batch import BedrockBatchJobs

        return BedrockBatchJobs(self, pipeline, backfill, clients["bedrock"], clients["s3"])

    def budget(self) -> CallBudget:
        # Always one, if only to count the tokens: without limits it never waits.
        return CallBudget(
            self.requests_per_minute, self.tokens_per_minute, rescore_share=self.rescore_share
        )
