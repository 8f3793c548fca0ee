"""The local Converse stand-in: answers a forced tool call by computing each property of the
tool's input schema from real local models — never canned strings, and not an LLM. It reads
the prompt's last paragraph as the text to judge (write the row's text last, after a blank
line, as prompts usually do; an instruction before it would otherwise sway every answer):

- a string with ``enum``: the value whose embedding (``local/embeddings.py``, as passages) is
  nearest the text's (as a query);
- a number or an integer: how positive the text is (the local sentiment model's compound score,
  VADER), scaled into ``[minimum, maximum]`` (default ``[0, 1]``);
- a boolean: true when the text is negative (compound <= -0.35, where the local Comprehend says
  NEGATIVE) — a stand-in for properties like ``urgent`` or ``complaint``;
- any other string: the sentence of the prompt nearest the whole prompt (an extractive
  summary), cut to ``maxLength``.

Tokens are counted by ``embeddings.token_count`` (words and punctuation), not a real tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cdc_scorer.local import embeddings
from cdc_scorer.local.sentiment import SentimentModel

CONTEXT_TOKENS = 8_000  # the stand-in's context window: a longer prompt is refused
_NEGATIVE = -0.35  # where the local sentiment model calls a text NEGATIVE
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


class ConverseModel:
    def __init__(self) -> None:
        self._sentiment = SentimentModel()
        self._values: dict[tuple[str, ...], list[list[float]]] = {}  # an enum's embeddings

    def tool_input(self, prompt: str, schema: Mapping[str, Any]) -> dict[str, Any]:
        """The tool's input for ``prompt``: one value per property of ``schema``."""
        prompt = re.split(r"\n\s*\n", prompt.strip())[-1]
        compound = self._sentiment.compound(prompt)
        out: dict[str, Any] = {}
        for name, prop in dict(schema.get("properties", {})).items():
            kind = prop.get("type")
            if isinstance(kind, list):
                kind = next((k for k in kind if k != "null"), "string")
            if kind == "string" and prop.get("enum"):
                out[name] = self._nearest(prompt, [str(v) for v in prop["enum"]])
            elif kind in ("number", "integer"):
                low = float(prop.get("minimum", 0))
                high = float(prop.get("maximum", 1 if kind == "number" else 10))
                value = low + (compound + 1) / 2 * (high - low)
                out[name] = round(value) if kind == "integer" else round(value, 4)
            elif kind == "boolean":
                out[name] = compound <= _NEGATIVE
            elif kind == "string":
                summary = self._central_sentence(prompt)
                out[name] = summary[: int(prop.get("maxLength", len(summary)))]
            else:
                out[name] = None
        return out

    def _nearest(self, text: str, values: list[str]) -> str:
        known = self._values.get(tuple(values))
        if known is None:
            known = self._values[tuple(values)] = embeddings.embed(values)
        query = embeddings.embed([text], query=True)[0]
        scores = [sum(a * b for a, b in zip(query, v, strict=True)) for v in known]
        return values[scores.index(max(scores))]

    @staticmethod
    def _central_sentence(text: str) -> str:
        sentences = [s.strip() for s in _SENTENCES.split(text) if s.strip()]
        if len(sentences) <= 1:
            return text.strip()
        vectors = embeddings.embed([text, *sentences])
        scores = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
        return sentences[scores.index(max(scores))]


def output_tokens(tool_input: Mapping[str, Any]) -> int:
    return embeddings.token_count(json.dumps(tool_input))
