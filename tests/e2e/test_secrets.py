"""Secrets never leak: a distinctive password, through a bad config, an authentication
failure and a lost connection, is nowhere in what the processes wrote — logs at debug level
(the libraries' own included), `check`, `status`, metrics, dead letters."""

from __future__ import annotations

import os
import signal
import subprocess
import tomllib
import uuid
from pathlib import Path

import pymysql
import tomli_w

from cdc_scorer.local.churn_data import ChurnRowGenerator
from cdc_scorer.local.endpoints import BackgroundModelServer
from cdc_scorer.local.servers import DatabaseServer, free_port
from tests.e2e.daemon import CLI, http_get, start, wait
from tests.integration.scenario import (
    create_database,
    init_scorer,
    insert_churn,
    readme_grants,
    stored_churn,
    write_config,
)

SECRET = f"Zq-{uuid.uuid4().hex}-sEcReT"  # found nowhere, in any case or encoding
UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD


def _cli(*args: str, password: str) -> str:
    """Everything a command wrote, the password given the ECS way (the environment)."""
    env = {**os.environ, "CDC_SCORER_SOURCE__PASSWORD": password}
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    return result.stdout + result.stderr


def _assert_no_secret(text: str, where: str) -> None:
    for form in (SECRET, SECRET.lower(), SECRET.upper(), SECRET[3:-7]):
        assert form not in text, f"the password is in {where}"


def test_the_password_is_nowhere(
    tmp_path: Path, server: DatabaseServer, endpoints: BackgroundModelServer
) -> None:
    database = f"sec_{uuid.uuid4().hex[:6]}"
    create_database(server, database)
    config = tmp_path / "s.toml"
    http_port = free_port()
    spec = write_config(config, server, database, endpoints.url, http_port=http_port)
    init_scorer(spec)
    user = f"sec_{uuid.uuid4().hex[:6]}"
    admin = server.connect()
    with admin.cursor() as cursor:
        for statement in readme_grants(server.flavor, user, SECRET, database):
            cursor.execute(statement)
    settings = tomllib.loads(config.read_text())
    settings["source"]["user"] = user
    config.write_text(tomli_w.dumps(settings))
    written: list[tuple[str, str]] = []

    # A bad config: the password in the file and the environment, next to real problems.
    bad = tmp_path / "bad.toml"
    broken = tomllib.loads(config.read_text())
    broken["source"] |= {"password": SECRET, "port": 0, "colour": SECRET}
    bad.write_text(tomli_w.dumps(broken))
    written.append(("a bad config's errors", _cli("run", "--config", str(bad), password=SECRET)))
    assert "source.colour: Extra inputs are not permitted" in written[-1][1]

    # An authentication failure: the right user, a wrong (equally distinctive) password.
    wrong = SECRET[::-1]
    for command in ("run", "check", "status"):
        out = _cli(command, "--config", str(config), password=wrong)
        assert "Access denied" in out, out
        _assert_no_secret(out.replace(wrong, "<wrong>"), f"{command} with a wrong password")
        assert wrong not in out, f"the wrong password is in {command}'s output"

    # A daemon at debug level loses its connections and gets them back.
    daemon = start(
        config,
        env={"CDC_SCORER_SOURCE__PASSWORD": SECRET},
        args=("--log-level", "debug"),
    )
    try:
        db = server.connect(database)
        insert_churn(db, list(ChurnRowGenerator(61).rows(10)))
        wait(lambda: len(stored_churn(db)) == 10, 60, "rows scored", daemon)
        with admin.cursor() as cursor:
            cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
            killed = 0
            for (connection_id,) in cursor.fetchall():
                try:
                    cursor.execute(f"KILL {int(connection_id)}")
                    killed += 1
                except pymysql.err.OperationalError as error:
                    # 1094: the connection ended on its own between the listing and the KILL.
                    if error.args[0] != UNKNOWN_THREAD:
                        raise
            assert killed, "no connection of the daemon's user was killed"
        insert_churn(db, list(ChurnRowGenerator(62).rows(10)))
        wait(lambda: len(stored_churn(db)) == 20, 60, "scored after reconnecting", daemon)
        assert "binlog disconnected" in daemon.log() or "retrying" in daemon.log()
        status, metrics_text = http_get(f"http://127.0.0.1:{http_port}/metrics")
        assert status == 200
        written.append(("metrics", metrics_text))
        written.append(("status", _cli("status", "--config", str(config), password=SECRET)))
        written.append(("check", _cli("check", "--config", str(config), password=SECRET)))
        with db.cursor() as cursor:
            cursor.execute("SELECT * FROM cdc_scorer_dead_letter")
            written.append(("dead letters", repr(cursor.fetchall())))
        db.close()
    finally:
        assert daemon.stop(signal.SIGTERM) == 0
        admin.close()
    log = daemon.log()
    assert '"level": "debug"' in log or "DEBUG" in log  # the debug level was on
    written.append(("the daemon's log", log))
    for where, text in written:
        _assert_no_secret(text, where)
