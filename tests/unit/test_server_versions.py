"""What differs between server versions, decided from ``@@version`` (MySQL 8.0 and 8.4 are not
runnable here: these are their unit tests; MySQL 9.7 and MariaDB 10.11 run in the suite)."""

from __future__ import annotations

import pytest

from cdc_scorer.mysql.connection import version_tuple
from cdc_scorer.sources.binlog.server import ServerInfo, binlog_status_sql


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("8.0.35", (8, 0, 35)),
        ("8.0.28-log", (8, 0, 28)),
        ("8.0.mysql_aurora.3.05.2", (8, 0)),
        ("9.7.4-2", (9, 7, 4)),
        ("10.11.19-MariaDB-0+deb12u1-log", (10, 11, 19)),
    ],
)
def test_version_numbers(version: str, parsed: tuple[int, ...]) -> None:
    assert version_tuple(version) == parsed


@pytest.mark.parametrize(
    ("flavor", "version", "statement"),
    [
        ("mysql", "8.0.35", "SHOW MASTER STATUS"),  # Aurora MySQL 3
        ("mysql", "8.0.mysql_aurora.3.05.2", "SHOW MASTER STATUS"),
        ("mysql", "8.2.0", "SHOW BINARY LOG STATUS"),
        ("mysql", "8.4.3", "SHOW BINARY LOG STATUS"),  # SHOW MASTER STATUS is gone here
        ("mysql", "9.7.4-2", "SHOW BINARY LOG STATUS"),
        ("mariadb", "10.11.19-MariaDB", "SHOW MASTER STATUS"),
    ],
)
def test_binlog_status_statement_by_version(flavor: str, version: str, statement: str) -> None:
    assert binlog_status_sql(ServerInfo(flavor, version, "x", False, "file")) == statement
