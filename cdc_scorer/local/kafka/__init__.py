"""A private Kafka stack for the tests of the Kafka source: a real Apache Kafka
broker (KRaft, one node that is broker and controller) and a real Kafka Connect worker
(distributed mode) running Debezium's MySQL and PostgreSQL connectors, on free loopback ports.

The jars come from Maven Central: ``pom.xml`` beside this file names Kafka, Connect and the two
connectors, and ``mvn dependency:copy-dependencies`` copies them (and what they need) into
``.cache/kafka/lib`` once (~70 MB); the programs run on the machine's Java (17+) with that
folder as their class path. ``python -m cdc_scorer.local.kafka`` fetches them (``make test``
does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cdc_scorer.core.errors import FatalError
from cdc_scorer.local.servers import free_port
from cdc_scorer.local.sid_dist import cache_dir

POM = Path(__file__).with_name("pom.xml")
_MARKER = ".complete"
_LOG4J = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:cdc.log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.server.name = kafka
logger.server.level = WARN
"""


class KafkaUnavailable(Exception):
    """Java or the Kafka jars cannot be had here; the message says why and what to do."""


def java() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on the path (17 or newer: Kafka 4 needs it)."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise KafkaUnavailable("java not found: install a Java 17+ runtime (or set JAVA_HOME)")
    return found


def ensure_kafka_jars(cache: Path | None = None) -> Path:
    """The folder of every jar of the stack, fetched with Maven first when it is not there."""
    cache = cache or cache_dir("kafka", "CDC_SCORER_KAFKA_DIR")
    lib = cache / "lib"
    if (lib / _MARKER).is_file() and (lib / _MARKER).read_text() == POM.read_text():
        return lib
    java()
    maven = shutil.which("mvn")
    if maven is None:
        raise KafkaUnavailable("mvn not found: the Kafka and Debezium jars are fetched with Maven")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    try:
        result = subprocess.run(
            [
                maven,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={work / 'lib'}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if result.returncode != 0:
            tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-4:])
            raise KafkaUnavailable(f"mvn dependency:copy-dependencies failed: {tail}")
        (work / "lib" / _MARKER).write_text(POM.read_text())  # refetched when the pom changes
        if lib.exists():
            shutil.rmtree(lib)
        (work / "lib").rename(lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class _Java:
    """One Java program of the stack, its output in a log file of its own."""

    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.with_suffix(".out").open("ab")
        self.process = subprocess.Popen(self.args, stdout=out, stderr=out, start_new_session=True)
        out.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self) -> str:
        """The end of what the program wrote, for an error message."""
        lines: list[str] = []
        for path in (self.log.with_suffix(".out"), self.log):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if " ERROR " in line or "Exception" in line]
        return " | ".join((errors or lines)[-4:])[-1500:]

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@dataclass(frozen=True)
class BrokerTls:
    """TLS listeners beside the PLAINTEXT one: ``SSL`` and ``SASL_SSL`` with SCRAM-SHA-512
    (``scram_users``: name → password, made at format time). ``keystore`` is a PEM file with
    the broker's PKCS#8 key and its certificate chain; ``ca_file`` the CA clients verify it
    with."""

    keystore: Path
    ca_file: Path
    scram_users: Mapping[str, str]


@dataclass
class KafkaStack:
    """``with KafkaStack() as stack:`` — a broker and a Connect worker, started on enter,
    stopped and removed on exit. ``partitions``: the topics' default partition count;
    ``tls``: TLS listeners too (Debezium and the Connect worker stay on PLAINTEXT)."""

    partitions: int = 3
    # 0 for tests (a group of one starts at once); Kafka's default 3000 lets N processes that
    # start together share the first assignment (the group benchmark).
    initial_rebalance_delay_ms: int = 0
    start_timeout_s: float = 120.0
    heap: str = "512m"
    base: Path | None = None
    tls: BrokerTls | None = None
    broker_port: int = 0
    connect_port: int = 0
    ssl_port: int = 0
    sasl_ssl_port: int = 0
    _owned: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _broker: _Java | None = field(default=None, repr=False)
    _connect: _Java | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The SSL listener (with ``tls``)."""
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The SASL_SSL listener, SCRAM-SHA-512 (with ``tls``)."""
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.connect_port}"

    def start(self) -> KafkaStack:
        lib = ensure_kafka_jars()
        if self.base is None:
            self._owned = tempfile.TemporaryDirectory(prefix="cdc-scorer-kafka-")
            self.base = Path(self._owned.name)
        (self.base / "log4j2.properties").write_text(_LOG4J)
        self.broker_port = free_port()
        controller = free_port()
        props = self.base / "server.properties"
        if self.tls is not None:
            self.ssl_port, self.sasl_ssl_port = free_port(), free_port()
        text, scram = _broker_properties(self, controller)
        props.write_text(text)
        self._run_tool(
            lib,
            "format",
            # "=": an id may begin with "-", which the tool's parser would take for an option.
            [
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={_cluster_id()}",
                "-c",
                str(props),
                *scram,
            ],
        )
        self._broker = self._program(lib, "broker", ["kafka.Kafka", str(props)])
        self._broker.start()
        self._wait(self._broker, self._broker_ready, "the Kafka broker")
        self.connect_port = free_port()
        worker = self.base / "connect.properties"
        worker.write_text(_worker_properties(self.bootstrap_servers, self.connect_port))
        self._connect = self._program(
            lib, "connect", ["org.apache.kafka.connect.cli.ConnectDistributed", str(worker)]
        )
        self.start_connect()
        return self

    def start_connect(self) -> None:
        """Start the Connect worker (again, after :meth:`stop_connect`: the same port, its
        connectors and offsets are in the broker's topics)."""
        assert self._connect is not None
        self._connect.start()
        self._wait(self._connect, self._connect_ready, "the Kafka Connect worker")

    def stop_connect(self, kill: bool = False) -> None:
        if self._connect is not None:
            self._connect.stop(kill)

    def _program(self, lib: Path, name: str, main: list[str]) -> _Java:
        assert self.base is not None
        log = self.base / f"{name}.log"
        return _Java(
            name,
            [
                java(),
                f"-Xmx{self.heap}",
                "-XX:+UseSerialGC",
                f"-Dlog4j2.configurationFile={self.base / 'log4j2.properties'}",
                f"-Dcdc.log.file={log}",
                "-cp",
                f"{lib}/*",
                *main,
            ],
            log,
        )

    def _run_tool(self, lib: Path, name: str, main: list[str]) -> None:
        program = self._program(lib, name, main)
        result = subprocess.run(program.args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
            raise FatalError(f"kafka {name} failed: {tail}")

    def _wait(self, program: _Java, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():
            if not program.running():
                raise FatalError(f"{what} exited: {program.failure()}")
            if time.monotonic() > deadline:
                raise FatalError(f"{what} did not start in {self.start_timeout_s:.0f} s")
            time.sleep(0.25)

    def _broker_ready(self) -> bool:
        # The port first: a client of librdkafka made before the broker listens retries on
        # its own (and logs) for as long as it lives.
        try:
            socket.create_connection(("127.0.0.1", self.broker_port), timeout=1).close()
        except OSError:
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=5).brokers)
        except Exception:  # KafkaException: not answering metadata yet
            return False
        finally:
            del admin

    def _connect_ready(self) -> bool:
        try:
            plugins = self.rest("GET", "/connector-plugins")
        except (OSError, FatalError):
            return False
        return any("debezium" in str(p.get("class", "")) for p in plugins)

    # -------------------------------------------------------------------- Connect's REST API
    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """One call of the worker's REST API; its JSON answer (None for an empty one)."""
        request = urllib.request.Request(
            self.connect_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                text = answer.read()
        except urllib.error.HTTPError as exc:
            raise FatalError(
                f"Kafka Connect {method} {path}: HTTP {exc.code} {exc.read()[:500]!r}"
            ) from None
        return json.loads(text) if text else None

    def put_connector(self, name: str, config: dict[str, str]) -> None:
        """Create or reconfigure connector ``name`` and wait until its task runs."""
        self.rest("PUT", f"/connectors/{name}/config", config)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            with contextlib.suppress(FatalError):
                status = self.rest("GET", f"/connectors/{name}/status")
                tasks = status.get("tasks", [])
                if tasks and all(t["state"] == "RUNNING" for t in tasks):
                    return
                failed = [t for t in tasks if t["state"] == "FAILED"]
                if failed:
                    trace = str(failed[0].get("trace", "")).splitlines()[:3]
                    raise FatalError(f"connector {name} failed: {' | '.join(trace)}")
            if time.monotonic() > deadline:
                raise FatalError(f"connector {name} did not start its task")
            time.sleep(0.25)

    def delete_connector(self, name: str) -> None:
        self.rest("DELETE", f"/connectors/{name}")

    def pids(self) -> dict[str, int]:
        """The running programs' process ids (``broker``, ``connect``), for a CPU meter."""
        return {
            program.name: program.process.pid
            for program in (self._broker, self._connect)
            if program is not None and program.process is not None
        }

    # ------------------------------------------------------------------------------ lifetime
    def stop(self) -> None:
        for program in (self._connect, self._broker):
            if program is not None:
                program.stop()
        if self._owned is not None:
            with contextlib.suppress(OSError):
                self._owned.cleanup()
            self._owned = None

    def __enter__(self) -> KafkaStack:
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


def _broker_properties(stack: KafkaStack, controller: int) -> tuple[str, list[str]]:
    """The KRaft broker's server.properties, and the storage tool's SCRAM arguments."""
    assert stack.base is not None
    listeners = [f"PLAINTEXT://127.0.0.1:{stack.broker_port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    secure: list[str] = []
    scram: list[str] = []
    if stack.tls is not None:
        listeners += [
            f"SSL://127.0.0.1:{stack.ssl_port}",
            f"SASL_SSL://127.0.0.1:{stack.sasl_ssl_port}",
        ]
        protocols += ["SSL:SSL", "SASL_SSL:SASL_SSL"]
        secure = [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={stack.tls.keystore}",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ]
        for name, password in stack.tls.scram_users.items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners={','.join(listeners)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={','.join(protocols)}",
        f"log.dirs={stack.base / 'data'}",
        f"num.partitions={stack.partitions}",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=5",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        f"group.initial.rebalance.delay.ms={stack.initial_rebalance_delay_ms}",
        *secure,
        "",
    ]
    return "\n".join(lines), scram


def _worker_properties(bootstrap_servers: str, port: int) -> str:
    """The Connect worker's properties (distributed mode, its topics on the one broker)."""
    return "\n".join(
        [
            f"bootstrap.servers={bootstrap_servers}",
            "group.id=cdc-scorer-connect",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            "offset.storage.topic=connect-offsets",
            "offset.storage.replication.factor=1",
            "offset.storage.partitions=1",
            "config.storage.topic=connect-configs",
            "config.storage.replication.factor=1",
            "status.storage.topic=connect-status",
            "status.storage.replication.factor=1",
            "status.storage.partitions=1",
            "offset.flush.interval.ms=1000",
            f"listeners=http://127.0.0.1:{port}",
            "plugin.discovery=service_load",
            # A restarted worker gets its connectors back at once, not after the default 5
            # minutes kept for a worker that may come back.
            "scheduled.rebalance.max.delay.ms=0",
            "session.timeout.ms=6000",
            "heartbeat.interval.ms=2000",
            "rebalance.timeout.ms=20000",
            "",
        ]
    )
