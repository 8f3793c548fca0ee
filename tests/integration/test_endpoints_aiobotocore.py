"""The local endpoints through real aiobotocore clients, as the daemon calls them."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer


def _body(seed: int, count: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in ChurnRowGenerator(seed).rows(count):
        writer.writerow([row[c] for c in FEATURE_COLUMNS])
    return out.getvalue().encode()


async def test_invoke_and_errors(models: ModelServer) -> None:
    session = get_session()
    config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=50)
    async with session.create_client(
        "sagemaker-runtime", endpoint_url=models.url, config=config
    ) as runtime:
        response = await runtime.invoke_endpoint(
            EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=_body(1, 1000)
        )
        async with response["Body"] as stream:
            lines = (await stream.read()).decode().splitlines()
        assert len(lines) == 1000
        assert response["InvokedProductionVariant"] == "AllTraffic"
        with pytest.raises(runtime.exceptions.ModelError) as caught:
            await runtime.invoke_endpoint(
                EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=b"a,b\n"
            )
        assert caught.value.response["OriginalStatusCode"] == 400


async def test_batch_sentiment(models: ModelServer) -> None:
    async with get_session().create_client("comprehend", endpoint_url=models.url) as comprehend:
        result = await comprehend.batch_detect_sentiment(
            TextList=["great service, thank you", "terrible, I am cancelling"], LanguageCode="en"
        )
        assert [r["Sentiment"] for r in result["ResultList"]] == ["POSITIVE", "NEGATIVE"]
        with pytest.raises(comprehend.exceptions.BatchSizeLimitExceededException):
            await comprehend.batch_detect_sentiment(TextList=["x"] * 26, LanguageCode="en")


async def test_two_hundred_concurrent_requests(models: ModelServer) -> None:
    config = AioConfig(max_pool_connections=200, retries={"total_max_attempts": 1})
    models.set_faults({"sagemaker": {"latency_ms": 200}})  # keeps all 200 open at once
    async with get_session().create_client(
        "sagemaker-runtime", endpoint_url=models.url, config=config
    ) as runtime:
        body = _body(2, 10)

        async def call() -> int:
            response = await runtime.invoke_endpoint(
                EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=body
            )
            async with response["Body"] as stream:
                return len((await stream.read()).splitlines())

        counts = await asyncio.gather(*(call() for _ in range(200)))
    assert counts == [10] * 200
    assert (
        models.stats()["operations"]["InvokeEndpoint"]["churn-autopilot-endpoint"]["calls"] == 200
    )
