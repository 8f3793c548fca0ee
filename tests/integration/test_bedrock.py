"""Bedrock pipelines in process, on the private MariaDB 10.11, MySQL 9 and MariaDB 11.8 (and
PostgreSQL 15 and 18 with pgvector), through the local Bedrock Runtime (InvokeModel and Converse
over HTTP, real aiobotocore clients): embeddings and LLM-derived columns follow their rows, bad
answers and refused rows become dead letters, the budget holds at the endpoint."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.commands.check import run_checks
from cdc_scorer.commands.cli import main as cli
from cdc_scorer.config import load_config
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local import embeddings
from cdc_scorer.local.converse import CONTEXT_TOKENS, ConverseModel
from cdc_scorer.local.endpoints import TITAN_V2, ModelServer
from cdc_scorer.local.servers import DatabaseServer
from cdc_scorer.stores.registry import build_store
from tests.conftest import source_of
from tests.integration.scenario import Running, create_database, init_scorer, wait_for
from tests.pg import PgDatabase, pg_config

CHAT_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
TOPICS = ["billing", "network coverage", "customer service", "other"]
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["topic", "urgent"],
    "properties": {
        "topic": {"type": "string", "enum": TOPICS},
        "urgent": {"type": "boolean"},
        "satisfaction": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
    },
}
PROMPT = "Give the topic of this customer feedback and say if it is urgent.\n\n{user_feedback}"
FEEDBACK = [
    "My bill is wrong, you charged me twice this month!",
    "No signal at home since Monday, the network keeps dropping calls.",
    "The agent on the phone was lovely and helpful.",
    "I was overcharged for roaming and nobody explains the invoice.",
    "Coverage in the countryside is terrible, no bars at all.",
    "Thanks for fixing my account so quickly, great service.",
]


def embedding_pipeline(**bedrock: Any) -> dict[str, Any]:
    return {
        "name": "feedback_embedding",
        "table": "feedback",
        "service": "bedrock",
        "predictions_table": "feedback_embeddings",
        "batching": {"linger_ms": 50, "max_in_flight": 8},
        "bedrock": {
            "model_id": TITAN_V2,
            "task": "embedding",
            "text_column": "user_feedback",
            "dimensions": 256,
            **bedrock,
        },
    }


def converse_pipeline(**bedrock: Any) -> dict[str, Any]:
    return {
        "name": "feedback_topic",
        "table": "feedback",
        "service": "bedrock",
        "predictions_table": "feedback_topics",
        "batching": {"linger_ms": 50, "max_in_flight": 8},
        "bedrock": {
            "model_id": CHAT_MODEL,
            "task": "converse",
            "prompt_template": PROMPT,
            "max_tokens": 200,
            "output_schema": OUTPUT_SCHEMA,
            **bedrock,
        },
    }


def write_spec(
    path: Path,
    server: DatabaseServer,
    database: str,
    endpoint_url: str,
    pipelines: list[dict[str, Any]],
    **top: Any,
) -> ScorerSpec:
    config = {
        "source": {
            "host": "127.0.0.1",
            "port": server.port,
            "user": "root",
            "database": database,
            "binlog": {"heartbeat_interval_s": 0.5},
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "aws": {"region": "us-east-1", "endpoint_url": endpoint_url},
        "retry": {"base_ms": 20, "cap_ms": 200},
        "shutdown_grace_s": 20,
        "pipelines": pipelines,
        **top,
    }
    path.write_text(tomli_w.dumps(config))
    spec = load_config(path)
    init_scorer(spec)
    return spec


@pytest.fixture(params=["mariadb", "mysql-gtid", "mariadb-vector"])
def server(request: pytest.FixtureRequest) -> DatabaseServer:
    """MariaDB 10.11 (vectors as JSON), MySQL 9 and MariaDB 11.8 (``VECTOR(N)``)."""
    if request.param == "mariadb-vector":
        found: DatabaseServer = request.getfixturevalue("mariadb_vector")
        return found
    name = "mariadb-gtid" if request.param == "mariadb" else request.param
    return source_of(request, name).server


def has_vectors(db: Any) -> bool:
    """Whether the server has a vector type: MySQL 9+, MariaDB 11.7+."""
    with db.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        version = str(cursor.fetchone()[0])
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= ((11, 7) if "MariaDB" in version else (9, 0))


def vector_text(server: DatabaseServer, db: Any) -> str:
    """The SQL that reads the stored embedding as the text of a JSON array."""
    if not has_vectors(db):
        return "embedding"
    return "VECTOR_TO_STRING(embedding)" if server.flavor == "mysql" else "VEC_ToText(embedding)"


@pytest.fixture
def database(server: DatabaseServer) -> str:
    name = f"bedrock_{uuid.uuid4().hex[:8]}"
    create_database(server, name)
    return name


@pytest.fixture
def db(server: DatabaseServer, database: str) -> Any:
    conn = server.connect(database)
    yield conn
    conn.close()


def insert_feedback(db: Any, texts: list[str]) -> None:
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO feedback (user_feedback) VALUES (%s)", [(t,) for t in texts]
        )


def feedback_rows(db: Any) -> dict[int, str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id, user_feedback FROM feedback")
        return {int(i): str(t) for i, t in cursor.fetchall()}


def stored_vectors(db: Any, column: str = "embedding") -> dict[int, list[float]]:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT id, {column}, model_version FROM feedback_embeddings")
        return {int(i): json.loads(v) for i, v, _ in cursor.fetchall()}


def vectors_match(db: Any, column: str = "embedding") -> bool:
    rows = feedback_rows(db)
    stored = stored_vectors(db, column)
    if stored.keys() != rows.keys():
        return False
    expected = embeddings.embed(list(rows.values()), 256)
    return all(
        max(abs(a - b) for a, b in zip(stored[i], vector, strict=True)) < 1e-5
        for i, vector in zip(rows, expected, strict=True)
    )


def column_type(db: Any, table: str, column: str) -> str:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=DATABASE() "
            "AND TABLE_NAME=%s AND COLUMN_NAME=%s",
            (table, column),
        )
        return str(cursor.fetchone()[0]).lower()


async def test_embeddings_follow_rows_and_a_model_change(
    tmp_path: Path, server: DatabaseServer, database: str, db: Any, models: ModelServer
) -> None:
    column = vector_text(server, db)
    insert_feedback(db, FEEDBACK)
    spec = write_spec(tmp_path / "s.toml", server, database, models.url, [embedding_pipeline()])
    # MySQL 9 and MariaDB 11.8 have VECTOR; MariaDB 10.11 keeps the vector as a JSON array
    # (LONGTEXT + CHECK).
    assert column_type(db, "feedback_embeddings", "embedding") == (
        "vector(256)" if has_vectors(db) else "longtext"
    )
    async with Running(spec):
        await wait_for(lambda: vectors_match(db, column), what="snapshot embeddings")
        insert_feedback(db, ["The invoice lists a phone I never bought."])
        with db.cursor() as cursor:
            cursor.execute(
                "UPDATE feedback SET user_feedback='Signal is fine now, thanks' WHERE id=2"
            )
            cursor.execute("DELETE FROM feedback WHERE id=3")
        await wait_for(lambda: vectors_match(db, column), what="streamed embeddings")
    calls = models.stats()["operations"]["InvokeModel"][TITAN_V2]
    assert calls["rows"] == calls["calls"] == len(FEEDBACK) + 2  # one text a call (Titan)

    # The nearest neighbours of "my bill is wrong", by the store's query (README's).
    query = json.dumps(embeddings.embed(["my bill is wrong"], 256)[0])
    store = build_store(spec.source, spec.retry)
    sql = store.nearest_query(spec.pipelines[0], "embedding", limit=3)
    store.close()
    with db.cursor() as cursor:
        cursor.execute(sql, (query,) * sql.count("%s"))
        nearest = cursor.fetchall()
    assert [int(r[0]) for r in nearest[:2]] == [1, 7]  # the billing complaints
    assert nearest[0][1] == FEEDBACK[0] and 0.5 < float(nearest[0][2]) <= 1.0 + 1e-6

    # A new model version re-scores every row beside the stream.
    spec2 = write_spec(
        tmp_path / "s2.toml",
        server,
        database,
        models.url,
        [{**embedding_pipeline(), "model_version": "2"}],
    )
    async with Running(spec2):
        insert_feedback(db, ["Roaming charges on my bill again."])

        def all_v2() -> bool:
            with db.cursor() as cursor:
                cursor.execute("SELECT model_version, COUNT(*) FROM feedback_embeddings GROUP BY 1")
                return dict(cursor.fetchall()) == {"2": len(feedback_rows(db))}

        await wait_for(all_v2, what="re-scored with model version 2")
        assert vectors_match(db, column)


@pytest.mark.parametrize("server", ["mariadb"], indirect=True)
async def test_cohere_embeds_96_texts_a_call_from_a_template(
    tmp_path: Path, server: DatabaseServer, database: str, db: Any, models: ModelServer
) -> None:
    texts = [f"{FEEDBACK[i % 6]} (note {i})" for i in range(200)]
    insert_feedback(db, texts)
    template = "{user_feedback} [{language}]"
    cohere = "cohere.embed-english-v3"
    pipeline = embedding_pipeline(
        model_id=cohere, text_column=None, text_template=template, dimensions=384
    )
    del pipeline["bedrock"]["text_column"]
    spec = write_spec(tmp_path / "s.toml", server, database, models.url, [pipeline])

    def done() -> bool:
        return len(stored_vectors(db)) == len(texts)

    async with Running(spec):
        await wait_for(done, what="Cohere embeddings")
    stored = stored_vectors(db)
    expected = embeddings.embed([template.format(user_feedback=t, language="en") for t in texts])
    for key, vector in zip(sorted(stored), expected, strict=True):
        assert max(abs(a - b) for a, b in zip(stored[key], vector, strict=True)) < 1e-9
    calls = models.stats()["operations"]["InvokeModel"][cohere]
    assert calls["rows"] == 200 and calls["calls"] <= 4  # batches of 96 texts at most (96 rows)


def expected_topics(db: Any) -> dict[int, dict[str, Any]]:
    model = ConverseModel()
    return {
        i: model.tool_input(PROMPT.format(user_feedback=t), OUTPUT_SCHEMA)
        for i, t in feedback_rows(db).items()
        if len(t) < 10_000
    }


def stored_topics(db: Any) -> dict[int, dict[str, Any]]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id, topic, urgent, satisfaction, summary FROM feedback_topics")
        return {
            int(i): {"topic": t, "urgent": bool(u), "satisfaction": s, "summary": m}
            for i, t, u, s, m in cursor.fetchall()
        }


def dead_letters(db: Any) -> dict[str, str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT source_key, reason FROM cdc_scorer_dead_letter")
        return {str(k): str(r) for k, r in cursor.fetchall()}


@pytest.mark.parametrize("server", ["mariadb"], indirect=True)
async def test_converse_columns_are_typed_and_bad_answers_dead_lettered(
    tmp_path: Path, server: DatabaseServer, database: str, db: Any, models: ModelServer
) -> None:
    insert_feedback(db, FEEDBACK)
    spec = write_spec(tmp_path / "s.toml", server, database, models.url, [converse_pipeline()])
    types = {c: column_type(db, "feedback_topics", c) for c in OUTPUT_SCHEMA["properties"]}
    assert types == {
        "topic": "varchar(16)",  # the longest enum value
        "urgent": "tinyint(1)",  # BOOLEAN
        "satisfaction": "bigint(20)",
        "summary": "varchar(80)",
    }
    async with Running(spec):
        await wait_for(lambda: stored_topics(db) == expected_topics(db), what="topics")
        assert stored_topics(db)[1]["topic"] == "billing"
        assert stored_topics(db)[2]["topic"] == "network coverage"
        # An answer that breaks the schema, and a row the model refuses (too long).
        models.set_faults({"bedrock": {"invalid_answer_rate": 1.0}})
        insert_feedback(db, ["Why is my bill so high?"])
        await wait_for(lambda: "[7]" in dead_letters(db), what="a schema violation")
        models.set_faults({"bedrock": {"invalid_answer_rate": 0.0}})
        insert_feedback(db, ["word " * (CONTEXT_TOKENS + 10), "Great coverage downtown."])
        await wait_for(lambda: "[8]" in dead_letters(db), what="a refused row")
        await wait_for(lambda: 9 in stored_topics(db), what="the stream going on")
    assert dead_letters(db) == {"[7]": "schema_violation", "[8]": "validation"}
    with db.cursor() as cursor:
        cursor.execute("SELECT error FROM cdc_scorer_dead_letter WHERE reason='schema_violation'")
        error = str(cursor.fetchone()[0])
    assert "topic: 'something else entirely' is not one of" in error
    expected = expected_topics(db)  # of every row but the two dead letters
    assert stored_topics(db) == {i: v for i, v in expected.items() if i != 7}


@pytest.mark.slow
@pytest.mark.parametrize("server", ["mariadb"], indirect=True)
async def test_the_budget_holds_at_the_endpoint_over_a_minute_through_throttling(
    tmp_path: Path, server: DatabaseServer, database: str, db: Any, models: ModelServer
) -> None:
    rpm = 120
    insert_feedback(db, [f"{FEEDBACK[i % 6]} (note {i})" for i in range(140)])
    spec = write_spec(
        tmp_path / "s.toml",
        server,
        database,
        models.url,
        # The snapshot alone, not paced (by default a re-score keeps under its share).
        [
            embedding_pipeline(requests_per_minute=rpm, tokens_per_minute=100_000)
            | {"rescore": {"max_rows_per_s": 1000}}
        ],
    )
    models.set_faults({"bedrock": {"throttle_rate": 0.1}})
    started = time.monotonic()
    async with Running(spec) as app:
        await wait_for(lambda: vectors_match(db), timeout_s=100, what="every row")
        retries = dict(app.telemetry.retries)
        spending = app.telemetry.pipelines["feedback_embedding"].spending
        assert spending is not None
        spent = spending()
        sample = app.telemetry.registry.get_sample_value
        labels = {"pipeline": "feedback_embedding"}
        assert sample("cdc_scorer_budget_requests_total", labels) == spent["requests"]
        assert (sample("cdc_scorer_model_tokens_total", labels | {"direction": "input"}) or 0) > 0
        waited = sample("cdc_scorer_budget_wait_seconds_total", labels | {"traffic": "rescore"})
        assert waited is not None and waited > 10  # the snapshot waited for its budget
    times = list(models.call_times["bedrock"])
    assert spent["requests"] == len(times)  # every attempt is granted by the budget
    assert len(times) > 140  # every row, and the throttled attempts again
    most = max(sum(1 for u in times if t <= u < t + 60) for t in times)
    assert most <= rpm
    first_minute = sum(1 for t in times if t < started + 60)
    assert first_minute >= 0.9 * rpm  # the budget is used, not only held
    assert retries.get("bedrock", 0) > 0  # throttles were retried


@pytest.fixture(params=["postgresql-15", "postgresql-18-pgvector"])
def vector_pg(request: pytest.FixtureRequest) -> Iterator[tuple[PgDatabase, bool]]:
    """The machine's PostgreSQL 15 (no pgvector: jsonb), and PostgreSQL 18 with ``CREATE
    EXTENSION vector`` in the database (the server's ``vector(N)``); with whether it has it."""
    pgvector = request.param.endswith("pgvector")
    database = PgDatabase(request.getfixturevalue("postgres_vector" if pgvector else "postgres"))
    if pgvector:
        database.execute("CREATE EXTENSION vector")
    yield database, pgvector
    database.drop()


async def test_on_postgresql_vectors_are_pgvector_or_jsonb(
    vector_pg: tuple[PgDatabase, bool], tmp_path: Path, models: ModelServer
) -> None:
    pg, pgvector = vector_pg
    for text in FEEDBACK:
        pg.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (text,))
    config = tmp_path / "scorer.toml"
    spec = pg_config(
        config,
        pg,
        models.url,
        pipelines={
            p["name"]: {k: v for k, v in p.items() if k != "name"}
            for p in (embedding_pipeline(), converse_pipeline())
        },
    )
    assert cli(["init", "--config", str(config)]) == 0
    types = dict(
        pg.rows(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid "
            "IN ('feedback_embeddings'::regclass, 'feedback_topics'::regclass) AND attname IN "
            "('embedding', 'topic', 'urgent', 'satisfaction', 'summary')"
        )
    )
    assert types == {
        "embedding": "vector(256)" if pgvector else "jsonb",
        "topic": "character varying(16)",  # the enum's longest value
        "urgent": "boolean",
        "satisfaction": "bigint",
        "summary": "character varying(80)",  # maxLength
    }

    def done() -> bool:
        vectors = dict(pg.rows("SELECT id, embedding FROM feedback_embeddings"))
        topics = dict(pg.rows("SELECT id, topic FROM feedback_topics"))
        return len(vectors) == len(topics) == len(FEEDBACK)

    async with Running(spec):
        await wait_for(done, what="embeddings and topics")
        pg.execute("UPDATE feedback SET user_feedback = 'Signal is fine now' WHERE id = 2")
        await wait_for(
            lambda: (
                pg.rows("SELECT topic FROM feedback_topics WHERE id = 2") == [("network coverage",)]
                and _pg_vector(pg, 2)
                == pytest.approx(embeddings.embed(["Signal is fine now"], 256)[0])
            ),
            what="the update re-scored",
        )
        pg.execute("DELETE FROM feedback WHERE id = 3")
        await wait_for(lambda: _pg_vector(pg, 3) is None, what="the delete's embedding removed")
    expected = embeddings.embed(FEEDBACK[:1], 256)[0]
    # jsonb keeps the doubles; pgvector's vector is single precision.
    assert _pg_vector(pg, 1) == pytest.approx(expected, abs=1e-6 if pgvector else 1e-9)
    store = build_store(spec.source, spec.retry)
    pipeline = next(p for p in spec.pipelines if p.name == "feedback_embedding")
    sql = store.nearest_query(pipeline, "embedding", limit=2)
    assert ("<=>" in sql) == pgvector  # pgvector's cosine distance operator, where it is
    store.close()
    query = json.dumps(embeddings.embed(["my bill is wrong"], 256)[0])
    nearest = pg.rows(sql, (query,) * sql.count("%s"))
    assert len(nearest) == 2 and int(nearest[0][0]) == 1  # the billing complaint
    assert 0.5 < float(nearest[0][2]) <= 1.0 + 1e-6


def _pg_vector(pg: PgDatabase, key: int) -> list[float] | None:
    rows = pg.rows("SELECT embedding::text FROM feedback_embeddings WHERE id = %s", (key,))
    return [float(x) for x in json.loads(rows[0][0])] if rows else None


async def test_check_says_how_vectors_are_stored_and_fails_a_wrong_model_id(
    tmp_path: Path, server: DatabaseServer, database: str, db: Any, models: ModelServer
) -> None:
    insert_feedback(db, FEEDBACK[:1])
    spec = write_spec(
        tmp_path / "s.toml",
        server,
        database,
        models.url,
        [
            embedding_pipeline(),
            {**converse_pipeline(model_id="anthropic.claude-9-nonexistent-v1:0")},
        ],
    )
    lines = {r.name: r for r in await run_checks(spec)}
    stored = lines["vector feedback_embeddings.embedding"]
    if has_vectors(db):
        assert stored.ok and stored.detail == "VECTOR(256) (the server's vector type)"
    else:
        assert stored.ok and stored.detail.startswith("LONGTEXT, an array of 256 numbers")
    embedding = lines[f"endpoint bedrock {TITAN_V2} (pipeline feedback_embedding)"]
    assert embedding.ok and embedding.detail.startswith("answered embedding=[")
    wrong = lines["endpoint bedrock anthropic.claude-9-nonexistent-v1:0 (pipeline feedback_topic)"]
    assert not wrong.ok
    assert wrong.detail == (
        "Converse anthropic.claude-9-nonexistent-v1:0: ResourceNotFoundException (HTTP 404): "
        "Model not found."
    )
