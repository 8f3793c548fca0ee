"""The one launcher of private database servers with row binlog: MariaDB or MySQL, behind one
interface (used by demo, tests and benchmarks).

Each server lives in its own directory on a free loopback port, with the binlog settings
cdc-scorer needs (docs/architecture.md). MariaDB is the machine's ``mariadbd``; MySQL is the
unpacked server of ``mysql_dist`` (GTIDs on or off: Aurora MySQL ships with them off).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pymysql

from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.mysql_dist import MysqlDistribution, ensure_mysql
from cdc_scorer.local.vector_servers import MariadbDistribution

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin", "/usr/libexec")

# Settings every private instance gets; the binlog ones are what cdc-scorer needs.
ROW_BINLOG_ARGS: tuple[str, ...] = (
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
)


def _find_binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in _SEARCH_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise FatalError(
        f"{names[0]} not found: install the MariaDB server "
        "(apt-get install -y mariadb-server) to run the embedded default"
    )


# Test workers side by side (pytest-xdist sets PYTEST_XDIST_WORKER=gw0, gw1, …) draw ports
# from ranges of their own below Linux's ephemeral ports (32768 and up): a port handed out and
# not yet bound can then be neither the other worker's nor the source port of some outgoing
# connection (both happened: "address already in use" for a daemon's /metrics).
_WORKER_PORTS = 2000
_WORKER_BASE = 20000
_handed: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (and not handed out before by this
    process, in a test worker)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        base = _WORKER_BASE + _WORKER_PORTS * (int(worker[2:]) % 6)
        for _ in range(_WORKER_PORTS):
            port = random.randrange(base, base + _WORKER_PORTS)
            if port in _handed:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


MARIADB = "mariadb"
MYSQL = "mysql"


@dataclass(frozen=True)
class DatabaseServer:
    """How to reach a running private server."""

    host: str
    port: int
    user: str
    password: str
    server_id: int
    datadir: Path
    socket_path: Path
    flavor: str = MARIADB  # mariadb | mysql
    gtid: bool = True  # MySQL: gtid_mode=ON (MariaDB always has GTIDs)

    @property
    def name(self) -> str:
        """``mariadb``, ``mysql-gtid`` or ``mysql-file`` (test ids, bench labels)."""
        if self.flavor == MARIADB:
            return MARIADB
        return f"{MYSQL}-{'gtid' if self.gtid else 'file'}"

    def connect(
        self, database: str | None = None, connect_timeout: float = 10
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """An autocommit utf8mb4 connection as the root user (tests and the demo)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=connect_timeout,
        )

    # ------------------------------------------------------------ replication (failover tests)
    def replicate_from(self, source: DatabaseServer) -> None:
        """Make this server a replica of ``source``: by GTID, or for a MySQL source without
        GTIDs from the start of its first binlog file."""
        if self.flavor == MYSQL and not source.gtid:
            self._replicate_by_file(source)
            return
        conn = self.connect()
        with conn.cursor() as cursor:
            if self.flavor == MARIADB:
                cursor.execute(
                    "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                    "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos",
                    (source.host, source.port, source.user, source.password),
                )
                cursor.execute("START SLAVE")
            else:
                cursor.execute(
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST=%s, SOURCE_PORT=%s, SOURCE_USER=%s, "
                    "SOURCE_PASSWORD=%s, SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1",
                    (source.host, source.port, source.user, source.password),
                )
                cursor.execute("START REPLICA")
        conn.close()

    def _replicate_by_file(self, source: DatabaseServer) -> None:
        primary = source.connect()
        with primary.cursor() as cursor:
            cursor.execute("SHOW BINARY LOGS")
            first = str(cursor.fetchall()[0][0])
        primary.close()
        conn = self.connect()
        with conn.cursor() as cursor:
            cursor.execute(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST=%s, SOURCE_PORT=%s, SOURCE_USER=%s, "
                "SOURCE_PASSWORD=%s, SOURCE_LOG_FILE=%s, SOURCE_LOG_POS=4, "
                "GET_SOURCE_PUBLIC_KEY=1",
                (source.host, source.port, source.user, source.password, first),
            )
            cursor.execute("START REPLICA")
        conn.close()

    def wait_applied(self, source: DatabaseServer, timeout_s: float = 60) -> None:
        """Wait until this replica has applied everything ``source`` has logged so far."""
        if self.flavor == MYSQL and not source.gtid:
            self._wait_applied_by_file(source, timeout_s)
            return
        primary = source.connect()
        with primary.cursor() as cursor:
            cursor.execute(
                "SELECT @@GLOBAL.gtid_binlog_pos"
                if self.flavor == MARIADB
                else "SELECT @@GLOBAL.gtid_executed"
            )
            (executed,) = cursor.fetchone() or ("",)
        primary.close()
        conn = self.connect()
        with conn.cursor() as cursor:
            wait = "MASTER_GTID_WAIT" if self.flavor == MARIADB else "WAIT_FOR_EXECUTED_GTID_SET"
            cursor.execute(f"SELECT {wait}(%s, %s)", (str(executed), timeout_s))
            (result,) = cursor.fetchone() or (1,)
        conn.close()
        if result != 0:
            raise TimeoutError(f"the replica did not apply {executed} in {timeout_s} s")

    def _wait_applied_by_file(self, source: DatabaseServer, timeout_s: float) -> None:
        primary = source.connect()
        with primary.cursor() as cursor:
            cursor.execute("SHOW BINARY LOGS")
            log_file, size = cursor.fetchall()[-1][:2]
        primary.close()
        conn = self.connect()
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT SOURCE_POS_WAIT(%s, %s, %s)", (str(log_file), int(size), timeout_s)
            )
            (result,) = cursor.fetchone() or (-1,)
        conn.close()
        if result is None or int(result) < 0:
            raise TimeoutError(f"the replica did not reach {log_file}:{size} in {timeout_s} s")

    def promote(self) -> None:
        """Stop replicating and forget the source: this server is the primary now."""
        conn = self.connect()
        with conn.cursor() as cursor:
            if self.flavor == MARIADB:
                cursor.execute("STOP SLAVE")
                cursor.execute("RESET SLAVE ALL")
            else:
                cursor.execute("STOP REPLICA")
                cursor.execute("RESET REPLICA ALL")
        conn.close()


@dataclass
class PrivateServer(ABC):
    """A throw-away server on a free loopback port, in its own directory.

    ``binlog_args`` defaults to a full row binlog; tests pass others (``--binlog-format=STATEMENT``,
    or none with ``log_bin=False``) to provoke the preflight errors. ``extra_args`` go last.
    """

    basedir: Path | None = None
    server_id: int = 1
    log_bin: bool = True
    binlog_args: tuple[str, ...] = ROW_BINLOG_ARGS
    extra_args: tuple[str, ...] = ()
    start_timeout_s: float = 60.0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _owned_dir: tempfile.TemporaryDirectory[str] | None = field(
        default=None, init=False, repr=False
    )
    _server: DatabaseServer | None = field(default=None, init=False, repr=False)

    flavor: ClassVar[str]
    _no_binlog_args: ClassVar[tuple[str, ...]] = ()  # what turns the binary log off
    gtid: bool = True

    @property
    def server(self) -> DatabaseServer:
        if self._server is None:
            raise RuntimeError(f"the private {self.flavor} server is not started")
        return self._server

    def _directory(self) -> Path:
        if self.basedir is None:
            self._owned_dir = tempfile.TemporaryDirectory(prefix=f"cdc-scorer-{self.flavor}-")
            self.basedir = Path(self._owned_dir.name)
        self.basedir.mkdir(parents=True, exist_ok=True)
        return self.basedir

    def start(self) -> DatabaseServer:
        """Install (first time) and start the server; return once it accepts connections.
        A restart after ``stop()`` or ``kill()`` keeps the data and the port."""
        base = self._directory()
        datadir = base / "data"
        # Its own temporary directory: servers installed at the same time (tests in several
        # processes) otherwise share /tmp's "#sql-temptable-…" files, which failed a bootstrap.
        _tmpdir(base).mkdir(exist_ok=True)
        if not (datadir / "mysql").is_dir():
            self._install(datadir)
        last_error = ""
        for _ in range(3):  # the free port may be taken between probe and bind
            port = self._server.port if self._server is not None else free_port()
            server = DatabaseServer(
                host="127.0.0.1",
                port=port,
                user="root",
                password="",
                server_id=self.server_id,
                datadir=datadir,
                socket_path=base / "server.sock",
                flavor=self.flavor,
                gtid=self.gtid,
            )
            self._process = subprocess.Popen(
                self._command(server, base),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                self._wait_ready(server, base)
            except _PortTaken as exc:
                last_error = str(exc)
                self._process.wait(timeout=10)
                continue
            self._server = server
            return server
        raise FatalError(f"private {self.flavor} server could not bind a port: {last_error}")

    def restart(self) -> DatabaseServer:
        """Stop cleanly and start again on the same data and port."""
        self.stop()
        return self.start()

    @abstractmethod
    def _install(self, datadir: Path) -> None:
        """Create the system tables in ``datadir`` (root without a password)."""

    @abstractmethod
    def _server_args(self, server: DatabaseServer, base: Path) -> list[str]:
        """The flavour's own command line, up to its binlog settings."""

    def _command(self, server: DatabaseServer, base: Path) -> list[str]:
        args = [
            *self._server_args(server, base),
            f"--datadir={server.datadir}",
            f"--tmpdir={_tmpdir(base)}",
            f"--port={server.port}",
            "--bind-address=127.0.0.1",
            f"--socket={server.socket_path}",
            f"--pid-file={base / 'server.pid'}",
            f"--log-error={base / 'server.err'}",
            f"--server-id={server.server_id}",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=128M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=300",
        ]
        if self.log_bin:
            args += [f"--log-bin={server.datadir / 'binlog'}", *self.binlog_args]
        else:
            args += self._no_binlog_args
        if os.geteuid() == 0:
            args.append("--user=root")
        return args + list(self.extra_args)

    @property
    def pid(self) -> int | None:
        """The server process, while it runs (benchmarks meter its CPU)."""
        return None if self._process is None else self._process.pid

    @property
    def error_log(self) -> Path:
        return self._directory() / "server.err"

    def _wait_ready(self, server: DatabaseServer, base: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = _tail(base / "server.err")
                if "Address already in use" in log or "Can't start server: Bind" in log:
                    raise _PortTaken(log)
                raise FatalError(f"private {self.flavor} server exited at start-up: {log}")
            try:
                server.connect(connect_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise FatalError(
            f"private {self.flavor} server did not accept connections in {self.start_timeout_s}s"
        )

    def kill(self) -> None:
        """SIGKILL the server (crash tests); the data directory is kept."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM, then SIGKILL after 30 s); keep the data."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._process = None

    def close(self) -> None:
        """Stop and remove the directory if this launcher created it."""
        self.stop()
        if self._owned_dir is not None:
            with contextlib.suppress(OSError):
                self._owned_dir.cleanup()
            self._owned_dir = None

    def __enter__(self) -> DatabaseServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class PrivateMariaDB(PrivateServer):
    """``mariadbd`` from the machine's MariaDB server package."""

    flavor: ClassVar[str] = MARIADB
    # A newer server than the machine's (vector_servers: MariaDB 11.8 with VECTOR), else None.
    distribution: MariadbDistribution | None = None

    def _install(self, datadir: Path) -> None:
        if self.distribution is not None:
            install_db = str(self.distribution.install_db)
            basedir = [f"--basedir={self.distribution.basedir}"]
        else:
            install_db, basedir = _find_binary("mariadb-install-db", "mysql_install_db"), []
        args = [
            install_db,
            "--no-defaults",
            *basedir,
            f"--datadir={datadir}",
            f"--tmpdir={_tmpdir(datadir.parent)}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FatalError(f"mariadb-install-db failed: {result.stderr.strip()[-500:]}")

    def _server_args(self, server: DatabaseServer, base: Path) -> list[str]:
        if self.distribution is not None:
            program = [
                str(self.distribution.mariadbd),
                "--no-defaults",
                f"--basedir={self.distribution.basedir}",
            ]
        else:
            program = [_find_binary("mariadbd", "mysqld"), "--no-defaults"]
        return [
            *program,
            # --no-defaults starts in latin1; 4-byte text would fail with error 1366.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--skip-name-resolve",
        ]


@dataclass
class PrivateMySQL(PrivateServer):
    """MySQL's ``mysqld`` (``mysql_dist``): ``gtid`` sets ``gtid_mode`` ON or OFF.

    Its default character set is already utf8mb4 (collation ``utf8mb4_0900_ai_ci``, kept: the
    decoder must read it); its root user authenticates with ``caching_sha2_password``.
    """

    flavor: ClassVar[str] = MYSQL
    _no_binlog_args: ClassVar[tuple[str, ...]] = ("--disable-log-bin",)  # on by default
    distribution: MysqlDistribution | None = None

    def _mysql(self) -> MysqlDistribution:
        if self.distribution is None:
            self.distribution = ensure_mysql()
        return self.distribution

    def _install(self, datadir: Path) -> None:
        args = self._mysql().mysqld(
            f"--datadir={datadir}", f"--tmpdir={_tmpdir(datadir.parent)}", "--initialize-insecure"
        )
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-4:])
            raise FatalError(f"mysqld --initialize-insecure failed: {tail}")

    def _server_args(self, server: DatabaseServer, base: Path) -> list[str]:
        # No --skip-name-resolve: --initialize makes root@localhost only, which a TCP
        # connection from 127.0.0.1 matches through name resolution.
        gtid = "ON" if self.gtid else "OFF"
        return self._mysql().mysqld(
            "--secure-file-priv=",
            "--mysqlx=OFF",
            f"--gtid-mode={gtid}",
            f"--enforce-gtid-consistency={gtid}",
        )


def _tmpdir(base: Path) -> Path:
    """A private server's temporary directory (beside its data)."""
    return base / "tmp"


def private_server(flavor: str, *, gtid: bool = True, **options: Any) -> PrivateServer:
    """A launcher of ``flavor`` (``mariadb`` or ``mysql``)."""
    if flavor == MARIADB:
        return PrivateMariaDB(**options)
    if flavor == MYSQL:
        return PrivateMySQL(gtid=gtid, **options)
    raise ValueError(f"unknown server flavour {flavor!r}: mariadb or mysql")


class _PortTaken(Exception):
    pass


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no error log)"
