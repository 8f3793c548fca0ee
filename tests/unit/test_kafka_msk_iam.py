"""``security = "msk-iam"``: librdkafka's OAUTHBEARER callback made with AWS's signer
(``aws-msk-iam-sasl-signer-python``), called as librdkafka calls it. There is no MSK here, so
no broker checks the token; what is checked is what MSK checks: a SigV4-presigned
``kafka-cluster:Connect`` request for the cluster's region, signed with the credentials the
AWS chain finds, and an expiry in seconds (librdkafka's unit; the signer gives milliseconds).
"""

from __future__ import annotations

import base64
import time
import urllib.parse

import pytest

from cdc_scorer.core.errors import FatalError
from cdc_scorer.sources.debezium.group import client_config
from cdc_scorer.sources.debezium.spec import DebeziumSpec


def _spec(region: str | None) -> DebeziumSpec:
    return DebeziumSpec(
        bootstrap_servers="b-1.example.kafka.eu-west-1.amazonaws.com:9098",
        topic_prefix="dbz",
        security="msk-iam",
        iam_region=region,
    )


def test_the_token_is_a_presigned_kafka_cluster_connect_for_the_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMSKTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    config = client_config(_spec("eu-west-1"), "scorer-1")
    assert (config["security.protocol"], config["sasl.mechanisms"]) == ("SASL_SSL", "OAUTHBEARER")
    token, expiry_s = config["oauth_cb"]("ignored: librdkafka passes its sasl.oauthbearer.config")
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("AKIDMSKTEST/")
    assert "/eu-west-1/kafka-cluster/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Signature"][0]
    assert time.time() < expiry_s < time.time() + 3 * 3600  # seconds, not milliseconds


def test_without_a_region_the_callback_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMSKTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    config = client_config(_spec(None), "scorer-1")
    with pytest.raises(FatalError, match=r"source\.debezium\.iam_region"):
        config["oauth_cb"](None)
