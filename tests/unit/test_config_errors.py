"""Bad configuration: every problem at once, each naming its key and the fix; env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_scorer.config import load_config
from cdc_scorer.core.errors import ConfigError

BAD = """
shutdown_grace_s = -1
[source]
database = "1bad"
port = 0
positions = "sometimes"
colour = "blue"

[retry]
base_ms = 500
cap_ms = 100

[[pipelines]]
name = "churn"
table = "churn"
service = "sagemaker"
[pipelines.batching]
linger_ms = 50
max_in_flgiht = 8

[[pipelines]]
name = "churn"
table = "churn"
service = "comprehend"
[pipelines.sagemaker]
endpoint_name = "e"
feature_columns = ["a"]
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "scorer.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_every_problem_is_listed_with_its_key_and_fix(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, BAD)
    text = "\n".join(problems)
    expected = [
        "shutdown_grace_s: Input should be greater than 0",
        "source.database: '1bad' is not a plain SQL identifier — use a letter or _",
        "source.port: Input should be greater than or equal to 1",
        "source.positions: Input should be 'auto' or 'file' — use one of the listed values",
        "source.colour: Extra inputs are not permitted — remove it or fix its spelling",
        "retry: cap_ms must be >= base_ms",
        "pipelines.0: service is 'sagemaker': add a [pipelines.sagemaker] section",
        "pipelines.0.batching.max_in_flgiht: Extra inputs are not permitted — remove it",
        "pipelines.1: service is 'comprehend': add a [pipelines.comprehend] section",
        "pipelines.1: service is 'comprehend': remove the other service's section",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), f"{line!r} not in:\n{text}"
    assert len(problems) == len(expected), text


def test_cross_checks_after_the_fields(tmp_path: Path) -> None:
    text = BAD.split("[retry]")[0].replace('"1bad"', '"db"').replace("port = 0", "port = 1")
    text = text.replace('positions = "sometimes"\ncolour = "blue"\n', "")
    text = text.replace("shutdown_grace_s = -1", "") + (
        '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
        '[[pipelines]]\nname = "a"\ntable = "t_predictions"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    problems = problems_of(tmp_path, text)
    assert problems == [
        "pipelines.0.name: 'a' is used twice — names must be unique",
        "pipelines.1.name: 'a' is used twice — names must be unique",
        "pipelines.1.table: 't_predictions' is one of the scorer's own tables — score a source "
        "table",
    ]


def test_missing_key_names_its_environment_variable(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[[pipelines]]\nname = "a"\n')
    assert problems[0] == (
        "source: Field required — set it in the file or in the environment as CDC_SCORER_SOURCE"
    )
    assert problems[1].startswith("pipelines.0.table: Field required")
    assert problems[2].startswith("pipelines.0.service: Field required")
    assert len(problems) == 3


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scorer.toml"
    path.write_text(
        '[source]\ndatabase = "db"\npassword = "from-file"\n'
        '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    monkeypatch.setenv("CDC_SCORER_SOURCE__PASSWORD", "from-env")
    spec = load_config(path)
    assert spec.source.password == "from-env"
    assert "from-env" not in repr(spec)  # the spec's repr never shows the password
    assert spec.source.server_id is not None and spec.source.server_id >= 1 << 24
    assert spec.pipelines[0].batching.max_rows == 100  # Comprehend's default
    assert spec.pipelines[0].batching.linger_s == 0.2


def test_tls_settings_are_checked_and_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = (
        '[source]\ndatabase = "db"\n{tls}'
        '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    problems = problems_of(
        tmp_path, base.format(tls='[source.tls]\nmode = "verify-identity"\ncert_file = "c"\n')
    )
    assert problems == [
        "source.tls: mode 'verify-identity' verifies the server against ca_file: set ca_file "
        "(for RDS/Aurora, the global bundle global-bundle.pem)"
    ]
    problems = problems_of(tmp_path, base.format(tls='[source.tls]\nmode = "always"\n'))
    assert problems[0].startswith("source.tls.mode: Input should be 'disabled', 'preferred'")
    path = tmp_path / "ok.toml"
    path.write_text(base.format(tls=""))
    assert load_config(path).source.tls.mode == "preferred"  # pymysql's own default
    monkeypatch.setenv("CDC_SCORER_SOURCE__TLS__MODE", "required")
    assert load_config(path).source.tls.mode == "required"


def test_two_models_on_one_table_need_their_own_tables_and_one_key(tmp_path: Path) -> None:
    pipeline = (
        '[[pipelines]]\nname = "{name}"\ntable = "churn"\nservice = "comprehend"\n{extra}'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    text = (
        '[source]\ndatabase = "db"\n'
        + pipeline.format(name="champion", extra="")
        + pipeline.format(name="challenger", extra='key_columns = ["phone"]\n')
    )
    problems = problems_of(tmp_path, text)
    assert problems == [
        "pipelines.0.predictions_table: 'churn_predictions' is written by two pipelines — give "
        "each model on a table its own predictions_table (champion / challenger)",
        "pipelines.0.scored_view: 'churn_scored' is written by two pipelines — give each model "
        "on a table its own predictions_table (champion / challenger)",
        "pipelines.0.key_columns: the pipelines of table 'churn' must name the same key_columns",
        "pipelines.1.predictions_table: 'churn_predictions' is written by two pipelines — give "
        "each model on a table its own predictions_table (champion / challenger)",
        "pipelines.1.scored_view: 'churn_scored' is written by two pipelines — give each model "
        "on a table its own predictions_table (champion / challenger)",
        "pipelines.1.key_columns: the pipelines of table 'churn' must name the same key_columns",
    ]
    fixed = text.replace(
        'key_columns = ["phone"]\n', 'predictions_table = "churn_v2_predictions"\n'
    )
    path = tmp_path / "ok.toml"
    path.write_text(fixed)
    champion, challenger = load_config(path).pipelines
    assert (champion.predictions, champion.view) == ("churn_predictions", "churn_scored")
    assert (challenger.predictions, challenger.view) == ("churn_v2_predictions", "churn_v2_scored")
    assert champion.model_version == challenger.model_version == "1"


def test_an_unknown_engine_names_the_ones_there_are(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[source]\ndatabase = "db"\nengine = "oracle"\n'
        '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n',
    )
    assert problems == ["source.engine: 'oracle' is not 'mysql' or 'postgresql' — use one of those"]


KAFKA_BASE = (
    '[source]\ndatabase = "db"\n{kafka}'
    '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
    '[pipelines.comprehend]\ntext_column = "x"\n'
)


def test_the_kafka_section_lists_each_problem_with_its_key(tmp_path: Path) -> None:
    kafka = (
        '[kafka]\nbootstrap_servers = "b-1:9098,nohost"\ntopic_prefix = "dbz server"\n'
        'security = "sasl-scram"\nsession_timeout_ms = 10\ncolour = "blue"\n'
        '[kafka.consumer]\n"group.id" = "x"\n"fetch.min.bytes" = 1\n'
    )
    problems = problems_of(tmp_path, KAFKA_BASE.format(kafka=kafka))
    assert sorted(problems) == [
        "kafka.colour: Extra inputs are not permitted — remove it or fix its spelling "
        "(README: Configuration)",
        "kafka.session_timeout_ms: Input should be greater than or equal to 6000",
    ]
    kafka = kafka.replace('session_timeout_ms = 10\ncolour = "blue"\n', "")
    problems = problems_of(tmp_path, KAFKA_BASE.format(kafka=kafka))
    assert problems == [
        "kafka.bootstrap_servers: 'nohost' is not host:port — list the brokers as "
        '"host:port,host:port"',
        "kafka.topic_prefix: 'dbz server' is not a Kafka topic prefix — use Debezium's "
        "topic.prefix (letters, digits, . _ -)",
        "kafka.username: sasl-scram needs username and password (the password from the "
        "environment: CDC_SCORER_KAFKA__PASSWORD)",
        "kafka.consumer: 'group.id' is set by the scorer — remove it (bootstrap_servers, "
        "group_id and security are [kafka]'s own keys)",
    ]


def test_the_kafka_section_reads_its_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scorer.toml"
    kafka = (
        '[kafka]\nbootstrap_servers = "127.0.0.1:9092"\ntopic_prefix = "dbz"\n'
        'security = "sasl-scram"\nusername = "scorer"\n'
    )
    path.write_text(KAFKA_BASE.format(kafka=kafka))
    monkeypatch.setenv("CDC_SCORER_KAFKA__PASSWORD", "secret")
    spec = load_config(path)
    assert spec.kafka is not None and spec.kafka.password == "secret"
    assert spec.kafka.group_id == "cdc-scorer" and spec.kafka.session_timeout_ms == 45_000
    assert "secret" not in repr(spec)
    monkeypatch.delenv("CDC_SCORER_KAFKA__PASSWORD")
    path.write_text(KAFKA_BASE.format(kafka=""))
    assert load_config(path).kafka is None  # the database's own log
