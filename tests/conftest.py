"""Shared fixtures: the project's own private servers (MariaDB and MySQL) and local endpoints.

Every test that reads a binlog takes the ``source`` fixture and so runs on four sources:
MariaDB with GTIDs, MariaDB by file:pos, MySQL with ``gtid_mode=ON`` (GTID sets) and MySQL with
``gtid_mode=OFF`` (file:pos, as Aurora MySQL ships). When MySQL cannot be had here, its tests
are skipped with the reason, and the run ends with a banner saying so.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from cdc_scorer.local.endpoints import BackgroundModelServer, ModelServer, ModelServerConfig
from cdc_scorer.local.kafka import BrokerTls, KafkaStack, KafkaUnavailable, ensure_kafka_jars
from cdc_scorer.local.mysql_dist import MysqlDistribution, MysqlUnavailable, ensure_mysql
from cdc_scorer.local.postgres import PostgresServer, PostgresUnavailable, PrivatePostgreSQL
from cdc_scorer.local.s3 import LocalS3
from cdc_scorer.local.servers import DatabaseServer, PrivateMariaDB, PrivateMySQL
from cdc_scorer.local.sid_dist import ServerUnavailable
from cdc_scorer.local.vector_servers import (
    MariadbDistribution,
    ensure_mariadb_vector,
    ensure_pgvector,
)
from tests.pg import PgDatabase

# Clients find the local endpoints through the standard settings, as in production.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)

TEST_ENDPOINTS = {
    "churn-autopilot-endpoint": "predicted_label,probability",
    "churn-label-only": "predicted_label",
    "churn-probabilities": "probabilities",
}

SOURCES = ("mariadb-gtid", "mariadb-file", "mysql-gtid", "mysql-file")
# How each fixture's skip reason starts: the banners at the end of the run look for these.
MYSQL_UNAVAILABLE = "MySQL server unavailable"
POSTGRES_UNAVAILABLE = "PostgreSQL server unavailable"
KAFKA_UNAVAILABLE = "Kafka stack unavailable"
VECTOR_SERVERS = ("MariaDB 11.8", "PostgreSQL with pgvector")
_MYSQL_UNAVAILABLE: list[str] = []


@dataclass(frozen=True)
class Source:
    """A server and the ``[source.binlog] positions`` a test configures for it."""

    name: str  # one of SOURCES
    server: DatabaseServer
    positions: str  # auto | file

    @property
    def mysql(self) -> bool:
        return self.server.flavor == "mysql"


@pytest.fixture(scope="session")
def mariadb() -> Iterator[DatabaseServer]:
    """One private MariaDB with row binlog for the session (tests use their own databases)."""
    with PrivateMariaDB(server_id=1) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_distribution() -> MysqlDistribution:
    """The unpacked MySQL server (fetched once, cached in .cache/); skips if it cannot be had."""
    if _MYSQL_UNAVAILABLE:
        pytest.skip(_MYSQL_UNAVAILABLE[0])
    try:
        return ensure_mysql()
    except MysqlUnavailable as exc:
        _MYSQL_UNAVAILABLE.append(f"{MYSQL_UNAVAILABLE}: {exc}")
        pytest.skip(_MYSQL_UNAVAILABLE[0])


@pytest.fixture(scope="session")
def mysql_gtid(mysql_distribution: MysqlDistribution) -> Iterator[DatabaseServer]:
    """A private MySQL with ``gtid_mode=ON``."""
    with PrivateMySQL(server_id=2, gtid=True, distribution=mysql_distribution) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_file(mysql_distribution: MysqlDistribution) -> Iterator[DatabaseServer]:
    """A private MySQL with ``gtid_mode=OFF`` (Aurora MySQL's default)."""
    with PrivateMySQL(server_id=3, gtid=False, distribution=mysql_distribution) as server:
        yield server


def source_of(request: pytest.FixtureRequest, name: str) -> Source:
    if name.startswith("mariadb"):
        server: DatabaseServer = request.getfixturevalue("mariadb")
        return Source(name, server, "file" if name.endswith("file") else "auto")
    fixture = "mysql_gtid" if name == "mysql-gtid" else "mysql_file"
    return Source(name, request.getfixturevalue(fixture), "auto")


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest) -> Source:
    """Each of the four sources in turn."""
    return source_of(request, request.param)


@pytest.fixture(params=["mariadb", "mysql-gtid"])
def server(request: pytest.FixtureRequest) -> DatabaseServer:
    """Each server flavour (for tests whose subject is the server, not the positions)."""
    return source_of(request, "mariadb-gtid" if request.param == "mariadb" else "mysql-gtid").server


@pytest.fixture
def models_threaded() -> Iterator[BackgroundModelServer]:
    """Local endpoints in a thread, for blocking clients (boto3, subprocess daemons)."""
    with BackgroundModelServer(ModelServerConfig(endpoints=dict(TEST_ENDPOINTS))) as server:
        yield server


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """One S3 protocol server (moto's server mode) for the session's batch jobs."""
    with LocalS3() as server:
        yield server


@pytest.fixture
async def models() -> AsyncIterator[ModelServer]:
    """Local endpoints on the test's own event loop, for aiobotocore clients."""
    server = ModelServer(ModelServerConfig(endpoints=dict(TEST_ENDPOINTS)))
    await server.start()
    yield server
    await server.stop()


_POSTGRES_UNAVAILABLE: list[str] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL with wal_level=logical; skips (red banner) if it cannot be had."""
    if _POSTGRES_UNAVAILABLE:
        pytest.skip(_POSTGRES_UNAVAILABLE[0])
    launcher = PrivatePostgreSQL()
    try:
        server = launcher.start()
    except PostgresUnavailable as exc:
        _POSTGRES_UNAVAILABLE.append(f"{POSTGRES_UNAVAILABLE}: {exc}")
        pytest.skip(_POSTGRES_UNAVAILABLE[0])
    try:
        yield server
    finally:
        launcher.stop()


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[PgDatabase]:
    """A database of the test's own on the private PostgreSQL, with the blog's tables."""
    database = PgDatabase(postgres)
    yield database
    database.drop()


_Fetched = TypeVar("_Fetched")


def _fetch_or_skip(fetch: Callable[[], _Fetched], what: str) -> _Fetched:
    try:
        return fetch()
    except ServerUnavailable as exc:
        pytest.skip(f"{what} unavailable: {exc}")


@pytest.fixture(scope="session")
def mariadb_vector_distribution() -> MariadbDistribution:
    """MariaDB 11.8 (``VECTOR(N)``; Debian sid's, unpacked); skips (red banner) if it cannot
    be had."""
    return _fetch_or_skip(ensure_mariadb_vector, VECTOR_SERVERS[0])


@pytest.fixture(scope="session")
def mariadb_vector(mariadb_vector_distribution: MariadbDistribution) -> Iterator[DatabaseServer]:
    """A private MariaDB 11.8."""
    distribution = mariadb_vector_distribution
    with PrivateMariaDB(server_id=4, distribution=distribution) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_vector() -> Iterator[PostgresServer]:
    """A private PostgreSQL 18 with pgvector (Debian sid's, unpacked); skips (red banner) if
    it cannot be had."""
    distribution = _fetch_or_skip(ensure_pgvector, VECTOR_SERVERS[1])
    with PrivatePostgreSQL(distribution=distribution) as server:
        yield server


KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD = "scorer", "scram-secret-7"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaStack]:
    """A private Kafka broker (KRaft) and Kafka Connect worker with Debezium's connectors
    (jars from Maven Central); skips (red banner) when Java or the jars cannot be had. Its
    broker also listens with SSL and SASL_SSL (SCRAM-SHA-512, user ``KAFKA_SCRAM_USER``), its
    certificate from a CA of the test's (``stack.tls.ca_file``)."""
    try:
        ensure_kafka_jars()
    except KafkaUnavailable as exc:
        pytest.skip(f"{KAFKA_UNAVAILABLE}: {exc}")
    with KafkaStack(tls=_broker_tls(tmp_path_factory.mktemp("kafka-tls"))) as stack:
        yield stack


def _broker_tls(directory: Path) -> BrokerTls:
    """The broker's PEM keystore (PKCS#8 key, then its certificate and the CA's)."""
    from cryptography.hazmat.primitives import serialization

    from tests.certificates import CertificateAuthority

    authority = CertificateAuthority(directory, "kafka-test-ca")
    issued = authority.issue("kafka-broker", dns=("localhost",), ips=("127.0.0.1",))
    key = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
    keystore = directory / "broker-keystore.pem"
    keystore.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + issued.cert.read_bytes()
        + authority.path.read_bytes()
    )
    return BrokerTls(keystore, authority.path, {KAFKA_SCRAM_USER: KAFKA_SCRAM_PASSWORD})


# The banners, by the start of the skip reasons the fixtures above give: read from the run's
# skip reports, so they are printed whether the tests ran in this process or in workers.
_BANNERS = (
    ("KAFKA NOT TESTED", (KAFKA_UNAVAILABLE,), ""),
    ("VECTOR SERVERS NOT TESTED", tuple(f"{what} unavailable" for what in VECTOR_SERVERS), ""),
    ("PostgreSQL NOT TESTED", (POSTGRES_UNAVAILABLE,), ""),
    (
        "MySQL NOT TESTED",
        (MYSQL_UNAVAILABLE,),
        "every MySQL case of the matrix was skipped: this run proves MariaDB only",
    ),
)


def _skip_reasons(terminalreporter: pytest.TerminalReporter) -> list[str]:
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.append(str(longrepr[2]).removeprefix("Skipped: "))
    return reasons


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons = _skip_reasons(terminalreporter)
    for title, starts, after in _BANNERS:
        lines = list(dict.fromkeys(r for r in reasons if r.startswith(starts)))
        if not lines:
            continue
        terminalreporter.section(title, sep="!", red=True, bold=True)
        for line in lines:
            terminalreporter.line(line, red=True)
        if after:
            terminalreporter.line(after, red=True)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the Kafka stack (a broker and a Connect worker on the JVM, one per process)
    run in one worker when the suite runs in several (`make test`: pytest-xdist, --dist
    loadgroup), so only one process starts it."""
    for item in items:
        if "kafka" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("kafka"))
