"""Positions: MySQL GTID sets, MariaDB GTIDs and file:pos — arithmetic and encoding."""

from __future__ import annotations

from cdc_scorer.batcher import start_position
from cdc_scorer.records import BinlogCoordinate, Checkpoint, Gtid, GtidSet, MysqlGtid, Position

A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
B = "4f22fa47-71ca-11e1-9e33-c80aa9429563"


def test_gtid_set_parses_merges_and_prints_as_mysql() -> None:
    text = f"{A.upper()}:1-5:7,\n{B}:1-3:4"  # MySQL prints upper case and newlines
    executed = GtidSet.parse(text)
    assert str(executed) == f"{A}:1-5:7,{B}:1-4"
    assert executed.transactions() == 10
    assert MysqlGtid(A, 5) in executed and MysqlGtid(A, 6) not in executed
    assert MysqlGtid(B, 4) in executed and MysqlGtid("other", 1) not in executed
    assert str(executed.add(MysqlGtid(A, 6))) == f"{A}:1-7,{B}:1-4"
    assert str(GtidSet().add(MysqlGtid(B, 1))) == f"{B}:1"
    assert str(GtidSet.parse("")) == ""


def test_mysql_position_moves_and_round_trips() -> None:
    start = Position("mysql:x", gtid_set=GtidSet.parse(f"{A}:1-3"))
    later = start.after(MysqlGtid(A, 4))
    assert later.encode() == f"mysqlgtid:{A}:1-4"
    assert Position.decode("mysql:x", later.encode()) == later
    assert later.includes(MysqlGtid(A, 4)) and not start.includes(MysqlGtid(A, 4))
    # The oldest of several pipelines' positions is where a shared reader starts.
    assert start_position([Checkpoint(later), Checkpoint(start)], Position("mysql:x")) == start


def test_mariadb_and_file_positions() -> None:
    state = Position.decode("mariadb:server_id=1", "gtid:0-1-10,1-1-3")
    assert state.includes(Gtid(0, 1, 10)) and not state.includes(Gtid(0, 1, 11))
    assert not state.includes(Gtid(2, 1, 1))  # a domain it has not seen
    at = Position.decode("mysql:x", "file:binlog.000002:400")
    assert at.includes(BinlogCoordinate("binlog.000002", 399))  # started before the end
    assert not at.includes(BinlogCoordinate("binlog.000002", 400))
    assert at.includes(BinlogCoordinate("binlog.000001", 9_999))
    assert Position.decode("mysql:x", at.encode()) == at
