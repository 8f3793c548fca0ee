"""Bedrock Converse with one forced tool: the model answers by calling the tool whose input
schema is ``output_schema`` (``toolChoice``), and the tool's input, checked against the
schema, is the row's prediction columns. One row a call."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cdc_scorer.core.models import Answer, ItemError, Outcome
from cdc_scorer.core.records import RowChange
from cdc_scorer.services.bedrock import BedrockSpec, answer_schema
from cdc_scorer.services.bedrock.embedding import CHARS_PER_TOKEN, row_text


class ConverseCodec:
    operation = "converse"

    def __init__(self, spec: BedrockSpec) -> None:
        assert spec.output_schema is not None and spec.max_tokens is not None
        self._spec = spec
        self._schema = spec.output_schema
        self._max_tokens = spec.max_tokens
        self.describe = f"Converse {spec.model_id}"
        self._tool_config = {
            "tools": [
                {
                    "toolSpec": {
                        "name": spec.tool_name,
                        "description": str(
                            self._schema.get("description")
                            or "Record the answer about the row, one value per property."
                        ),
                        "inputSchema": {"json": self._schema},
                    }
                }
            ],
            "toolChoice": {"tool": {"name": spec.tool_name}},
        }
        self._fixed_chars = len(json.dumps(self._tool_config)) + len(spec.system or "")

    def prepare(self, change: RowChange) -> str:
        return row_text(self._spec, change)

    def requests(
        self, items: Sequence[tuple[RowChange, str]]
    ) -> Iterable[Sequence[tuple[RowChange, str]]]:
        return [[item] for item in items]

    def encode(self, items: Sequence[str]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "modelId": self._spec.model_id,
            "messages": [{"role": "user", "content": [{"text": items[0]}]}],
            "inferenceConfig": {
                "maxTokens": self._max_tokens,
                "temperature": self._spec.temperature,
            },
            "toolConfig": self._tool_config,
        }
        if self._spec.system:
            request["system"] = [{"text": self._spec.system}]
        return request

    def decode(self, response: Mapping[str, Any], count: int) -> Answer:
        return Answer([self._outcome(response)])

    def _outcome(self, response: Mapping[str, Any]) -> Outcome:
        stop = str(response.get("stopReason"))
        content = response["output"]["message"]["content"]
        uses = [
            c["toolUse"]
            for c in content
            if "toolUse" in c and c["toolUse"].get("name") == self._spec.tool_name
        ]
        if stop != "tool_use" or not uses:
            said = " ".join(str(c["text"]) for c in content if "text" in c)[:500]
            fix = f" (raise max_tokens above {self._max_tokens})" if stop == "max_tokens" else ""
            return ItemError(
                f"stop_{stop}"[:64],
                f"the model stopped with {stop!r} without calling {self._spec.tool_name}{fix}"
                + (f"; it said: {said}" if said else ""),
            )
        answer = uses[0].get("input")
        wrong = answer_schema.violations(self._schema, answer)
        if wrong:
            return ItemError(
                "schema_violation",
                "the answer does not validate against output_schema: "
                + "; ".join(wrong)
                + f"; answer: {json.dumps(answer)[:2_000]}",
            )
        return answer_schema.column_values(self._schema, answer)

    def estimate_tokens(self, items: Sequence[str]) -> int:
        # Bedrock reserves the input and max_tokens when the call starts.
        chars = self._fixed_chars + sum(len(t) for t in items)
        return math.ceil(chars / CHARS_PER_TOKEN) + self._max_tokens

    def used_tokens(self, response: Mapping[str, Any]) -> tuple[int, int] | None:
        usage = response.get("usage")
        if not isinstance(usage, Mapping):
            return None
        return int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0))
