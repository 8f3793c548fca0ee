"""Where a binlog stream can start on this server: the position now, and whether a stored
position can still be read here (one check per kind of position)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pymysql

from cdc_scorer.core.errors import FatalError, PositionLost
from cdc_scorer.core.positions import Position
from cdc_scorer.mysql.connection import Connection, error_code, mysql_errors
from cdc_scorer.sources.binlog.positions import (
    POSITION_KINDS,
    FilePosition,
    MariadbGtidPosition,
    MysqlGtidSetPosition,
)
from cdc_scorer.sources.binlog.server import ServerInfo, binlog_status_sql
from cdc_scorer.sources.log_spec import start_over

START_OVER = start_over("binlog")


def _mariadb_now(conn: Connection, server: ServerInfo) -> Position:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        (state,) = cursor.fetchone() or ("",)
    return MariadbGtidPosition.parse(server.identity, str(state or ""))


def _mysql_gtid_now(conn: Connection, server: ServerInfo) -> Position:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_executed")
        (executed,) = cursor.fetchone() or ("",)
    return MysqlGtidSetPosition.parse(server.identity, str(executed or ""))


def _file_now(conn: Connection, server: ServerInfo) -> Position:
    statement = binlog_status_sql(server)
    with conn.cursor() as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
    if row is None:
        raise FatalError(f"{statement} returned nothing: is the binary log on?")
    return FilePosition(server.identity, str(row[0]), int(row[1]))


_NOW: dict[str, Callable[[Connection, ServerInfo], Position]] = {
    MariadbGtidPosition.kind: _mariadb_now,
    MysqlGtidSetPosition.kind: _mysql_gtid_now,
    FilePosition.kind: _file_now,
}


def current_position(conn: Connection, server: ServerInfo) -> Position:
    """The binlog position now (a transaction boundary), of the kind this run keeps."""
    with mysql_errors("reading the binlog position"):
        return _NOW[server.positions](conn, server)


# ---------------------------------------------------------------- can a checkpoint be resumed?
def _check_mariadb(conn: Connection, server: ServerInfo, position: Position) -> None:
    assert isinstance(position, MariadbGtidPosition)
    if not position.gtids:
        return
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_state")
        (state,) = cursor.fetchone() or ("",)
    server_state = MariadbGtidPosition.parse(server.identity, str(state or ""))
    for gtid in position.gtids:
        if not server_state.includes(gtid):
            raise PositionLost(
                f"checkpoint GTID {gtid} is not in this server's binlog state "
                f"({state or 'empty'}): the binlog was reset, or this server has not "
                f"executed it (another history; a replica needs log_slave_updates=ON) — "
                f"{START_OVER}"
            )
    _check_mariadb_purged(conn, server, position)


def _check_mariadb_purged(conn: Connection, server: ServerInfo, position: Position) -> None:
    """What follows the checkpoint is still in the binlog files. ``gtid_binlog_state`` keeps
    every GTID after a PURGE: what the server can still send starts after the GTID list that
    opens its oldest binlog file (the last GTID of each domain and server before it)."""
    assert isinstance(position, MariadbGtidPosition)
    with conn.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        files = [str(row[0]) for row in cursor.fetchall()]
        if not files:
            return
        cursor.execute("SHOW BINLOG EVENTS IN %s LIMIT 4", (files[0],))
        events = cursor.fetchall()
    listed = next((str(e[5]) for e in events if e[2] == "Gtid_list"), "[]")
    purged = MariadbGtidPosition.parse(server.identity, listed.strip("[] ").replace(" ", ""))
    for gtid in position.gtids:
        gone = [g for g in purged.gtids if g.domain == gtid.domain and g.seq > gtid.seq]
        if gone:
            raise PositionLost(
                f"transactions after checkpoint GTID {gtid} were purged (the oldest binlog "
                f"file, {files[0]}, begins after {', '.join(map(str, gone))}): raise the "
                f"binlog retention, and {START_OVER}"
            )


def _check_mysql_gtid(conn: Connection, server: ServerInfo, position: Position) -> None:
    """MySQL: the checkpoint's GTIDs were executed here and what follows is not purged."""
    checkpoint = position.value()
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT GTID_SUBSET(%s, @@GLOBAL.gtid_executed), "
            "GTID_SUBTRACT(@@GLOBAL.gtid_purged, %s)",
            (checkpoint, checkpoint),
        )
        subset, purged_after = cursor.fetchone() or (0, "")
    if not subset:
        raise PositionLost(
            f"checkpoint GTID set {checkpoint} is not in this server's gtid_executed: the "
            f"binlog was reset, or this server has not executed it (another history) — "
            f"{START_OVER}"
        )
    if purged_after:
        raise PositionLost(
            f"transactions after checkpoint GTID set {checkpoint} were purged ({purged_after}): "
            f"raise the binlog retention, and {START_OVER}"
        )


def _check_file(conn: Connection, server: ServerInfo, position: Position) -> None:
    assert isinstance(position, FilePosition)
    with conn.cursor() as cursor:
        cursor.execute("SHOW BINARY LOGS")
        files = {str(row[0]): int(row[1]) for row in cursor.fetchall()}
    size = files.get(position.log_file)
    if size is None:
        raise PositionLost(
            f"checkpoint binlog file {position.log_file} is no longer on the server (purged; "
            f"it has {', '.join(sorted(files)) or 'none'}): raise the binlog retention, and "
            f"{START_OVER}"
        )
    if position.log_pos > size:
        raise PositionLost(
            f"checkpoint {position.log_file}:{position.log_pos} is past the end of that file "
            f"({size} bytes): the binlog was reset or this is another server — {START_OVER}"
        )
    if position.commit:
        _check_fingerprint(conn, position)


_WRONG_OFFSET = 1220  # SHOW BINLOG EVENTS FROM a place that is no event's start


def _check_fingerprint(conn: Connection, position: FilePosition) -> None:
    """The event ending at the checkpoint is the commit it was taken after: same start, same
    end, same server, same XID. A file of the same name on another server (Aurora starts again
    at mysql-bin-changelog.000001 after a restore or a clone), or a reset binlog, fails this and
    is never read; the same binlog after a failover that kept it passes."""
    start, server_id, xid = [*position.commit.split("/"), "", "", ""][:3]
    row = None
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SHOW BINLOG EVENTS IN %s FROM %s LIMIT 1", (position.log_file, int(start))
            )
            row = cursor.fetchone()
    except pymysql.MySQLError as exc:
        if error_code(exc) != _WRONG_OFFSET:
            raise
    found = (
        "no event"
        if row is None
        else f"a {row[2]} event of server {row[3]} ending at {row[4]} ({row[5]})"
    )
    if (
        row is None
        or int(row[1]) != int(start)
        or str(row[3]) != server_id
        or int(row[4]) != position.log_pos
        or (xid and f"xid={xid} " not in f"{row[5]} ")
    ):
        raise PositionLost(
            f"checkpoint {position.log_file}:{position.log_pos} was taken after the commit "
            f"{position.commit} (start/server/xid), but this server has {found} there: its "
            f"binlog file of that name is another one (another server, a restore or clone, a "
            f"reset binlog) and is not read — point [source] at the server the checkpoint "
            f"belongs to, or {START_OVER}"
        )


_RESUMABLE: dict[str, Callable[[Connection, ServerInfo, Position], None]] = {
    MariadbGtidPosition.kind: _check_mariadb,
    MysqlGtidSetPosition.kind: _check_mysql_gtid,
    FilePosition.kind: _check_file,
}


def check_resumable(conn: Connection, server: ServerInfo, position: Position) -> None:
    """Refuse a checkpoint of another kind, or one this server cannot continue.

    GTIDs follow the data: a GTID checkpoint resumes on any server that executed it and still
    has what follows (the old source, a promoted replica, a blue/green target). A file:pos is
    checked by what is there: the commit event it was taken after (its fingerprint), on
    whichever server; an older checkpoint without one is refused on another server."""
    if position.kind != server.positions:
        raise PositionLost(
            f"checkpoint position {position} is kept by {position.kind}, but "
            f"source.binlog.positions makes this run keep them by {server.positions}: set "
            "source.binlog.positions back, or "
            f"{START_OVER}"
        )
    if (
        position.server_identity != server.identity
        and isinstance(position, FilePosition)
        and not position.commit  # an older checkpoint: no fingerprint to check it by
    ):
        raise PositionLost(
            f"checkpoint belongs to {position.server_identity}, but this server is "
            f"{server.identity}: point [source] at the original server, or {START_OVER}"
        )
    with mysql_errors("checking the checkpoint's position"):
        _RESUMABLE[position.kind](conn, server, position)


# ---------------------------------------------------------------- positions operators name
def position_from(conn: Connection, server: ServerInfo, text: str) -> Position:
    """``gtid:SET`` (this server's GTID kind) or ``file:FILE:POS`` (a commit event must end
    there: its fingerprint is read from the binlog) as a position of this run's kind."""
    kind, _, value = text.partition(":")
    if kind == "gtid":
        kind = server.positions if server.positions != FilePosition.kind else "gtid"
    if kind != server.positions:
        wanted = "--file and --pos" if server.positions == FilePosition.kind else "--gtid"
        raise FatalError(
            f"this server's positions are kept by {server.positions}: name one with {wanted}"
        )
    if kind != FilePosition.kind:
        return POSITION_KINDS[kind].parse(server.identity, value)
    log_file, _, pos = value.rpartition(":")
    with mysql_errors(f"reading the binlog file {log_file}"):
        _check_file(conn, server, FilePosition(server.identity, log_file, int(pos)))
        commit = _commit_ending_at(conn, log_file, int(pos))
    return FilePosition(server.identity, log_file, int(pos), commit)


_PAGE = 1000


def _commit_ending_at(conn: Connection, log_file: str, pos: int) -> str:
    """The fingerprint of the commit event that ends at ``pos`` in ``log_file``."""
    start = 4  # the first event of every binlog file
    with conn.cursor() as cursor:
        while True:
            cursor.execute(f"SHOW BINLOG EVENTS IN %s FROM %s LIMIT {_PAGE}", (log_file, start))
            rows = cursor.fetchall()
            for _log, at, kind, server_id, end, info in rows:
                if int(end) == pos:
                    text = str(info).split("; ")[-1].strip().upper()
                    if kind in ("Xid", "Transaction_payload") or (
                        kind == "Query" and not text.startswith("BEGIN")
                    ):
                        xid = re.search(r"xid=(\d+)", str(info)) if kind == "Xid" else None
                        return f"{at}/{server_id}/{xid.group(1) if xid else ''}"
                    break
                if int(end) > pos:
                    break
            else:
                if len(rows) == _PAGE:
                    start = int(rows[-1][4])
                    continue
            raise FatalError(
                f"{log_file}:{pos} is not where a transaction ends in this server's binlog "
                "(SHOW BINLOG EVENTS lists where each event ends): name the end of a commit"
            )
