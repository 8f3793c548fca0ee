"""The Kafka source over TLS: ``security = "ssl"`` and ``"sasl-scram"`` (SCRAM-SHA-512 over
TLS) against the real broker's SSL and SASL_SSL listeners, which are the only ones the scorer
is given (its PLAINTEXT one is Debezium's); its certificate is signed by a CA of the test's.
A wrong password and a CA the scorer does not trust stop it with one line naming the key to
fix, as a Kafka client's authentication failures do."""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.app import ScorerApp
from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import ModelServer
from cdc_scorer.local.kafka import KafkaStack
from cdc_scorer.local.servers import DatabaseServer
from tests.conftest import KAFKA_SCRAM_PASSWORD, KAFKA_SCRAM_USER
from tests.integration.scenario import (
    Running,
    churn_matches,
    create_database,
    insert_churn,
    wait_for,
    with_debezium,
    write_config,
)
from tests.integration.test_kafka_source import put_churn_connector

pytestmark = pytest.mark.slow


@pytest.fixture
def captured(
    tmp_path: Path, mysql_gtid: DatabaseServer, kafka: KafkaStack, models: ModelServer
) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """Churn rows on MySQL, Debezium's connector on them, the scorer's config without
    ``[source.debezium]`` (the test adds it)."""
    server, database = mysql_gtid, f"ktls_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    db = server.connect(database)
    insert_churn(db, list(ChurnRowGenerator(51).rows(60)))
    prefix = put_churn_connector(
        kafka, server, database, letter="x", server_id=5904, tables=("churn",), partitions=3
    )
    write_config(tmp_path / "base.toml", server, database, models.url)
    config = tomllib.loads((tmp_path / "base.toml").read_text())
    config["pipelines"] = [p for p in config["pipelines"] if p["name"] == "churn"]
    config = with_debezium(config, topic_prefix=prefix, group_id=f"tls-{prefix}")
    try:
        yield db, prefix, config
    finally:
        kafka.delete_connector(prefix)
        db.close()


def _spec(tmp_path: Path, config: dict[str, Any], **kafka: Any) -> Any:
    path = tmp_path / "kafka.toml"
    config = with_debezium(config, **config["source"]["debezium"], **kafka)
    path.write_text(tomli_w.dumps(config))
    assert cli(["init", "--config", str(path)]) == 0
    return load_config(path)


def _listener(kafka: KafkaStack, security: str) -> str:
    return kafka.ssl_bootstrap_servers if security == "ssl" else kafka.sasl_ssl_bootstrap_servers


@pytest.mark.parametrize("security", ["ssl", "sasl-scram"])
async def test_the_scorer_reads_debeziums_topics_over_tls(
    security: str,
    tmp_path: Path,
    kafka: KafkaStack,
    captured: tuple[Any, str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, _prefix, config = captured
    assert kafka.tls is not None
    scram: dict[str, Any] = {}
    if security == "sasl-scram":
        scram = {"username": KAFKA_SCRAM_USER, "scram_mechanism": "SCRAM-SHA-512"}
        monkeypatch.setenv("CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD", KAFKA_SCRAM_PASSWORD)
    spec = _spec(
        tmp_path,
        config,
        bootstrap_servers=_listener(kafka, security),
        security=security,
        ca_file=str(kafka.tls.ca_file),
        **scram,
    )
    assert spec.source.feed.bootstrap_servers != kafka.bootstrap_servers  # not the PLAINTEXT one
    async with Running(spec) as app:
        await wait_for(lambda: churn_matches(db), timeout_s=120, what="the snapshot over TLS")
        registry = app.telemetry.registry
        assert registry.get_sample_value("cdc_scorer_source_partitions", {"pipeline": "churn"})


@pytest.mark.parametrize(
    ("security", "wrong", "said"),
    [
        ("sasl-scram", "password", "source.debezium.username and its password"),
        ("ssl", "ca_file", "source.debezium.ca_file"),
    ],
)
async def test_a_wrong_password_or_an_untrusted_certificate_stops_with_one_line(
    security: str,
    wrong: str,
    said: str,
    tmp_path: Path,
    kafka: KafkaStack,
    captured: tuple[Any, str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _db, _prefix, config = captured
    assert kafka.tls is not None
    settings: dict[str, Any] = {
        "bootstrap_servers": _listener(kafka, security),
        "security": security,
        "ca_file": str(kafka.tls.ca_file),
    }
    if security == "sasl-scram":
        settings |= {"username": KAFKA_SCRAM_USER, "scram_mechanism": "SCRAM-SHA-512"}
        monkeypatch.setenv("CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD", "not-the-password")
    else:
        del settings["ca_file"]  # the system's CAs: they did not sign the broker's certificate
    app = ScorerApp(_spec(tmp_path, config, **settings))
    with pytest.raises(FatalError) as caught:
        await asyncio.wait_for(app.run(), 90)
    line = str(caught.value)
    assert "\n" not in line and said in line, line
    assert "not-the-password" not in line
