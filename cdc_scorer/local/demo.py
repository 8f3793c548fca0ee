"""`cdc-scorer demo`: the whole product on one machine, with data flowing.

A private MariaDB or MySQL with row binlog, or PostgreSQL with logical decoding → the blog's
tables with 5,000 generated churn rows and a few hundred feedback texts → local model endpoints
(SageMaker, Comprehend, and Bedrock: a feedback embedding and a Converse-derived topic) → the
scorer (snapshot first) → a live workload of inserts, updates and deletes → the blog's queries
against the ``*_scored`` views, and the feedback nearest "my bill is wrong" → a new churn model
version, the table re-scored by SageMaker Batch Transform jobs at a local control plane and S3
while the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cdc_scorer.app import ScorerApp
from cdc_scorer.config import load_config
from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import (
    CHURN_TABLE_DDL,
    CHURN_TABLE_DDL_POSTGRES,
    FEATURE_COLUMNS,
    FEEDBACK_TABLE_DDL,
    FEEDBACK_TABLE_DDL_POSTGRES,
    ChurnRowGenerator,
    FeedbackGenerator,
)
from cdc_scorer.local.endpoints import TITAN_V2, ModelServer, ModelServerConfig
from cdc_scorer.local.mysql_dist import ensure_mysql
from cdc_scorer.local.postgres import PostgresServer, PrivatePostgreSQL
from cdc_scorer.local.s3 import LocalS3
from cdc_scorer.local.scorer_config import local_scorer_config
from cdc_scorer.local.servers import MARIADB, MYSQL, DatabaseServer, free_port, private_server
from cdc_scorer.local.sid_dist import ServerUnavailable
from cdc_scorer.local.vector_servers import ensure_mariadb_vector
from cdc_scorer.mysql.connection import connect
from cdc_scorer.ops.logs import configure_logging
from cdc_scorer.stores.registry import build_store

DATABASE = "mltest"
POSTGRESQL = "postgresql"
MARIADB_VECTOR = "mariadb-vector"
# --server: the embedded default's source. MySQL as Aurora MySQL ships it (GTIDs off,
# file:pos), or with GTIDs on; PostgreSQL (logical replication) is _PostgresDemo's.
SERVERS: dict[str, tuple[str, dict[str, Any]]] = {
    MARIADB: ("MariaDB", {}),
    MYSQL: ("MySQL", {"gtid": False}),
    "mysql-gtid": ("MySQL", {"gtid": True}),
    # A server with a vector type (vector_servers: Debian sid's, unpacked).
    MARIADB_VECTOR: ("MariaDB 11.8", {}),
}

BLOG_QUERY = (
    "SELECT state, acc_length, area_code, int_plan, phone, will_churn FROM churn_scored LIMIT 5"
)
# The Bedrock pipelines of the demo (docs/how-to/bedrock.md): the feedback's embedding, and its
# topic and urgency through Converse with a forced tool.
CHAT_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
BEDROCK_PIPELINES: dict[str, Any] = {
    "feedback_embedding": {
        "table": "feedback",
        "service": "bedrock",
        "predictions_table": "feedback_embedding_predictions",
        "batching": {"max_in_flight": 8},
        "bedrock": {
            "model_id": TITAN_V2,
            "task": "embedding",
            "text_column": "user_feedback",
            "dimensions": 256,
            "requests_per_minute": 6000,
        },
    },
    "feedback_topic": {
        "table": "feedback",
        "service": "bedrock",
        "predictions_table": "feedback_topic_predictions",
        "batching": {"max_in_flight": 8},
        "bedrock": {
            "model_id": CHAT_MODEL,
            "task": "converse",
            "prompt_template": (
                "Give the topic of this customer feedback and say whether it is urgent.\n\n"
                "{user_feedback}"
            ),
            "max_tokens": 100,
            "requests_per_minute": 6000,
            "tokens_per_minute": 400_000,
            "output_schema": {
                "type": "object",
                "required": ["topic", "urgent"],
                "properties": {
                    "topic": {
                        "type": "string",
                        "enum": ["billing", "network coverage", "customer service", "other"],
                    },
                    "urgent": {"type": "boolean"},
                },
            },
        },
    },
}
TOPIC_QUERY = (
    "SELECT id, LEFT(user_feedback, 50) AS user_feedback, topic, urgent "
    "FROM feedback_topic_scored ORDER BY id DESC LIMIT 5"
)
NEAREST_TEXT = "my bill is wrong"
# The new churn model of the demo's second part: a re-score by Batch Transform jobs.
DEMO_BUCKET = "cdc-scorer-demo"
NEW_CHURN_MODEL: dict[str, Any] = {
    "model_version": "2",
    "backfill": {
        "mode": "auto",
        "min_rows": 1000,
        "s3_uri": f"s3://{DEMO_BUCKET}/backfills/",
        "role_arn": "arn:aws:iam::123456789012:role/cdc-scorer-demo-backfill",
        "records_per_job": 2000,
        "poll_s": 0.5,
    },
}
VERSIONS_QUERY = (
    "SELECT model_version, COUNT(*) AS predictions FROM churn_predictions GROUP BY model_version"
)
SENTIMENT_QUERY = (
    "SELECT id, LEFT(user_feedback, 50) AS user_feedback, sentiment, "
    "ROUND(sentiment_positive, 3) AS positive, ROUND(sentiment_negative, 3) AS negative "
    "FROM feedback_scored ORDER BY id DESC LIMIT 5"
)


def _load_scenario(
    conn: Any, churn_ddl: str, feedback_ddl: str, churn_rows: int, feedback_rows: int
) -> None:
    """The blog's tables in the connection's database, with generated rows."""
    columns = [*FEATURE_COLUMNS, "Churn"]
    with conn.cursor() as cursor:
        for ddl in (churn_ddl, feedback_ddl):
            for statement in (s for s in ddl.split(";") if s.strip()):
                cursor.execute(statement)
        rows = [tuple(r[c] for c in columns) for r in ChurnRowGenerator(1).rows(churn_rows)]
        cursor.executemany(
            f"INSERT INTO churn ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
            rows,
        )
        texts = FeedbackGenerator(2)
        cursor.executemany(
            "INSERT INTO feedback (user_feedback) VALUES (%s)",
            [(texts.text(),) for _ in range(feedback_rows)],
        )


class _MysqlDemo:
    """The demo on a private MariaDB or MySQL (the binlog)."""

    def __init__(self, server_name: str, base: Path) -> None:
        self.label, options = SERVERS[server_name]
        self.flavor = MYSQL if server_name.startswith(MYSQL) else MARIADB
        try:
            if server_name == MARIADB_VECTOR:
                options = {"distribution": ensure_mariadb_vector()}
            elif self.flavor == MYSQL:
                options = {**options, "distribution": ensure_mysql()}
        except ServerUnavailable as exc:
            raise FatalError(f"{self.label} unavailable: {exc}") from None
        self._launcher = private_server(self.flavor, basedir=base / self.flavor, **options)
        self._server: DatabaseServer | None = None
        self.sentiment_query = SENTIMENT_QUERY
        self.prompt = "mysql"

    def start(self) -> int:
        self._server = self._launcher.start()
        return self._server.port

    def stop(self) -> None:
        self._launcher.stop()

    def load(self, churn_rows: int, feedback_rows: int) -> None:
        assert self._server is not None
        conn = self._server.connect()
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4")
            cursor.execute(f"USE {DATABASE}")
        _load_scenario(conn, CHURN_TABLE_DDL, FEEDBACK_TABLE_DDL, churn_rows, feedback_rows)
        conn.close()

    def source(self) -> dict[str, Any]:
        return {}

    def connect(self, spec: ScorerSpec) -> Any:
        return connect(spec.source)

    def client(self, port: int) -> str:
        return f"{self.flavor} -h 127.0.0.1 -P {port} -u root {DATABASE}"


class _PostgresDemo:
    """The demo on a private PostgreSQL (logical replication)."""

    label = "PostgreSQL"
    prompt = "postgres"
    # round(double precision, int) does not exist in PostgreSQL: through numeric.
    sentiment_query = (
        "SELECT id, LEFT(user_feedback, 50) AS user_feedback, sentiment, "
        "ROUND(sentiment_positive::numeric, 3) AS positive, "
        "ROUND(sentiment_negative::numeric, 3) AS negative "
        "FROM feedback_scored ORDER BY id DESC LIMIT 5"
    )

    def __init__(self) -> None:
        self._launcher = PrivatePostgreSQL()
        self._server: PostgresServer | None = None

    def start(self) -> int:
        self._server = self._launcher.start()
        return self._server.port

    def stop(self) -> None:
        self._launcher.stop()

    def load(self, churn_rows: int, feedback_rows: int) -> None:
        assert self._server is not None
        admin = self._server.connect()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        admin.close()
        conn = self._server.connect(DATABASE)
        _load_scenario(
            conn, CHURN_TABLE_DDL_POSTGRES, FEEDBACK_TABLE_DDL_POSTGRES, churn_rows, feedback_rows
        )
        conn.close()

    def source(self) -> dict[str, Any]:
        assert self._server is not None
        return {"engine": "postgresql", "user": self._server.user}

    def connect(self, spec: ScorerSpec) -> Any:
        assert self._server is not None
        return self._server.connect(DATABASE)

    def client(self, port: int) -> str:
        return f"psql -h 127.0.0.1 -p {port} -U postgres {DATABASE}"


def _workload_step(
    conn: Any,
    churn: ChurnRowGenerator,
    feedback: FeedbackGenerator,
    rng: random.Random,
    phones: list[str],
) -> None:
    """One small application transaction: insert, update or delete."""
    columns = [*FEATURE_COLUMNS, "Churn"]
    with conn.cursor() as cursor:
        draw = rng.random()
        if draw < 0.4:
            row = churn.row()
            cursor.execute(
                f"INSERT INTO churn ({', '.join(columns)}) "
                f"VALUES ({', '.join(['%s'] * len(columns))})",
                tuple(row[c] for c in columns),
            )
            phones.append(row["phone"])
        elif draw < 0.75 and phones:
            fresh = churn.features(rng.random() < 0.5)
            cursor.execute(
                "UPDATE churn SET day_mins=%s, day_charge=%s, night_calls=%s WHERE phone=%s",
                (fresh["day_mins"], fresh["day_charge"], fresh["night_calls"], rng.choice(phones)),
            )
        elif draw < 0.85 and phones:
            phone = phones.pop(rng.randrange(len(phones)))
            cursor.execute("DELETE FROM churn WHERE phone=%s", (phone,))
        else:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (feedback.text(),))


def _status(conn: Any) -> tuple[int, int, int, int]:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COUNT(*) FROM churn), (SELECT COUNT(*) FROM churn_scored "
            "WHERE will_churn IS NULL), (SELECT COUNT(*) FROM feedback), "
            # Rows, not predictions: a feedback row waits while any of its three pipelines
            # has not scored it.
            "(SELECT COUNT(*) FROM feedback_scored s "
            "JOIN feedback_embedding_scored e ON e.id = s.id "
            "JOIN feedback_topic_scored t ON t.id = s.id "
            "WHERE s.sentiment IS NULL OR e.embedding IS NULL OR t.topic IS NULL)"
        )
        row = cursor.fetchone()
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def app_store_init(spec: ScorerSpec) -> None:
    """`cdc-scorer init`: the scorer's tables, then what the change log needs."""
    from cdc_scorer.commands.init import initialize

    initialize(spec)


def _print_query(
    conn: Any, sql: str, prompt: str, params: tuple[Any, ...] = (), shown: str | None = None
) -> None:
    with conn.cursor() as cursor:
        cursor.execute(sql, params or None)
        names = [d[0] for d in cursor.description]
        rows = [[("NULL" if v is None else str(v)) for v in r] for r in cursor.fetchall()]
    widths = [
        max(len(n), *(len(r[i]) for r in rows)) if rows else len(n) for i, n in enumerate(names)
    ]
    print(f"\n{prompt}> {shown or sql};")
    print(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


async def run_demo(
    seconds: float, rate: float, wait: bool, workdir: Path | None, server_name: str = MARIADB
) -> int:
    configure_logging("console" if wait else "json")
    # The local endpoints accept any SigV4 signature; the SDK still needs something to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local-demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-demo")
    base = workdir or Path(tempfile.mkdtemp(prefix="cdc-scorer-demo-"))
    database: _MysqlDemo | _PostgresDemo = (
        _PostgresDemo() if server_name == POSTGRESQL else _MysqlDemo(server_name, base)
    )
    label = database.label
    print(f"[demo] starting a private {label} with its change log in {base}", flush=True)
    port = await asyncio.to_thread(database.start)
    s3 = LocalS3()
    s3_url = await asyncio.to_thread(s3.start)
    await asyncio.to_thread(lambda: s3.client().create_bucket(Bucket=DEMO_BUCKET))
    models = ModelServer(ModelServerConfig(s3_url=s3_url))
    app: ScorerApp | None = None
    scorer_task: asyncio.Task[None] | None = None
    try:
        endpoint_url = await models.start()
        print(f"[demo] local model endpoints on {endpoint_url}", flush=True)
        await asyncio.to_thread(database.load, 5000, 300)
        print("[demo] loaded mltest.churn (5,000 generated rows) and mltest.feedback (300 texts)")
        config_path = base / "cdc-scorer.toml"
        http_port = free_port()
        config_path.write_text(
            local_scorer_config(
                port=port,
                database=DATABASE,
                endpoint_url=endpoint_url,
                http_port=http_port,
                overrides={"source": database.source(), "pipelines": BEDROCK_PIPELINES},
            )
        )
        spec = load_config(config_path)
        print(f"[demo] metrics and health: http://127.0.0.1:{http_port}/metrics  /readyz")
        conn = database.connect(spec)
        await asyncio.to_thread(app_store_init, spec)
        print(f"[demo] cdc-scorer init done; config in {config_path}")
        app = ScorerApp(spec)
        scorer_task = asyncio.create_task(app.run())
        print("[demo] scorer started: snapshot of existing rows first, then the change log")
        writer_conn = database.connect(spec)
        try:
            await _play(conn, writer_conn, app, models, scorer_task, seconds, rate)
        finally:
            writer_conn.close()
        _print_query(conn, BLOG_QUERY, database.prompt)
        _print_query(conn, database.sentiment_query, database.prompt)
        _print_query(conn, TOPIC_QUERY, database.prompt)
        await asyncio.to_thread(_print_nearest, conn, spec, database.prompt)
        # A new churn model: the scorer restarts with model_version 2 and re-scores the table
        # by SageMaker Batch Transform jobs, the stream scoring beside them.
        app.request_stop()
        await asyncio.wait_for(scorer_task, 30)
        config_path.write_text(
            local_scorer_config(
                port=port,
                database=DATABASE,
                endpoint_url=endpoint_url,
                http_port=http_port,
                overrides={
                    "source": database.source(),
                    "aws": {"s3_endpoint_url": s3_url},
                    "pipelines": {**BEDROCK_PIPELINES, "churn": NEW_CHURN_MODEL},
                },
            )
        )
        spec = load_config(config_path)
        app = ScorerApp(spec)
        scorer_task = asyncio.create_task(app.run())
        writer_conn = database.connect(spec)
        try:
            await _new_model_version(conn, writer_conn, app, models, scorer_task)
        finally:
            writer_conn.close()
        _print_query(conn, VERSIONS_QUERY, database.prompt)
        print(
            f"\n[demo] connect while it runs:  {database.client(port)}\n"
            "        e.g. SELECT * FROM churn_scored LIMIT 5;"
        )
        if wait:
            print(
                "[demo] the scorer keeps running on new writes; Ctrl-C stops everything", flush=True
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            done = asyncio.ensure_future(stop.wait())
            await asyncio.wait({done, scorer_task}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
        conn.close()
    finally:
        if app is not None and scorer_task is not None:
            app.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scorer_task, 30)
        await models.stop()
        await asyncio.to_thread(s3.stop)
        await asyncio.to_thread(database.stop)
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        print(f"[demo] stopped: scorer, endpoints and {label} are down, temp dir removed")
    if scorer_task is not None and scorer_task.done() and scorer_task.exception():
        raise scorer_task.exception()  # type: ignore[misc]
    return 0


def _print_nearest(conn: Any, spec: ScorerSpec, prompt: str) -> None:
    """The feedback nearest a text: its vector from the same model through Bedrock's
    InvokeModel (here the local endpoint), then the store's nearest-neighbour query."""
    import boto3

    pipeline = next(p for p in spec.pipelines if p.name == "feedback_embedding")
    client = boto3.client(
        "bedrock-runtime", region_name=spec.aws.region, endpoint_url=spec.aws.endpoint_url
    )
    answer = client.invoke_model(
        modelId=TITAN_V2,
        body=json.dumps({"inputText": NEAREST_TEXT, "dimensions": 256, "normalize": True}),
    )
    vector = json.dumps(json.loads(answer["body"].read())["embedding"])
    store = build_store(spec.source, spec.retry)
    try:
        sql = store.nearest_query(pipeline, "embedding", limit=5)
    finally:
        store.close()
    print(f"\n[demo] feedback like {NEAREST_TEXT!r} ({store_kind(sql)}):")
    literal = f"'{vector[:30]}… 256 numbers]'"
    _print_query(conn, sql, prompt, (vector,) * sql.count("%s"), sql.replace("%s", literal))


def store_kind(sql: str) -> str:
    """How the query compares vectors, said in the demo's words."""
    if "<=>" in sql:
        return "pgvector's <=> on a vector column"
    if "VEC_DISTANCE_COSINE" in sql:
        return "MariaDB's VEC_DISTANCE_COSINE on a VECTOR column"
    if "VECTOR_TO_STRING" in sql:
        return "a VECTOR column; MySQL community has no distance function: a dot product"
    return "the vectors are JSON arrays on this server: a dot product over them"


async def _new_model_version(
    conn: Any,
    writer_conn: Any,
    app: ScorerApp,
    models: ModelServer,
    scorer_task: asyncio.Task[None],
) -> None:
    """Model version 2 of churn: every row re-scored by Batch Transform jobs while a short
    workload goes on; progress until no prediction of version 1 is left."""
    print(
        "\n[demo] churn model version 2: a re-score of the table by SageMaker Batch Transform "
        "jobs (files in the local S3), the stream scoring changes beside them",
        flush=True,
    )
    calls_before = _endpoint_rows(models)
    writer = _Writer(writer_conn, 20, 4)
    writer.start()
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(1)
            if scorer_task.done():
                scorer_task.result()
            with conn.cursor() as cursor:
                # Predictions, by key (the blog's table has no primary key: a phone may repeat).
                cursor.execute(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN model_version = '2' THEN 1 ELSE 0 "
                    "END), 0) FROM churn_predictions"
                )
                predictions, renewed = (int(v) for v in cursor.fetchone())
            jobs = Counter(j.state for j in app.telemetry.batch_jobs.values())
            print(
                f"[demo] t={time.monotonic() - started:4.1f}s churn predictions of version 2: "
                f"{renewed}/{predictions} | batch jobs: {dict(jobs) or 'preparing'} | real-time "
                f"rows at the endpoint since: {_endpoint_rows(models) - calls_before}",
                flush=True,
            )
            state = app.telemetry.pipelines.get("churn")
            rescoring = state is None or state.rescores.running is not None
            if renewed == predictions and not rescoring and not writer.is_alive():
                break
            if time.monotonic() - started > 120:
                raise RuntimeError("the re-score by batch jobs did not finish within 120 s")
    finally:
        writer.stop()
        writer.join(timeout=10)
    counts = app.telemetry.backfill_records
    print(
        f"[demo] version 2 everywhere: {counts[('churn', 'answered')]} rows from "
        f"{len(app.telemetry.batch_jobs)} batch jobs, {counts[('churn', 'superseded')]} kept "
        "the stream's newer prediction; the endpoint scored only the stream's changes "
        f"({_endpoint_rows(models) - calls_before} rows)"
    )


def _endpoint_rows(models: ModelServer) -> int:
    calls = models.stats()["operations"].get("InvokeEndpoint", {})
    return sum(int(c.get("rows", 0)) for c in calls.values())


class _Writer(threading.Thread):
    """The live workload on a connection and a thread of its own, paced by a schedule (a
    transaction every 1/rate s, catching up when late), so the scorer working in the same
    process delays it no more than the machine's cores do."""

    def __init__(self, conn: Any, rate: float, seconds: float) -> None:
        super().__init__(name="demo-writer", daemon=True)
        self._conn, self._rate, self._seconds = conn, rate, seconds
        self.writes = 0
        self.elapsed = 0.0
        self.failure: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        churn, feedback, rng = ChurnRowGenerator(99), FeedbackGenerator(98), random.Random(97)
        try:
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT phone FROM churn")
                phones = [str(r[0]) for r in cursor.fetchall()]
            started = due = time.monotonic()
            while not self._stop_event.is_set() and time.monotonic() - started < self._seconds:
                _workload_step(self._conn, churn, feedback, rng, phones)
                self.writes += 1
                self.elapsed = time.monotonic() - started
                due += 1 / self._rate
                self._stop_event.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # reported by the loop, which stops the demo
            self.failure = exc

    def rate_reached(self) -> float:
        return self.writes / self.elapsed if self.elapsed else 0.0

    def stop(self) -> None:
        self._stop_event.set()


async def _play(
    conn: Any,
    writer_conn: Any,
    app: ScorerApp,
    models: ModelServer,
    scorer_task: asyncio.Task[None],
    seconds: float,
    rate: float,
) -> None:
    writer = _Writer(writer_conn, rate, seconds)
    started = time.monotonic()
    print(f"[demo] playing a live workload for {seconds:.0f}s at ~{rate:.0f} transactions/s")
    writer.start()
    try:
        while True:
            await asyncio.sleep(2)
            now = time.monotonic()
            if scorer_task.done():
                scorer_task.result()
            if writer.failure is not None:
                raise writer.failure
            churn_rows, churn_pending, feedback_rows, feedback_pending = _status(conn)
            stats = models.stats()
            print(
                f"[demo] t={now - started:5.1f}s writes={writer.writes} "
                f"({writer.rate_reached():.0f}/s) "
                f"scored churn={app.telemetry.rows_scored['churn']} "
                f"feedback={app.telemetry.rows_scored['feedback']} "
                f"embedding={app.telemetry.rows_scored['feedback_embedding']} "
                f"topic={app.telemetry.rows_scored['feedback_topic']} | unscored rows: "
                f"churn {churn_pending}/{churn_rows}, feedback {feedback_pending}/{feedback_rows}"
                f" | model calls={stats['total_calls']} dead letters="
                f"{sum(app.telemetry.dead_letters.values())}",
                flush=True,
            )
            if not writer.is_alive() and churn_pending == 0 and feedback_pending == 0:
                print(
                    f"[demo] the workload wrote {writer.writes} transactions in "
                    f"{writer.elapsed:.0f}s: {writer.rate_reached():.0f}/s (asked ~{rate:.0f}/s)"
                )
                return
            if now - started > seconds + 60:
                raise RuntimeError("the scorer did not catch up within 60 s of the workload")
    finally:
        writer.stop()
        writer.join(timeout=10)
