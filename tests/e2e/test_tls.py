"""TLS to the database, against private servers that require it (require_secure_transport=ON)
with a CA and a server certificate made by the test: every connection — the binlog stream's
included, as the server sees it — is encrypted and verified; a certificate that does not verify
and a disabled TLS each stop the daemon with one line."""

from __future__ import annotations

import signal
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.servers import MARIADB, MYSQL, DatabaseServer, private_server
from tests.certificates import CertificateAuthority
from tests.e2e.daemon import kill, run_cli, start, wait
from tests.integration.scenario import (
    create_database,
    init_scorer,
    insert_churn,
    readme_grants,
    stored_churn,
    write_config,
)


@dataclass(frozen=True)
class TlsServer:
    server: DatabaseServer
    ca: Path  # the CA that signed the server's certificate (for "localhost" only)
    other_ca: Path  # a CA that signed nothing the server has


@pytest.fixture(scope="module", params=[MARIADB, MYSQL])
def tls_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority(directory, "test-ca")
    other = CertificateAuthority(directory, "other-ca")
    issued = ca.issue("server", dns=("localhost",))
    options: dict[str, Any] = {
        "server_id": 20,
        "extra_args": (
            f"--ssl-ca={ca.path}",
            f"--ssl-cert={issued.cert}",
            f"--ssl-key={issued.key}",
            "--require-secure-transport=ON",
            "--performance-schema=ON",  # the server's view of each session's transport
        ),
    }
    if request.param == MYSQL:
        options["distribution"] = request.getfixturevalue("mysql_distribution")
    with private_server(request.param, **options) as server:
        yield TlsServer(server, ca.path, other.path)


def _config(
    tmp_path: Path, tls_server: TlsServer, endpoint_url: str, tls: dict[str, str]
) -> tuple[Path, str]:
    """A config as a user with the README's grants and a password, connecting by name."""
    server = tls_server.server
    database = f"tls_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    spec = write_config(config, server, database, endpoint_url, snapshot="never")
    init_scorer(spec)
    user, password = f"tls_{uuid.uuid4().hex[:6]}", "Tls-pw-1!"
    admin = server.connect()
    with admin.cursor() as cursor:
        for statement in readme_grants(server.flavor, user, password, database):
            cursor.execute(statement)
    admin.close()
    settings = tomllib.loads(config.read_text())
    settings["source"] |= {"host": "localhost", "user": user, "password": password, "tls": tls}
    config.write_text(tomli_w.dumps(settings))
    return config, database


def _last_line(config: Path) -> str:
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 1, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def _checkpoints(db: Any) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM cdc_scorer_checkpoint")
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _transport_of_binlog_dump(server: DatabaseServer) -> list[str]:
    conn = server.connect()
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_TYPE FROM performance_schema.threads "
            "WHERE PROCESSLIST_COMMAND LIKE 'Binlog Dump%'"
        )
        types = [str(row[0]) for row in cursor.fetchall()]
    conn.close()
    return types


def test_verify_identity_scores_rows_over_tls_binlog_included(
    tmp_path: Path, tls_server: TlsServer, endpoints: BackgroundModelServer
) -> None:
    config, database = _config(
        tmp_path,
        tls_server,
        endpoints.url,
        {"mode": "verify-identity", "ca_file": str(tls_server.ca)},
    )
    check = run_cli("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    (tls_line,) = [line for line in check.stdout.splitlines() if "database TLS" in line]
    assert tls_line.startswith("PASS  database TLS: TLSv1."), tls_line
    assert "server certificate and host name verified" in tls_line
    server = tls_server.server
    daemon = start(config)
    try:
        db = server.connect(database)
        wait(lambda: _checkpoints(db) == 2, 30, "streaming from its checkpoints", daemon)
        insert_churn(db, list(ChurnRowGenerator(51).rows(20)))
        wait(lambda: len(stored_churn(db)) == 20, 60, "rows scored over TLS", daemon)
        db.close()
        # The server's own view of the binlog stream's session: TLS, not only the sink's.
        wait(lambda: bool(_transport_of_binlog_dump(server)), 30, "binlog dump thread", daemon)
        assert set(_transport_of_binlog_dump(server)) == {"SSL/TLS"}
    finally:
        assert kill(daemon, signal.SIGTERM) == 0


def test_a_certificate_that_does_not_verify_is_one_line_naming_tls(
    tmp_path: Path, tls_server: TlsServer, endpoints: BackgroundModelServer
) -> None:
    config, _ = _config(
        tmp_path,
        tls_server,
        endpoints.url,
        {"mode": "verify-identity", "ca_file": str(tls_server.other_ca)},
    )
    line = _last_line(config)
    assert line.startswith("cdc-scorer: connecting to localhost:"), line
    assert "TLS:" in line and "certificate verify failed" in line, line
    # The right CA, but the certificate names "localhost" and the config another host.
    settings = tomllib.loads(config.read_text())
    settings["source"]["host"] = "127.0.0.1"
    settings["source"]["tls"]["ca_file"] = str(tls_server.ca)
    config.write_text(tomli_w.dumps(settings))
    line = _last_line(config)
    assert "TLS:" in line and "127.0.0.1" in line and "mismatch" in line.lower(), line


def test_tls_disabled_against_a_server_that_requires_it(
    tmp_path: Path, tls_server: TlsServer, endpoints: BackgroundModelServer
) -> None:
    config, _ = _config(tmp_path, tls_server, endpoints.url, {"mode": "disabled"})
    line = _last_line(config)
    # MySQL names it (error 3159); MariaDB answers "access denied" (1045), and the fix says so.
    code = "MySQL error 3159" if tls_server.server.flavor == MYSQL else "MySQL error 1045"
    assert line.startswith("cdc-scorer: connecting to localhost:") and code in line, line
    assert "require_secure_transport" in line.lower(), line
    assert "[source.tls] mode to required" in line, line
