"""RDS IAM authentication as far as this machine can show it: the token botocore signs for the
source's host, port, user and region, a new one at each connection, and the configuration
that refuses to send it without TLS. (That Aurora accepts it needs a real Aurora.)"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

from cdc_scorer.config import load_config
from cdc_scorer.core.errors import ConfigError
from cdc_scorer.core.spec import FeedSpec, SourceSpec, TlsSpec
from cdc_scorer.mysql.connection import connection_settings

SOURCE = SourceSpec(
    database="mltest",
    feed=FeedSpec(),
    host="mycluster.cluster-abc123.eu-west-1.rds.amazonaws.com",
    port=3306,
    user="cdc_scorer",
    auth="rds-iam",
    iam_region="eu-west-1",
    tls=TlsSpec(mode="required"),
)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCDCSCORERTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def token_fields(token: str) -> tuple[str, dict[str, str]]:
    where, _, query = token.partition("/?")
    return where, dict(urllib.parse.parse_qsl(query))


def test_the_token_is_a_presigned_connect_for_this_host_port_user_and_region() -> None:
    settings = connection_settings(SOURCE)
    where, fields = token_fields(settings["password"])
    assert where == f"{SOURCE.host}:3306"
    assert fields["Action"] == "connect" and fields["DBUser"] == "cdc_scorer"
    assert fields["X-Amz-Credential"].startswith("AKIDCDCSCORERTEST/")
    assert fields["X-Amz-Credential"].endswith("/eu-west-1/rds-db/aws4_request")
    assert fields["X-Amz-Expires"] == "900"  # 15 minutes: a later reconnect needs a new one
    assert settings["ssl"] is not None  # never sent without TLS


def test_each_connection_gets_a_token_made_then() -> None:
    first = connection_settings(SOURCE)["password"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the clock's next second signs anew
        second = connection_settings(SOURCE)["password"]
        if second != first:
            break
        time.sleep(0.05)
    assert token_fields(second)[1]["X-Amz-Date"] > token_fields(first)[1]["X-Amz-Date"]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            '[source]\ndatabase = "db"\nauth = "rds-iam"\n',
            "source: auth 'rds-iam' sends its token with the cleartext plugin: set [source.tls] "
            "mode = 'verify-identity' and ca_file (the RDS global bundle)",
        ),
        (
            '[source]\ndatabase = "db"\nauth = "rds-iam"\npassword = "pw"\n'
            '[source.tls]\nmode = "required"\n',
            "source: auth 'rds-iam' replaces the password: remove [source] password",
        ),
    ],
)
def test_rds_iam_without_tls_or_with_a_password_is_refused(
    tmp_path: Path, source: str, problem: str
) -> None:
    path = tmp_path / "scorer.toml"
    path.write_text(
        source + '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [problem]


def test_postgresql_connections_send_a_token_over_tls() -> None:
    """libpq's keywords of every PostgreSQL connection, the replication one included (it opens
    with the same ``settings``; Aurora accepts the token there with
    ``rds.iam_auth_for_replication = 1``)."""
    from cdc_scorer.postgresql import connection

    source = SourceSpec(
        database="mltest",
        feed=FeedSpec(),
        engine="postgresql",
        host="mycluster.cluster-abc123.eu-west-1.rds.amazonaws.com",
        port=5432,
        user="cdc_scorer",
        auth="rds-iam",
        iam_region="eu-west-1",
        tls=TlsSpec(mode="required"),
    )
    settings = connection.settings(source)
    where, fields = token_fields(settings["password"])
    assert where == f"{source.host}:5432" and fields["DBUser"] == "cdc_scorer"
    assert settings["sslmode"] == "require"
