"""A private PostgreSQL with logical decoding, for the tests and the demo of the PostgreSQL
source: Debian's server, ``initdb`` into a temp dir, ``wal_level=logical``, on a free
loopback port. As root the server runs as the ``postgres`` user (it refuses root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.servers import free_port
from cdc_scorer.local.vector_servers import PostgresDistribution


class PostgresUnavailable(Exception):
    """No PostgreSQL server programs on this machine (``make test`` installs Debian's)."""


def postgres_bin() -> Path:
    """The directory of Debian's newest installed ``postgres`` and ``initdb``."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=_major)
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable(
        "no PostgreSQL server: `apt-get install -y postgresql` (make test does it as root)"
    )


def _major(path: Path) -> int:
    name = path.parent.parent.name
    return int(name) if name.isdigit() else 0


@dataclass(frozen=True)
class PostgresServer:
    """How to reach a running private PostgreSQL."""

    host: str
    port: int
    user: str
    datadir: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def connect(self, database: str = "postgres", **options: Any) -> Any:
        """An autocommit psycopg2 connection as the superuser (tests and the demo)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(database), **options)
        conn.autocommit = True
        return conn


class PrivatePostgreSQL:
    """``with PrivatePostgreSQL() as server:`` — started on enter, stopped and removed on exit."""

    def __init__(
        self,
        start_timeout_s: float = 60.0,
        settings: dict[str, str] | None = None,
        hba: str | None = None,
        files: dict[str, Path] | None = None,
        distribution: PostgresDistribution | None = None,
    ) -> None:
        # A newer server than the machine's (vector_servers: PostgreSQL 18 with pgvector).
        self._distribution = distribution
        self._start_timeout_s = start_timeout_s
        self._settings = dict(settings or {})  # more -c settings (e.g. wal_level=replica)
        self._hba = hba  # pg_hba.conf's text instead of initdb's (e.g. TLS only)
        # Files copied into the data directory, owned by the server's user with mode 0600
        # (the server refuses a key others can read): name → source path.
        self._files = dict(files or {})
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.server: PostgresServer | None = None

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _bindir(self) -> Path:
        return self._distribution.bindir if self._distribution is not None else postgres_bin()

    def start(self) -> PostgresServer:
        binaries = self._bindir()
        self._dir = tempfile.TemporaryDirectory(prefix="cdc-scorer-postgres-")
        base = Path(self._dir.name)
        datadir = base / "data"
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        result = subprocess.run(
            self._as_owner(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise FatalError(f"initdb failed: {result.stderr.strip()[-500:]}")
        if self._hba is not None:
            (datadir / "pg_hba.conf").write_text(self._hba)
        for name, source in self._files.items():
            target = datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
        if os.geteuid() == 0:
            for name in [*self._files, "pg_hba.conf"]:
                shutil.chown(datadir / name, "postgres", "postgres")
        self.server = PostgresServer("127.0.0.1", free_port(), "postgres", datadir)
        self._launch()
        return self.server

    def _launch(self) -> None:
        assert self.server is not None
        base = self.server.datadir.parent
        log = (base / "server.log").open("ab")
        self._process = subprocess.Popen(
            self._as_owner(
                [
                    str(self._bindir() / "postgres"),
                    "-D",
                    str(self.server.datadir),
                    "-p",
                    str(self.server.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={base}",
                    "-c",
                    "wal_level=logical",
                    "-c",
                    "max_replication_slots=20",
                    "-c",
                    "max_wal_senders=20",
                    "-c",
                    "fsync=off",
                    *(a for k, v in self._settings.items() for a in ("-c", f"{k}={v}")),
                ]
            ),
            stdout=log,
            stderr=log,
        )
        log.close()
        self._wait_ready(base / "server.log")

    def restart(self) -> None:
        """Stop the server (a fast shutdown) and start it again on the same port and data."""
        self._shutdown()
        self._launch()

    def _wait_ready(self, log: Path) -> None:
        import psycopg2

        assert self.server is not None and self._process is not None
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise FatalError(f"postgres exited: {log.read_text()[-1000:]}")
            try:
                self.server.connect().close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise FatalError(f"postgres did not start: {log.read_text()[-1000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._shutdown()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None

    def _shutdown(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The postmaster itself (as root it runs under runuser): SIGINT is a fast shutdown.
            pid = process.pid
            if self.server is not None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    lines = (self.server.datadir / "postmaster.pid").read_text().splitlines()
                    pid = int(lines[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # A fast shutdown waits for its walsenders' clients: past that, immediate.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                process.wait(timeout=30)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
