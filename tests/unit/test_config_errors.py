"""Bad configuration: every problem at once, each naming its key and the fix; env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_scorer.config import load_config
from cdc_scorer.core.errors import ConfigError
from cdc_scorer.sources.binlog.spec import BinlogSpec
from cdc_scorer.sources.debezium.spec import DebeziumSpec
from cdc_scorer.sources.pgoutput.spec import PgoutputSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BAD = """
shutdown_grace_s = -1
[source]
database = "1bad"
port = 0
colour = "blue"
[source.binlog]
positions = "sometimes"

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
        "source.binlog.positions: Input should be 'auto' or 'file' — use one of the listed values",
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
    text = text.replace('colour = "blue"\n[source.binlog]\npositions = "sometimes"\n', "")
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
    server_id = getattr(spec.source.feed, "server_id", None)
    assert server_id is not None and server_id >= 1 << 24  # the binlog's, by default
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


def test_the_debezium_section_lists_each_problem_with_its_key(tmp_path: Path) -> None:
    kafka = (
        '[source.debezium]\nbootstrap_servers = "b-1:9098,nohost"\ntopic_prefix = "dbz server"\n'
        'security = "sasl-scram"\nsession_timeout_ms = 10\ncolour = "blue"\n'
        '[source.debezium.consumer]\n"group.id" = "x"\n"fetch.min.bytes" = 1\n'
    )
    problems = problems_of(tmp_path, KAFKA_BASE.format(kafka=kafka))
    assert sorted(problems) == [
        "source.debezium.colour: Extra inputs are not permitted — remove it or fix its "
        "spelling (docs/reference/configuration.md)",
        "source.debezium.session_timeout_ms: Input should be greater than or equal to 6000",
    ]
    kafka = kafka.replace('session_timeout_ms = 10\ncolour = "blue"\n', "")
    problems = problems_of(tmp_path, KAFKA_BASE.format(kafka=kafka))
    assert problems == [
        "source.debezium.bootstrap_servers: 'nohost' is not host:port — list the brokers as "
        '"host:port,host:port"',
        "source.debezium.topic_prefix: 'dbz server' is not a Kafka topic prefix — use "
        "Debezium's topic.prefix (letters, digits, . _ -)",
        "source.debezium.username: sasl-scram needs username and password (the password from "
        "the environment: CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD)",
        "source.debezium.consumer: 'group.id' is set by the scorer — remove it "
        "(bootstrap_servers, group_id and security are [source.debezium]'s own keys)",
    ]


def test_the_debezium_section_reads_its_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scorer.toml"
    kafka = (
        '[source.debezium]\nbootstrap_servers = "127.0.0.1:9092"\ntopic_prefix = "dbz"\n'
        'security = "sasl-scram"\nusername = "scorer"\n'
    )
    path.write_text(KAFKA_BASE.format(kafka=kafka))
    monkeypatch.setenv("CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD", "secret")
    spec = load_config(path)
    feed = spec.source.feed
    assert isinstance(feed, DebeziumSpec) and feed.password == "secret"
    assert feed.group_id == "cdc-scorer" and feed.session_timeout_ms == 45_000
    assert "secret" not in repr(spec)
    monkeypatch.delenv("CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD")
    path.write_text(KAFKA_BASE.format(kafka=""))
    assert isinstance(load_config(path).source.feed, BinlogSpec)  # the engine's own log


def test_each_feed_has_its_own_section_and_old_places_name_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[source.binlog], [source.pgoutput], [source.debezium]: validated by the feed's own
    class; a key in its old place is an error naming the new place (file and environment)."""
    old = (
        '[source]\ndatabase = "db"\nserver_id = 7\nslot_name = "s"\nheartbeat_interval_s = 1\n'
        '[kafka]\nbootstrap_servers = "b:9092"\ntopic_prefix = "dbz"\n'
        '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
    )
    monkeypatch.setenv("CDC_SCORER_KAFKA__PASSWORD", "x")
    assert problems_of(tmp_path, old) == [
        "kafka: the Kafka source's section is now [source.debezium] — rename [kafka] to "
        "[source.debezium] (environment: CDC_SCORER_SOURCE__DEBEZIUM__…)",
        "CDC_SCORER_KAFKA__PASSWORD: [kafka] is now [source.debezium] — set "
        "CDC_SCORER_SOURCE__DEBEZIUM__PASSWORD instead",
        "source.server_id: moved to [source.binlog] — write server_id there (environment: "
        "CDC_SCORER_SOURCE__BINLOG__SERVER_ID)",
        "source.slot_name: moved to [source.pgoutput] — write slot_name there (environment: "
        "CDC_SCORER_SOURCE__PGOUTPUT__SLOT_NAME)",
        "source.heartbeat_interval_s: moved to [source.binlog] — write heartbeat_interval_s "
        "there (environment: CDC_SCORER_SOURCE__BINLOG__HEARTBEAT_INTERVAL_S)",
    ]
    monkeypatch.delenv("CDC_SCORER_KAFKA__PASSWORD")

    def config(source: str) -> str:
        return (
            f'[source]\ndatabase = "db"\n{source}'
            '[[pipelines]]\nname = "a"\ntable = "t"\nservice = "comprehend"\n'
            '[pipelines.comprehend]\ntext_column = "x"\n'
        )

    path = tmp_path / "s.toml"
    path.write_text(config('[source.binlog]\nserver_id = 7\npositions = "file"\n'))
    assert load_config(path).source.feed == BinlogSpec(server_id=7, positions="file")
    path.write_text(config('engine = "postgresql"\n[source.pgoutput]\nslot_name = "s1"\n'))
    assert load_config(path).source.feed == PgoutputSpec(slot_name="s1")
    path.write_text(config('engine = "postgresql"\n'))
    assert load_config(path).source.feed == PgoutputSpec()  # the engine's own log
    monkeypatch.setenv("CDC_SCORER_SOURCE__BINLOG__SERVER_ID", "9")
    path.write_text(config(""))
    assert load_config(path).source.feed == BinlogSpec(server_id=9)
    monkeypatch.delenv("CDC_SCORER_SOURCE__BINLOG__SERVER_ID")
    assert problems_of(tmp_path, config('[source.binlog]\nslot_name = "s"\n')) == [
        "source.binlog.slot_name: Extra inputs are not permitted — remove it or fix its "
        "spelling (docs/reference/configuration.md)"
    ]
    assert problems_of(tmp_path, config('engine = "postgresql"\n[source.binlog]\n')) == [
        "source.binlog: reads the changes of mysql, not of engine 'postgresql' — use "
        "[source.pgoutput] or [source.debezium]"
    ]
    both = '[source.binlog]\n[source.debezium]\nbootstrap_servers = "b:1"\ntopic_prefix = "p"\n'
    assert problems_of(tmp_path, config(both)) == [
        "source: [source.binlog] and [source.debezium] are both set — keep the one change feed "
        "to read"
    ]


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_configuration_loads(example: Path) -> None:
    """Each file under examples/ is loaded by the real loader (a key that does not exist, or
    one in an old place, fails), and names the feed it says it reads."""
    spec = load_config(example)
    assert spec.pipelines
    assert f"[source.{spec.source.feed.name}]" in example.read_text()


BEDROCK_BACKFILL = (
    '[[pipelines]]\nname = "e"\ntable = "t"\nservice = "bedrock"\n'
    '[pipelines.bedrock]\nmodel_id = "amazon.titan-embed-text-v2:0"\ntask = "embedding"\n'
    'text_column = "x"\n[pipelines.backfill]\n{backfill}'
)
ROLE = 'role_arn = "arn:aws:iam::123456789012:role/r"\n'


def test_a_backfill_section_is_checked_against_its_service_and_feed(tmp_path: Path) -> None:
    log = '[source]\ndatabase = "db"\n'
    # Batch jobs need where their files go and the role the service assumes.
    assert problems_of(tmp_path, log + BEDROCK_BACKFILL.format(backfill='mode = "batch"\n')) == [
        "pipelines.0.backfill: mode 'batch' submits batch jobs: set s3_uri and role_arn "
        '(s3_uri = "s3://bucket/prefix/", role_arn = the job\'s IAM role)'
    ]
    backfill = f'mode = "auto"\ns3_uri = "s3://bkt/p/"\n{ROLE}records_per_job = 60000\n'
    assert problems_of(tmp_path, log + BEDROCK_BACKFILL.format(backfill=backfill)) == [
        "pipelines.0.backfill.records_per_job: Bedrock batch inference takes 100 to 50,000 "
        "records a job (its quotas) — set one in that range"
    ]
    # Comprehend has no batch jobs.
    comprehend = (
        '[[pipelines]]\nname = "c"\ntable = "t"\nservice = "comprehend"\n'
        '[pipelines.comprehend]\ntext_column = "x"\n'
        f'[pipelines.backfill]\nmode = "batch"\ns3_uri = "s3://bkt/p/"\n{ROLE}'
    )
    assert problems_of(tmp_path, log + comprehend) == [
        "pipelines.0.backfill.mode: 'batch' needs batch jobs, and comprehend has none "
        'cdc-scorer runs — set mode = "realtime" (or remove the section)'
    ]
    # Debezium re-reads the table itself: its rows arrive as changes.
    kafka = (
        '[source]\ndatabase = "db"\n[source.debezium]\nbootstrap_servers = "b:9092"\n'
        'topic_prefix = "dbz"\n'
    )
    backfill = f'mode = "batch"\ns3_uri = "s3://bkt/p/"\n{ROLE}'
    assert problems_of(tmp_path, kafka + BEDROCK_BACKFILL.format(backfill=backfill)) == [
        "pipelines.0.backfill.mode: 'batch' needs the scorer's own re-score chunks; with "
        "[source.debezium] the table is re-read by the feed itself and its rows arrive as "
        'changes (real-time) — set mode = "realtime"'
    ]
