"""What the scorer reads of the server: its flavour, identity, binlog settings."""

from __future__ import annotations

from dataclasses import dataclass

from cdc_scorer.core.errors import FatalError
from cdc_scorer.mysql.connection import Connection, mysql_errors, version_tuple
from cdc_scorer.sources.binlog.positions import (
    FilePosition,
    MariadbGtidPosition,
    MysqlGtidSetPosition,
)


@dataclass(frozen=True)
class ServerInfo:
    flavor: str  # mariadb | mysql
    version: str
    identity: str
    gtid_mode: bool
    # How positions are kept: "gtid" (MariaDB GTIDs), "mysqlgtid" (MySQL GTID sets, with
    # gtid_mode=ON) or "file" (file:pos: MySQL without GTIDs, or source.binlog.positions = "file").
    positions: str = "gtid"  # a Position kind (positions.POSITION_KINDS)
    # MySQL's binlog_row_value_options: "PARTIAL_JSON" logs JSON updates as diffs.
    row_value_options: str = ""


def binlog_status_sql(server: ServerInfo) -> str:
    """The statement that shows the binlog file and position now: ``SHOW MASTER STATUS`` is
    gone in MySQL 8.4 (``SHOW BINARY LOG STATUS`` exists since 8.2); MariaDB keeps it."""
    if server.flavor == "mysql" and version_tuple(server.version) >= (8, 2):
        return "SHOW BINARY LOG STATUS"
    return "SHOW MASTER STATUS"


def _variables(conn: Connection, names: tuple[str, ...]) -> dict[str, str]:
    with conn.cursor() as cursor:
        cursor.execute(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")",
            names,
        )
        return {str(k).lower(): str(v) for k, v in cursor.fetchall()}


_BINLOG_VARIABLES = (
    "version",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "server_id",
    "server_uuid",
    "gtid_mode",
    "binlog_row_value_options",
)


def server_info(
    conn: Connection, positions: str = "auto"
) -> tuple[ServerInfo, list[tuple[str, str | None]]]:
    """The server's facts and each binlog setting: (setting, problem with its fix or None).

    ``positions`` is ``source.binlog.positions``: "auto" keeps GTIDs on MariaDB, GTID sets on MySQL
    with gtid_mode=ON and file:pos on MySQL without; "file" keeps file:pos on both.
    """
    with mysql_errors("reading server variables"):
        values = _variables(conn, _BINLOG_VARIABLES)
    version = values.get("version", "")
    flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
    where = (
        "in the DB cluster parameter group (Aurora) or my.cnf, then restart"
        if flavor == "mysql"
        else "in the server options (my.cnf), then restart"
    )
    settings: list[tuple[str, str | None]] = []
    log_bin = values.get("log_bin", "OFF").upper()
    settings.append(
        (
            "log_bin",
            None if log_bin == "ON" else f"binary log is off (log_bin=OFF): enable it {where}",
        )
    )
    checks = [("binlog_format", "ROW"), ("binlog_row_image", "FULL")]
    # Column names in rows events need full metadata (MySQL 8.0.14+, MariaDB 10.5+).
    if "binlog_row_metadata" in values:
        checks.append(("binlog_row_metadata", "FULL"))
    for name, wanted in checks:
        actual = values.get(name, "")
        problem = None
        if actual.upper() != wanted:
            problem = (
                f"{name} is {actual or 'unset'}, must be {wanted}: set {name}={wanted} {where}"
            )
        settings.append((name, problem))
    if flavor == "mariadb":
        identity = f"mariadb:server_id={values.get('server_id')}"
        gtid_mode = True
    else:
        identity = f"mysql:{values.get('server_uuid')}"
        gtid_mode = values.get("gtid_mode", "OFF").upper() == "ON"
    if positions == "file":
        kind = FilePosition.kind
    elif flavor == "mariadb":
        kind = MariadbGtidPosition.kind
    else:
        kind = MysqlGtidSetPosition.kind if gtid_mode else FilePosition.kind
    options = values.get("binlog_row_value_options", "")
    return ServerInfo(flavor, version, identity, gtid_mode, kind, options), settings


def preflight_binlog(conn: Connection, positions: str = "auto") -> ServerInfo:
    """Binlog on, ROW format, FULL images and metadata: else one line naming setting and fix."""
    server, settings = server_info(conn, positions)
    for _name, problem in settings:
        if problem is not None:
            raise FatalError(problem)
    return server
