"""The daemon as a subprocess, as an operator runs it: start, wait, signal, scrape."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from cdc_scorer.local.postgres import PostgresServer
from cdc_scorer.local.servers import DatabaseServer

CLI = [sys.executable, "-m", "cdc_scorer"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Daemon(subprocess.Popen[str]):
    """``cdc-scorer run`` with its log in a file (a pipe nobody reads would block it)."""

    # Of the running test: killed when it ends (tests/e2e/conftest.py).
    started: ClassVar[list[Daemon]] = []

    def __init__(
        self,
        config: Path,
        name: str = "daemon",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = config.parent / f"{name}.log"
        self._log = self.log_path.open("a")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", **(env or {})}
        super().__init__(
            [*CLI, "run", "--config", str(config), "--log-format", "json", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
            env=env,
        )
        Daemon.started.append(self)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 30) -> int:
        self.send_signal(sig)
        code = self.wait(timeout=timeout)
        self._log.close()
        return code


def wait(condition: Any, timeout_s: float, what: str, process: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"daemon exited ({process.returncode}) waiting for {what}: {process.log()[-3000:]}"
            )
        if time.monotonic() > deadline:
            tail = f": {process.log()[-3000:]}" if process is not None else ""
            raise AssertionError(f"timed out waiting for {what}{tail}")
        time.sleep(0.05)


def start(
    config: Path,
    name: str = "daemon",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Daemon:
    return Daemon(config, name, env, args)


def kill(daemon: Daemon, sig: int = signal.SIGKILL) -> int:
    return daemon.stop(sig)


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """Status and body of a GET (errors are answers too: 503 from /readyz)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float | None:
    """The value of one sample line (``name`` includes labels) of an exposition, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def kill_leftovers() -> None:
    """Kill the daemons a test started and left running (it failed half-way)."""
    while Daemon.started:
        daemon = Daemon.started.pop()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
        daemon._log.close()


class VersionMonitor(threading.Thread):
    """Polls the predictions while the daemon is killed and restarted: for every key, the
    source transaction of its prediction must never go back to an older row version."""

    def __init__(self, server: DatabaseServer | PostgresServer, database: str) -> None:
        super().__init__(daemon=True)
        self._server, self._database = server, database
        self._conn = server.connect(database)
        self._halt = threading.Event()
        self.seen: dict[str, tuple[str, int]] = {}
        self.regressions: list[tuple[str, tuple[str, int], tuple[str, int]]] = []
        self.polls = 0

    def run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                with self._conn.cursor() as cursor:
                    cursor.execute("SELECT phone, source_position FROM churn_predictions")
                    rows = cursor.fetchall()
            except Exception:  # the server restarts under a test: poll again once it is back
                with contextlib.suppress(Exception):
                    self._conn.close()
                with contextlib.suppress(Exception):
                    self._conn = self._server.connect(self._database)
                continue
            self.polls += 1
            for phone, position in rows:
                seq = _transaction_order(position)
                before = self.seen.get(phone, ("", -1))
                if seq < before:
                    self.regressions.append((phone, before, seq))
                self.seen[phone] = max(before, seq)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        with contextlib.suppress(Exception):  # stopped twice: closed already
            self._conn.close()


def _transaction_order(position: str | None) -> tuple[str, int]:
    """A prediction's source transaction as a sortable value: GTID seq, binlog file:pos or
    PostgreSQL commit LSN."""
    if not position:
        return ("", -1)  # a snapshot row
    if "/" in position:  # a PostgreSQL commit LSN
        high, _, low = position.partition("/")
        return ("", (int(high, 16) << 32) | int(low, 16))
    if ":" in position:
        log_file, _, pos = position.rpartition(":")
        return (log_file, int(pos))
    return ("", int(position.rsplit("-", 1)[-1]))


def purge_binlogs(db: Any) -> None:
    """Every binlog file but the newest purged (as retention does while the scorer is down)."""
    with db.cursor() as cursor:
        cursor.execute("FLUSH BINARY LOGS")
        cursor.execute("SHOW BINARY LOGS")
        newest = cursor.fetchall()[-1][0]

        def purged() -> bool:
            # MariaDB keeps a file until InnoDB has checkpointed its transactions.
            cursor.execute(f"PURGE BINARY LOGS TO '{newest}'")
            cursor.execute("SHOW BINARY LOGS")
            return len(cursor.fetchall()) == 1

        wait(purged, 30, "binlog purged")
