"""The local Bedrock Runtime endpoint through a real boto3 client: InvokeModel of the embedding
models (Titan Text Embeddings V2 and V1, Cohere Embed) answered by a real small embedding model,
its modeled errors, fault injection and call statistics; Converse with a forced tool, answered
by the local stand-in."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from cdc_scorer.local.endpoints import TITAN_V1, TITAN_V2, BackgroundModelServer

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2)


@pytest.fixture
def bedrock(models_threaded: BackgroundModelServer) -> Iterator[Any]:
    client = boto3.client("bedrock-runtime", endpoint_url=models_threaded.url, config=NO_RETRIES)
    yield client
    client.close()


def _invoke(client: Any, model_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    response = client.invoke_model(
        modelId=model_id,
        body=json.dumps(body),
        contentType="application/json",
        accept="application/json",
    )
    return json.loads(response["body"].read()), response


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_titan_v2_embeddings_are_real_and_normalized(bedrock: Any) -> None:
    def embedding(text: str) -> list[float]:
        answer, response = _invoke(
            bedrock, TITAN_V2, {"inputText": text, "dimensions": 256, "normalize": True}
        )
        assert response["contentType"] == "application/json"
        assert answer["inputTextTokenCount"] > 0
        assert answer["embeddingsByType"]["float"] == answer["embedding"]
        vector: list[float] = answer["embedding"]
        return vector

    bill = embedding("my bill is wrong")
    charged = embedding("I was charged twice this month")
    praise = embedding("great service, thank you so much")
    assert len(bill) == 256
    assert abs(math.sqrt(sum(x * x for x in bill)) - 1) < 1e-6  # normalized
    # A real model: the two billing complaints are closer to each other than to the praise.
    assert _cosine(bill, charged) > _cosine(bill, praise)
    assert embedding("my bill is wrong") == bill  # deterministic


def test_titan_v1_and_cohere_shapes(bedrock: Any) -> None:
    v1, _ = _invoke(bedrock, TITAN_V1, {"inputText": "hello"})
    assert len(v1["embedding"]) == 384 and v1["inputTextTokenCount"] == 1
    texts = ["my bill is wrong", "great service"]
    cohere, _ = _invoke(
        bedrock,
        "cohere.embed-english-v3",
        {"texts": texts, "input_type": "search_document", "truncate": "END"},
    )
    assert cohere["texts"] == texts and cohere["response_type"] == "embeddings_floats"
    assert [len(v) for v in cohere["embeddings"]] == [384, 384]


@pytest.mark.parametrize(
    ("model_id", "body", "code", "words"),
    [
        (TITAN_V2, {"inputText": ""}, "ValidationException", "inputText is required"),
        (TITAN_V2, {"inputText": "x", "dimensions": 300}, "ValidationException", "dimensions"),
        (TITAN_V2, {"inputText": "x", "dimensions": 1024}, "ValidationException", "256"),
        (TITAN_V2, {"inputText": "x" * 50_001}, "ValidationException", "maxLength"),
        ("cohere.embed-english-v3", {"texts": ["x"] * 97}, "ValidationException", "96"),
        ("amazon.no-such-model", {"inputText": "x"}, "ResourceNotFoundException", "not found"),
    ],
)
def test_modeled_errors(
    bedrock: Any, model_id: str, body: dict[str, Any], code: str, words: str
) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        _invoke(bedrock, model_id, body)
    error = caught.value.response["Error"]
    assert error["Code"] == code and words in error["Message"], error
    # botocore maps it to the service's modeled exception class.
    assert type(caught.value).__name__ == code


def test_faults_and_stats(bedrock: Any, models_threaded: BackgroundModelServer) -> None:
    models_threaded.set_faults({"bedrock": {"throttle_rate": 1.0}})
    seen = set()
    for _ in range(20):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            _invoke(bedrock, TITAN_V2, {"inputText": "x", "dimensions": 256})
        seen.add(caught.value.response["Error"]["Code"])
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert seen == {"ThrottlingException", "ModelNotReadyException"}
    models_threaded.set_faults({"bedrock": {"throttle_rate": 0.0, "error_5xx_rate": 1.0}})
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        _invoke(bedrock, TITAN_V2, {"inputText": "x", "dimensions": 256})
    assert caught.value.response["Error"]["Code"] in (
        "ServiceUnavailableException",
        "InternalServerException",
    )
    models_threaded.set_faults({"bedrock": {"error_5xx_rate": 0.0}})
    _invoke(bedrock, TITAN_V2, {"inputText": "x", "dimensions": 256})
    calls = models_threaded.stats()["operations"]["InvokeModel"][TITAN_V2]
    assert calls["calls"] == 22 and calls["rows"] == 1
    assert calls["errors"]["ThrottlingException"] + calls["errors"]["ModelNotReadyException"] == 20


CHAT = "anthropic.claude-3-haiku-20240307-v1:0"
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": ["billing", "network coverage", "other"]},
        "urgent": {"type": "boolean"},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
    },
}


def _converse(client: Any, text: str, model_id: str = CHAT, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 100},
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "record", "inputSchema": {"json": SCHEMA}}}],
            "toolChoice": {"tool": {"name": "record"}},
        },
        **extra,
    }
    return dict(client.converse(**request))


def test_converse_answers_through_the_forced_tool(bedrock: Any) -> None:
    answer = _converse(bedrock, "Rate this.\n\nYou charged me twice on my bill, terrible!")
    assert answer["stopReason"] == "tool_use"
    [block] = answer["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "record"
    tool_input = block["toolUse"]["input"]
    assert tool_input["topic"] == "billing" and tool_input["urgent"] is True
    assert -1 <= tool_input["score"] < 0  # negative text: the lower half of the range
    usage = answer["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] > 0
    good = _converse(bedrock, "Rate this.\n\nThe coverage is great, lovely signal everywhere")
    assert good["output"]["message"]["content"][0]["toolUse"]["input"]["topic"] == (
        "network coverage"
    )


def test_converse_errors_and_stop_reasons(
    bedrock: Any, models_threaded: BackgroundModelServer
) -> None:
    short = _converse(bedrock, "my bill", inferenceConfig={"maxTokens": 3})
    assert short["stopReason"] == "max_tokens"
    assert "toolUse" not in short["output"]["message"]["content"][0]
    for model_id, code in (
        ("anthropic.nope-v1:0", "ResourceNotFoundException"),
        (TITAN_V2, "ValidationException"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            _converse(bedrock, "my bill", model_id=model_id)
        assert caught.value.response["Error"]["Code"] == code
    assert _converse(bedrock, "my bill", model_id=f"us.{CHAT}")["stopReason"] == "tool_use"
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        _converse(bedrock, "word " * 9000)
    assert "Input is too long" in caught.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        bedrock.converse(modelId=CHAT, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    models_threaded.set_faults({"bedrock": {"invalid_answer_rate": 1.0}})
    broken = _converse(bedrock, "my bill")["output"]["message"]["content"][0]["toolUse"]
    assert broken["input"]["topic"] not in SCHEMA["properties"]["topic"]["enum"]  # type: ignore[index]
    models_threaded.set_faults({"bedrock": {"invalid_answer_rate": 0.0, "throttle_rate": 1.0}})
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        _converse(bedrock, "my bill")
    assert caught.value.response["Error"]["Code"] in (
        "ThrottlingException",
        "ModelNotReadyException",
    )
