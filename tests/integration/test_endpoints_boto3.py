"""The local endpoints through real boto3 clients: wire shapes, modeled errors, faults, stats."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.churn_model import ChurnModel
from cdc_scorer.local.endpoints import BackgroundModelServer

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([row[c] for c in FEATURE_COLUMNS])
    return out.getvalue().encode()


@pytest.fixture
def runtime(models_threaded: BackgroundModelServer) -> Iterator[Any]:
    client = boto3.client("sagemaker-runtime", endpoint_url=models_threaded.url, config=NO_RETRIES)
    yield client
    client.close()


@pytest.fixture
def comprehend(models_threaded: BackgroundModelServer) -> Iterator[Any]:
    client = boto3.client("comprehend", endpoint_url=models_threaded.url, config=NO_RETRIES)
    yield client
    client.close()


def test_single_row_autopilot_output(runtime: Any) -> None:
    row = next(ChurnRowGenerator(1).rows(1))
    response = runtime.invoke_endpoint(
        EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_csv([row])
    )
    assert response["ContentType"].startswith("text/csv")
    assert response["InvokedProductionVariant"] == "AllTraffic"
    label, probability = response["Body"].read().decode().strip().split(",")
    p_true = ChurnModel.load().probability([str(row[c]) for c in FEATURE_COLUMNS])
    assert label == ("True." if p_true >= 0.5 else "False.")
    assert float(probability) == pytest.approx(max(p_true, 1 - p_true))


def test_multi_row_body_of_thousands(runtime: Any) -> None:
    rows = list(ChurnRowGenerator(2).rows(5000))
    response = runtime.invoke_endpoint(
        EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_csv(rows)
    )
    lines = response["Body"].read().decode().splitlines()
    assert len(lines) == 5000
    model = ChurnModel.load()
    for row, line in zip(rows[:50], lines[:50], strict=True):
        p_true = model.probability([str(row[c]) for c in FEATURE_COLUMNS])
        assert line.split(",")[0] == ("True." if p_true >= 0.5 else "False.")


def test_output_forms(runtime: Any) -> None:
    rows = list(ChurnRowGenerator(3).rows(3))
    model = ChurnModel.load()
    expected = [model.probability([str(r[c]) for c in FEATURE_COLUMNS]) for r in rows]
    labels = (
        runtime.invoke_endpoint(
            EndpointName="churn-label-only", ContentType="text/csv", Body=_csv(rows)
        )["Body"]
        .read()
        .decode()
        .splitlines()
    )
    assert labels == [("True." if p >= 0.5 else "False.") for p in expected]
    probabilities = (
        runtime.invoke_endpoint(
            EndpointName="churn-probabilities", ContentType="text/csv", Body=_csv(rows)
        )["Body"]
        .read()
        .decode()
    )
    parsed = [json.loads(field[0]) for field in csv.reader(io.StringIO(probabilities))]
    assert [p[1] for p in parsed] == pytest.approx(expected)
    assert [p[0] + p[1] for p in parsed] == pytest.approx([1.0] * 3)


def test_unknown_endpoint_is_validation_error(runtime: Any) -> None:
    with pytest.raises(runtime.exceptions.ValidationError) as caught:
        runtime.invoke_endpoint(EndpointName="nope", ContentType="text/csv", Body=b"1\n")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "nope" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"PA,1,2\n", "expected 20 fields, got 3"),
        (
            b"PA,163,806,403-2562,no,yes,300,lots,3,7.5,3.9,4,6.5,4.0,100,5.1,4.9,6,5.6,3\n",
            "day_mins: could not convert 'lots'",
        ),
    ],
)
def test_bad_record_is_model_error(runtime: Any, body: bytes, message: str) -> None:
    with pytest.raises(runtime.exceptions.ModelError) as caught:
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=body
        )
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert message in response["OriginalMessage"]
    assert response["LogStreamArn"].startswith("arn:aws:logs:")


def test_body_over_6mb_is_rejected(runtime: Any) -> None:
    with pytest.raises(runtime.exceptions.ValidationError) as caught:
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint",
            ContentType="text/csv",
            Body=b"x" * (6_291_456 + 1),
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def _http(url: str, data: bytes | None = None, content_type: str = "text/csv") -> tuple[int, bytes]:
    """One plain HTTP call (unsigned); returns status and body, closing everything."""
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": content_type},
        method="GET" if data is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_container_contract(models_threaded: BackgroundModelServer) -> None:
    assert _http(f"{models_threaded.url}/ping")[0] == 200
    row = next(ChurnRowGenerator(4).rows(1))
    status, body = _http(f"{models_threaded.url}/invocations", _csv([row]))
    assert status == 200 and body.decode().split(",")[0] in ("True.", "False.")
    status, body = _http(f"{models_threaded.url}/invocations", b"1,2\n")
    assert status == 400 and b"expected 20 fields" in body


def test_detect_sentiment(comprehend: Any) -> None:
    result = comprehend.detect_sentiment(Text="great service, thank you", LanguageCode="en")
    assert result["Sentiment"] == "POSITIVE"
    assert sum(result["SentimentScore"].values()) == pytest.approx(1.0)


def test_batch_detect_sentiment_with_item_errors(comprehend: Any) -> None:
    texts = ["great service, thank you", "x" * 5001, "terrible, I am cancelling", "é" * 2501]
    result = comprehend.batch_detect_sentiment(TextList=texts, LanguageCode="en")
    assert [(r["Index"], r["Sentiment"]) for r in result["ResultList"]] == [
        (0, "POSITIVE"),
        (2, "NEGATIVE"),
    ]
    assert [(e["Index"], e["ErrorCode"]) for e in result["ErrorList"]] == [
        (1, "TEXT_SIZE_LIMIT_EXCEEDED"),
        (3, "TEXT_SIZE_LIMIT_EXCEEDED"),  # 5002 UTF-8 bytes in 2501 characters
    ]


def test_comprehend_modeled_errors(comprehend: Any) -> None:
    with pytest.raises(comprehend.exceptions.BatchSizeLimitExceededException):
        comprehend.batch_detect_sentiment(TextList=["ok"] * 26, LanguageCode="en")
    with pytest.raises(comprehend.exceptions.TextSizeLimitExceededException):
        comprehend.detect_sentiment(Text="x" * 5001, LanguageCode="en")
    # botocore itself refuses empty text (min length 1); switch that off to reach the server.
    unvalidated = boto3.client(
        "comprehend",
        endpoint_url=comprehend.meta.endpoint_url,
        config=NO_RETRIES.merge(Config(parameter_validation=False)),
    )
    try:
        with pytest.raises(unvalidated.exceptions.InvalidRequestException):
            unvalidated.detect_sentiment(Text="", LanguageCode="en")
        with pytest.raises(unvalidated.exceptions.InvalidRequestException) as caught:
            unvalidated.batch_detect_sentiment(TextList=["fine", ""], LanguageCode="en")
    finally:
        unvalidated.close()
    assert caught.value.response["Reason"] == "INVALID_DOCUMENT"
    with pytest.raises(comprehend.exceptions.UnsupportedLanguageException) as caught:
        comprehend.detect_sentiment(Text="sehr gut", LanguageCode="de")
    assert "English-only" in caught.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        comprehend.detect_sentiment(Text="hi", LanguageCode="xx")
    assert caught.value.response["Error"]["Code"] == "ValidationException"


def test_unsigned_call_is_refused(models_threaded: BackgroundModelServer) -> None:
    url = f"{models_threaded.url}/endpoints/churn-autopilot-endpoint/invocations"
    assert _http(url, b"1\n")[0] == 403


def _row_body() -> bytes:
    return _csv(list(ChurnRowGenerator(5).rows(2)))


def test_fault_throttling(
    models_threaded: BackgroundModelServer, runtime: Any, comprehend: Any
) -> None:
    models_threaded.set_faults({"all": {"throttle_rate": 1.0}})
    seen: dict[str, int] = {}
    for _ in range(40):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            runtime.invoke_endpoint(
                EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
            )
        code = caught.value.response["Error"]["Code"]
        seen[code] = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    assert seen == {"ThrottlingException": 400, "ModelNotReadyException": 429}
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        comprehend.batch_detect_sentiment(TextList=["ok"], LanguageCode="en")
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"


def test_fault_5xx(models_threaded: BackgroundModelServer, runtime: Any) -> None:
    models_threaded.set_faults({"sagemaker": {"error_5xx_rate": 1.0}})
    seen: set[tuple[str, int]] = set()
    for _ in range(40):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            runtime.invoke_endpoint(
                EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
            )
        error = caught.value.response
        seen.add((error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]))
    assert seen == {("InternalFailure", 500), ("ServiceUnavailable", 503)}
    assert isinstance(
        caught.value, runtime.exceptions.InternalFailure | runtime.exceptions.ServiceUnavailable
    )


def test_fault_model_error(
    models_threaded: BackgroundModelServer, runtime: Any, comprehend: Any
) -> None:
    models_threaded.set_faults({"all": {"model_error_rate": 1.0}})
    with pytest.raises(runtime.exceptions.ModelError):
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
        )
    result = comprehend.batch_detect_sentiment(TextList=["ok", "fine"], LanguageCode="en")
    assert [e["ErrorCode"] for e in result["ErrorList"]] == ["INTERNAL_SERVER_ERROR"] * 2


def test_fault_latency(models_threaded: BackgroundModelServer, runtime: Any) -> None:
    models_threaded.set_faults({"sagemaker": {"latency_ms": 100, "latency_per_row_ms": 50}})
    started = time.monotonic()
    runtime.invoke_endpoint(
        EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
    )
    assert time.monotonic() - started >= 0.2  # 100 ms + 2 rows x 50 ms, a lower bound only


def test_fault_down_refuses_connections(
    models_threaded: BackgroundModelServer, runtime: Any
) -> None:
    runtime.invoke_endpoint(  # a kept-alive connection exists before going down
        EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
    )
    models_threaded.go_down()
    with pytest.raises(
        (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError)
    ):
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
        )
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
        )
    models_threaded.go_up()
    response = runtime.invoke_endpoint(
        EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
    )
    assert len(response["Body"].read().decode().splitlines()) == 2


def _post_json(url: str, body: Any) -> tuple[int, Any]:
    status, answer = _http(url, json.dumps(body).encode(), "application/json")
    return status, json.loads(answer)


def test_faults_over_http(models_threaded: BackgroundModelServer, runtime: Any) -> None:
    status, faults = _post_json(
        f"{models_threaded.url}/_local/faults", {"comprehend": {"latency_ms": 40}}
    )
    assert status == 200 and faults["comprehend"]["latency_ms"] == 40
    assert faults["sagemaker"]["latency_ms"] == 0
    status, error = _post_json(f"{models_threaded.url}/_local/faults", {"all": {"bogus": 1}})
    assert status == 400 and "bogus" in error["error"]
    status, error = _post_json(
        f"{models_threaded.url}/_local/faults", {"all": {"throttle_rate": 2}}
    )
    assert status == 400 and "throttle_rate" in error["error"]
    status, _ = _post_json(f"{models_threaded.url}/_local/faults", {"down_for_s": 0.5})
    assert status == 200
    deadline = time.monotonic() + 5
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            _http(f"{models_threaded.url}/ping")
        except (urllib.error.URLError, ConnectionError):
            refused = True
    assert refused
    while time.monotonic() < deadline:  # and it comes back by itself
        try:
            _http(f"{models_threaded.url}/ping")
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    else:
        pytest.fail("endpoints did not come back after down_for_s")


def test_stats_count_calls_and_rows(
    models_threaded: BackgroundModelServer, runtime: Any, comprehend: Any
) -> None:
    models_threaded.reset_stats()
    for _ in range(3):
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_row_body()
        )
    with pytest.raises(runtime.exceptions.ModelError):
        runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=b"1,2\n"
        )
    comprehend.batch_detect_sentiment(TextList=["a", "b", "c"], LanguageCode="en")
    stats = json.loads(_http(f"{models_threaded.url}/_local/stats")[1])
    invoke = stats["operations"]["InvokeEndpoint"]["churn-autopilot-endpoint"]
    assert invoke == {"calls": 4, "rows": 6, "errors": {"ModelError": 1}}
    assert stats["operations"]["BatchDetectSentiment"]["comprehend"]["rows"] == 3
    assert stats["total_calls"] == 5
