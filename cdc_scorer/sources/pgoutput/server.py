"""The PostgreSQL server as the logical-replication source needs it: its identity, its
settings (wal_level, the REPLICATION grant), the publication and the replication slot.

The slot is the scorer's: it holds the WAL the scorer has not confirmed, so a scorer that is
away keeps WAL on the server (``max_slot_wal_keep_size`` caps it: past the cap the server
invalidates the slot, ``wal_status = lost``). The publication names the captured tables and the
scorer's signal and heartbeat tables, whose rows the stream reads back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from cdc_scorer.core.errors import FatalError, PositionLost
from cdc_scorer.core.own_tables import HEARTBEAT_TABLE, SIGNAL_TABLE
from cdc_scorer.postgresql.connection import Connection, pg_errors, quote
from cdc_scorer.sources.log_spec import start_over
from cdc_scorer.sources.pgoutput.positions import LsnPosition
from cdc_scorer.sources.pgoutput.protocol import lsn_text, parse_lsn

START_OVER = start_over("pgoutput")

log = structlog.get_logger("cdc_scorer.source")

WAL_LEVEL_FIX = (
    "set wal_level = logical (Aurora/RDS: rds.logical_replication = 1 in the DB cluster "
    "parameter group, then reboot the writer)"
)
GRANT_FIX = "grant it: ALTER ROLE {user} REPLICATION (Aurora/RDS: GRANT rds_replication TO {user})"


@dataclass(frozen=True)
class ServerInfo:
    identity: str  # postgresql:<system identifier>: one WAL history
    version: str
    wal_level: str
    can_replicate: bool


@dataclass(frozen=True)
class SlotState:
    """What the server says of the scorer's slot."""

    name: str
    plugin: str
    database: str
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost
    retained_bytes: int | None  # WAL the slot keeps on the server now
    active_pid: int | None


def server_info(conn: Connection) -> ServerInfo:
    with pg_errors("reading the server's settings"), conn.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('wal_level')")
        version, wal_level = cursor.fetchone() or ("", "")
        cursor.execute("SELECT system_identifier FROM pg_control_system()")
        (system,) = cursor.fetchone() or ("",)
        cursor.execute(
            "SELECT r.rolsuper OR r.rolreplication OR COALESCE((SELECT pg_has_role("
            "current_user, oid, 'member') FROM pg_roles WHERE rolname = 'rds_replication'), "
            "false) FROM pg_roles r WHERE r.rolname = current_user"
        )
        (can_replicate,) = cursor.fetchone() or (False,)
    return ServerInfo(
        f"postgresql:{system}", str(version).split(" on ")[0], str(wal_level), bool(can_replicate)
    )


def settings(info: ServerInfo, user: str) -> list[tuple[str, str | None]]:
    """Each setting the stream needs, with its problem and fix (None: fine)."""
    return [
        (
            "wal_level",
            None
            if info.wal_level == "logical"
            else f"wal_level is {info.wal_level}: {WAL_LEVEL_FIX}",
        ),
        (
            "REPLICATION",
            None
            if info.can_replicate
            else f"user {user} may not stream changes: {GRANT_FIX.format(user=user)}",
        ),
    ]


def preflight(conn: Connection, user: str) -> ServerInfo:
    info = server_info(conn)
    problems = [problem for _name, problem in settings(info, user) if problem]
    if problems:
        raise FatalError("; ".join(problems))
    return info


def current_lsn(conn: Connection) -> int:
    with pg_errors("reading the server's WAL position"), conn.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
        (lsn,) = cursor.fetchone() or ("0/0",)
    return parse_lsn(str(lsn))


def slot_state(conn: Connection, slot: str) -> SlotState | None:
    with pg_errors(f"reading replication slot {slot}"), conn.cursor() as cursor:
        cursor.execute(
            "SELECT slot_name, plugin, database, confirmed_flush_lsn::text, restart_lsn::text, "
            "wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
            "active_pid FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    name, plugin, database, flushed, restart, status, retained, pid = row
    return SlotState(
        str(name),
        str(plugin or ""),
        str(database or ""),
        None if flushed is None else parse_lsn(str(flushed)),
        None if restart is None else parse_lsn(str(restart)),
        None if status is None else str(status),
        None if retained is None else int(retained),
        None if pid is None else int(pid),
    )


def slot_problem(
    state: SlotState | None, slot: str, database: str, resuming: bool = False
) -> str | None:
    """Why the slot cannot stream (None: it can); ``resuming``: pipelines have checkpoints
    taken through it (a missing slot was dropped, and what it held is gone)."""
    if state is None and resuming:
        return (
            f"replication slot {slot} does not exist, but the pipelines' checkpoints were "
            "taken through it: it was dropped, and the changes since are gone — set "
            'source.pgoutput.on_lost_position = "rescore" (run makes the slot anew and re-scores '
            "every row beside the stream), or run `cdc-scorer init --config FILE` and then "
            "`cdc-scorer reposition --config FILE --pipeline NAME --now --rescore`"
        )
    if state is None:
        return (
            f"replication slot {slot} does not exist — run `cdc-scorer init --config FILE` "
            "(it creates the publication and the slot)"
        )
    if state.plugin != "pgoutput" or state.database != database:
        return (
            f"replication slot {slot} is a {state.plugin or 'physical'} slot of database "
            f"{state.database or '-'}, not pgoutput of {database} — name another slot in "
            "[source] slot_name"
        )
    if state.wal_status == "lost":
        return (
            f"replication slot {slot} was invalidated by the server (it kept more WAL than "
            "max_slot_wal_keep_size allows, wal_status = lost): the changes since the last "
            f"checkpoint are gone from the server's WAL — drop it (SELECT "
            f"pg_drop_replication_slot('{slot}')) and restart with "
            'source.pgoutput.on_lost_position = "rescore" to re-score every row beside the stream'
        )
    return None


def ensure_slot(conn: Connection, slot: str, database: str, replace_lost: bool = False) -> bool:
    """The slot exists (created here if missing; if invalidated, made anew when
    ``replace_lost``, else left for the start to refuse): True if it was made now."""
    state = slot_state(conn, slot)
    if state is not None and state.wal_status == "lost" and replace_lost:
        log.warning("replication slot invalidated by the server: making it anew", slot=slot)
        with pg_errors(f"dropping invalidated slot {slot}"), conn.cursor() as cursor:
            cursor.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        state = None
    if state is not None:
        problem = slot_problem(state, slot, database)
        if problem and state.wal_status != "lost":
            raise FatalError(problem)
        return False
    with pg_errors(f"creating replication slot {slot}"), conn.cursor() as cursor:
        cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    log.info("replication slot created", slot=slot)
    return True


def advance_slot(conn: Connection, slot: str, lsn: int, wait_s: float = 3.0) -> bool:
    """Move the slot's confirmed flush to ``lsn`` (never back); False if it stayed in use by a
    walsender for ``wait_s`` (the next start confirms it then)."""
    deadline = time.monotonic() + wait_s
    while True:
        state = slot_state(conn, slot)
        if state is None or (state.confirmed_flush_lsn or 0) >= lsn:
            return True
        if state.active_pid is None:
            with pg_errors(f"advancing replication slot {slot}"), conn.cursor() as cursor:
                cursor.execute("SELECT pg_replication_slot_advance(%s, %s)", (slot, lsn_text(lsn)))
            log.info("replication slot advanced at the stop", slot=slot, lsn=lsn_text(lsn))
            return True
        if time.monotonic() > deadline:
            log.info("replication slot still in use at the stop: confirmed at the next start")
            return False
        time.sleep(0.05)  # the walsender of the connection just closed exits in a moment


def check_resumable(
    conn: Connection, info: ServerInfo, slot: str, database: str, position: LsnPosition
) -> None:
    """``PositionLost`` unless the slot still has every change after ``position``."""
    if position.server_identity not in ("", info.identity):
        raise PositionLost(
            f"checkpoint {position} belongs to {position.server_identity}, but this server is "
            f"{info.identity} (another WAL history: a restore, a new cluster) — {START_OVER}"
        )
    state = slot_state(conn, slot)
    problem = slot_problem(state, slot, database, resuming=True)
    if problem is not None:
        raise PositionLost(problem)
    assert state is not None
    flushed = state.confirmed_flush_lsn
    if flushed is not None and flushed > position.lsn:
        raise PositionLost(
            f"replication slot {slot} has confirmed {lsn_text(flushed)}, past checkpoint "
            f"{position}: the changes between are gone from it (was the slot dropped and made "
            "again, or used by another consumer?) — set "
            'source.pgoutput.on_lost_position = "rescore" to re-score every row beside the '
            "stream"
        )


def published_tables(conn: Connection, publication: str) -> set[tuple[str, str]] | None:
    """The (schema, table) pairs of the publication; None if it does not exist."""
    with pg_errors(f"reading publication {publication}"), conn.cursor() as cursor:
        cursor.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        )
        return {(str(s), str(t)) for s, t in cursor.fetchall()}


def own_publication(publication: str) -> str:
    """The publication of the scorer's own signal and heartbeat tables: the scorer owns them
    (and it), while only the source tables' owner may publish those."""
    return f"{publication}_own"


def publication_names(publication: str) -> str:
    """What the stream subscribes to: the source tables' publication and the scorer's own."""
    return f"{publication},{own_publication(publication)}"


def _wanted(publication: str, tables: Sequence[str]) -> list[tuple[str, list[str]]]:
    return [
        (publication, [*dict.fromkeys(tables)]),
        (own_publication(publication), [SIGNAL_TABLE, HEARTBEAT_TABLE]),
    ]


def publication_problem(
    conn: Connection, publication: str, schema: str, tables: Sequence[str]
) -> str | None:
    problems = []
    fix = "run `cdc-scorer init --config FILE` (it creates and extends the publications)"
    for name, wanted in _wanted(publication, tables):
        published = published_tables(conn, name)
        if published is None:
            problems.append(f"publication {name} does not exist — {fix}")
            continue
        missing = [t for t in wanted if (schema, t) not in published]
        if missing:
            problems.append(f"publication {name} lacks {', '.join(missing)} — {fix}")
    return "; ".join(problems) or None


def ensure_publications(
    conn: Connection, publication: str, schema: str, tables: Sequence[str], user: str
) -> list[str]:
    """Each publication holds its tables (created or extended; tables of other deployments in
    them are kept): the statements run. Only a table's owner may publish it: a scorer that
    does not own the source tables is told the statement their owner runs."""
    statements = []
    for name, wanted in _wanted(publication, tables):
        published = published_tables(conn, name)
        new = [t for t in wanted if (schema, t) not in (published or set())]
        if not new:
            continue
        names = ", ".join(f"{quote(schema)}.{quote(t)}" for t in new)
        statement = (
            f"CREATE PUBLICATION {quote(name)} FOR TABLE {names}"
            if published is None
            else f"ALTER PUBLICATION {quote(name)} ADD TABLE {names}"
        )
        try:
            with pg_errors(f"publishing {', '.join(new)}"), conn.cursor() as cursor:
                cursor.execute(statement)
        except FatalError as exc:
            if "42501" not in str(exc):
                raise
            raise FatalError(
                f"publication {name} lacks {', '.join(new)} and user {user} may not publish "
                f"them (only a table's owner may): have the owner run {statement}"
            ) from exc
        statements.append(statement)
    return statements


# Why a table's UPDATEs and DELETEs would carry no key, by pg_class.relreplident. Publishing
# such a table makes the server refuse the application's own UPDATEs and DELETEs on it
# (55000 "cannot update table … because it does not have a replica identity and publishes
# updates"): it is refused before any publication is made or extended.
_NO_IDENTITY = {
    "d": "it has no primary key and REPLICA IDENTITY DEFAULT",
    "n": "it has REPLICA IDENTITY NOTHING",
    "i": "its REPLICA IDENTITY USING INDEX names an index that is gone",
}
_HARM = (
    ": published, the application's own UPDATEs and DELETEs on it would fail (its changes "
    "could not name their row), so it is not published"
)
_NO_IDENTITY = {kind: text + _HARM for kind, text in _NO_IDENTITY.items()}


def replica_identity_problems(
    conn: Connection,
    schema: str,
    key_columns: dict[str, tuple[str, ...]],
    inputs: dict[str, tuple[str, ...]],
) -> tuple[list[str], list[str]]:
    """(fatal, warnings) of each captured table's REPLICA IDENTITY: an UPDATE or DELETE must
    carry the scorer's key; a model input stored out of line (TOAST) that an UPDATE leaves
    alone arrives without its value unless the identity is FULL."""
    fatal: list[str] = []
    warnings: list[str] = []
    with pg_errors("reading the tables' replica identity"), conn.cursor() as cursor:
        for table, key in key_columns.items():
            cursor.execute(
                "SELECT c.relreplident, c.oid FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (schema, table),
            )
            row = cursor.fetchone()
            if row is None:
                continue
            identity, oid = str(row[0]), int(row[1])
            full = f"ALTER TABLE {quote(schema)}.{quote(table)} REPLICA IDENTITY FULL"
            if identity == "f":
                continue
            cursor.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND "
                + ("i.indisreplident" if identity == "i" else "i.indisprimary"),
                (oid,),
            )
            identity_columns = {str(r[0]) for r in cursor.fetchall()}
            if identity == "n" or not identity_columns:
                fatal.append(f"table {table}: {_NO_IDENTITY[identity]} — {full}")
                continue
            missing = [c for c in key if c not in identity_columns]
            if missing:
                fatal.append(
                    f"table {table}: key column {', '.join(missing)} is not in its replica "
                    f"identity, so a DELETE would not say which row went — {full}"
                )
                continue
            cursor.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT "
                "attisdropped AND attstorage <> 'p' AND attname = ANY(%s)",
                (oid, list(inputs.get(table, ()))),
            )
            toastable = sorted(str(r[0]) for r in cursor.fetchall())
            if toastable:
                warnings.append(
                    f"table {table}: model input {', '.join(toastable)} can be stored out of "
                    "line (TOAST), and an UPDATE that leaves a long value alone does not carry "
                    f"it under REPLICA IDENTITY DEFAULT (such rows become dead letters) — {full}"
                )
    return fatal, warnings
