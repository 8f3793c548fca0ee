"""The Kafka mode as a ``Source`` for the commands: what ``init`` makes (the offsets tables, no
publication or slot: Debezium reads the log), what ``check`` checks (the brokers with the
configured security, each pipeline's topic and its partitions, its consumer group, the signal
table, the offsets table's write grant — no binlog grant, GTID line or slot), and its
positions (each partition's next offset); and its feeds, one per pipeline (``feed.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.feeds import PipelineReport, Rescores, Target
from cdc_scorer.core.observer import Observer
from cdc_scorer.core.positions import Position
from cdc_scorer.core.records import TableInfo
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.sources import (
    Capture,
    ChangeStream,
    Feed,
    SourceInfo,
    StreamHooks,
    TableCheck,
)
from cdc_scorer.sources.debezium.admin import (
    TIMEOUT_S,
    KafkaRescores,
    admin_client,
    group_members,
    group_of,
    kafka_reposition,
    kafka_status,
)
from cdc_scorer.sources.debezium.positions import decode_offsets
from cdc_scorer.sources.debezium.signals import data_collection
from cdc_scorer.sources.debezium.spec import DebeziumSpec, debezium_spec
from cdc_scorer.stores import DaemonStore, Store
from cdc_scorer.stores.offsets import OFFSETS_TABLE, OffsetStore

_NO_POSITION = (
    "in Kafka mode a pipeline's position is its consumer group's offsets: reposition with "
    "--to-earliest, --to-latest, --to-datetime or --to-offset N --partition P"
)


def topic_of(kafka: DebeziumSpec, engine: str, database: str, schema: str, table: str) -> str:
    """Debezium's topic of a table: ``<prefix>.<database>.<table>`` (MySQL) or
    ``<prefix>.<schema>.<table>`` (PostgreSQL)."""
    return f"{kafka.topic_prefix}.{data_collection(engine, database, schema, table)}"


class DebeziumSource:
    """Debezium's topics on Kafka, each pipeline's table read by a consumer group of its own
    (``<group_id>.<pipeline>``)."""

    probe_name = "brokers"

    def __init__(self, spec: ScorerSpec, store: OffsetStore) -> None:
        self._spec = spec
        self._store = store  # the database's: the offsets tables, the signal table
        self._kafka = debezium_spec(spec.source)
        self._refusals: list[str] = []

    # ---------------------------------------------------------------- the commands
    def refusals(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        return []  # the scorer changes nothing on the source server in this mode

    def prepare(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[str]:
        """The offsets tables (Debezium reads the log: a publication or a slot of the
        scorer's would hold the WAL for nobody)."""
        if self._store.offsets_ready():  # made already (a user without CREATE runs then)
            return []
        self._store.init_offsets()
        return [f"the Kafka offsets tables ({OFFSETS_TABLE})"]

    def preflight(self) -> SourceInfo:
        return SourceInfo(self.identity, f"Kafka {self._kafka.bootstrap_servers}")

    @property
    def identity(self) -> str:
        return f"kafka:{self._kafka.group_id}"

    def settings(self, resuming: bool = False) -> list[tuple[str, str | None]]:
        """The brokers answer with the configured security; the offsets table takes writes;
        the signal table, when configured, can be read and written."""
        found: list[tuple[str, str | None]] = []
        servers = self._kafka.bootstrap_servers
        try:
            self._topics()
        except FatalError as exc:
            found.append((f"brokers {servers}", str(exc)))
        else:
            found.append((f"brokers {servers}", None))
        tables: list[tuple[str, str | None]] = [(OFFSETS_TABLE, None)]
        if self._kafka.signal_table is not None:
            tables.append((self._kafka.signal_table, self._kafka.signal_table))
        for name, table in tables:
            problem = self._store.write_problem(table)
            if problem is not None:
                fix = (
                    "run `cdc-scorer init --config FILE`"
                    if table is None
                    else "the table of the connector's signal.data.collection"
                )
                problem = f"{problem} — {fix}"
            found.append((f"grant: write {name}", problem))
        return found

    def notes(self) -> list[tuple[str, str]]:
        return [
            (
                "positions",
                f"each partition's next offset, in {OFFSETS_TABLE} beside the predictions (the "
                "database is the truth a member starts from; the groups are told the same "
                "offsets for Kafka's lag tools)",
            )
        ]

    def state_notes(self) -> list[tuple[str, str]]:
        return []  # `status` shows the partitions' offsets with each pipeline

    def probe(self) -> str:
        topics = self._topics()
        return f"{len(topics)} topics listed"

    def table_checks(
        self, pipelines: Sequence[PipelineSpec], tables: Mapping[str, TableInfo]
    ) -> list[TableCheck]:
        """Each pipeline's topic and its partitions, and its consumer group's state."""
        try:
            topics = self._topics()
        except FatalError:
            return []  # the brokers' line says why
        checks = []
        for pipeline in pipelines:
            topic = self.topic(pipeline)
            partitions = topics.get(topic)
            if partitions is None:
                problem: str | None = (
                    f"topic {topic} does not exist — Debezium makes it with the table's first "
                    "change: is the connector running, with topic.prefix "
                    f"{self._kafka.topic_prefix} and {pipeline.table} in its table list?"
                )
                # Not fatal: a member waits in the group until Debezium makes the topic.
                checks.append(TableCheck(f"topic of pipeline {pipeline.name}", problem, False))
                continue
            name = f"topic {topic} (pipeline {pipeline.name}, {partitions} partitions)"
            checks.append(TableCheck(name, None, False))
            checks.append(TableCheck(self._group_line(pipeline), None, False))
        return checks

    # ---------------------------------------------------------------- positions
    def current_position(self) -> Position:
        raise FatalError(_NO_POSITION)

    def check_resumable(self, position: Position) -> None:
        """The group's offsets are checked by the members as they start (a missing one
        stops with the fix)."""

    def decode_position(self, server_identity: str, text: str) -> Position:
        return decode_offsets(server_identity, text)

    def position_from(self, text: str) -> Position:
        raise FatalError(_NO_POSITION)

    def release(self, position: Position) -> None:
        """Nothing is held for the scorer on the source server."""

    def open(self, start: Position, capture: Capture, hooks: StreamHooks) -> ChangeStream:
        raise FatalError("the Kafka mode's streams are opened by its feeds")

    def feeds(
        self,
        pipelines: Sequence[PipelineSpec],
        tables: Mapping[str, TableInfo],
        store: DaemonStore,
        telemetry: Observer,
    ) -> list[Feed]:
        """A feed per pipeline: a member of the pipeline's consumer group on its topic."""
        from cdc_scorer.sources.debezium.feed import DebeziumFeed

        del store  # the source's own (the same the app holds): it keeps the offsets too
        return [
            DebeziumFeed(self._spec, p, self.topic(p), tables[p.table], self._store, telemetry)
            for p in pipelines
        ]

    # ---------------------------------------------------------------- the admin commands
    def status(
        self, pipelines: Sequence[PipelineSpec], store: Store
    ) -> tuple[list[PipelineReport], list[tuple[str, str]]]:
        del store  # the source's own (the same): it keeps the offsets too
        return kafka_status(self._spec, self._kafka, self._store, pipelines), []

    def reposition(self, pipeline: PipelineSpec, store: Store, target: Target) -> list[str]:
        del store
        topic = self.topic(pipeline)
        return kafka_reposition(self._spec, self._kafka, self._store, pipeline, topic, target)

    def rescores(self, store: Store) -> Rescores:
        del store
        return KafkaRescores(self._spec, self._store)

    # ---------------------------------------------------------------- helpers
    def topic(self, pipeline: PipelineSpec) -> str:
        source = self._spec.source
        return topic_of(self._kafka, source.engine, source.database, source.schema, pipeline.table)

    def _admin(self) -> AdminClient:
        return admin_client(self._kafka, self._refusals)

    def _topics(self) -> dict[str, int]:
        """Every topic the brokers list, with its partition count (blocking)."""
        admin = self._admin()
        try:
            metadata = admin.list_topics(timeout=TIMEOUT_S)
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback: a refused login says so
            if self._refusals:
                raise FatalError(self._refusals[0]) from None
            error = exc.args[0] if exc.args else exc
            text = error.str() if isinstance(error, KafkaError) else str(error)
            raise FatalError(
                f"the brokers did not answer in {TIMEOUT_S:.0f}s ({text}) — check "
                "source.debezium.bootstrap_servers and source.debezium.security (and that this "
                "host may reach them)"
            ) from None
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()}

    def _group_line(self, pipeline: PipelineSpec) -> str:
        group = group_of(self._kafka, pipeline)
        try:
            members, state = group_members(self._admin(), group)
        except (KafkaException, TimeoutError) as exc:
            return f"consumer group {group}: not described ({exc})"
        running = f"{members} member{'s' if members != 1 else ''}" if members else "no member"
        return f"consumer group {group}: {running} ({state})"
