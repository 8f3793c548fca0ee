"""Positions: MySQL GTID sets, MariaDB GTIDs and file:pos — arithmetic and encoding."""

from __future__ import annotations

import pytest

from cdc_scorer.core.checkpoints import stream_start
from cdc_scorer.core.positions import oldest_position
from cdc_scorer.core.records import Checkpoint
from cdc_scorer.sources.binlog.positions import (
    BinlogCoordinate,
    FilePosition,
    Gtid,
    GtidSet,
    MariadbGtidPosition,
    MysqlGtid,
    MysqlGtidSetPosition,
    decode_binlog_position,
)

A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
B = "4f22fa47-71ca-11e1-9e33-c80aa9429563"
END = BinlogCoordinate("binlog.000003", 120)  # where a commit event ended


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
    start = MysqlGtidSetPosition("mysql:x", GtidSet.parse(f"{A}:1-3"))
    later = start.after(MysqlGtid(A, 4), END)
    assert later.encode() == f"mysqlgtid:{A}:1-4"
    assert decode_binlog_position("mysql:x", later.encode()) == later
    assert later.includes(MysqlGtid(A, 4)) and not start.includes(MysqlGtid(A, 4))
    assert later.reader_start() == {"is_mariadb": False, "auto_position": f"{A}:1-4"}
    assert later.transactions_since(start) == 1
    # An empty set (no GTID transaction yet) starts at the end, by auto-positioning.
    empty = MysqlGtidSetPosition("mysql:x")
    assert empty.reader_start() == {"is_mariadb": False, "auto_position": None}
    assert decode_binlog_position("mysql:x", empty.encode()) == empty
    # The oldest of several pipelines' positions is where a shared reader starts.
    assert stream_start([Checkpoint(later), Checkpoint(start)]) == start


def test_mariadb_positions() -> None:
    state = decode_binlog_position("mariadb:server_id=1", "gtid:0-1-10,1-1-3")
    assert isinstance(state, MariadbGtidPosition)
    assert state.includes(Gtid(0, 1, 10)) and not state.includes(Gtid(0, 1, 11))
    assert not state.includes(Gtid(2, 1, 1))  # a domain it has not seen
    after = state.after(Gtid(0, 1, 11), END)
    assert after.encode() == "gtid:0-1-11,1-1-3"
    assert after.auto_position == "0-1-11,1-1-3"
    assert after.transactions_since(state) == 1
    assert MariadbGtidPosition("m").reader_start() == {"is_mariadb": True, "auto_position": None}
    # A domain one pipeline has not seen is read from its start: the oldest leaves it out.
    other = decode_binlog_position("mariadb:server_id=1", "gtid:0-1-4")
    assert oldest_position([state, other]).encode() == "gtid:0-1-4"


def test_file_positions() -> None:
    at = decode_binlog_position("mysql:x", "file:binlog.000002:400")
    assert at == FilePosition("mysql:x", "binlog.000002", 400)
    assert at.includes(BinlogCoordinate("binlog.000002", 399))  # started before the end
    assert not at.includes(BinlogCoordinate("binlog.000002", 400))
    assert at.includes(BinlogCoordinate("binlog.000001", 9_999))
    assert decode_binlog_position("mysql:x", at.encode()) == at
    assert at.after(BinlogCoordinate("binlog.000002", 410), END) == FilePosition(
        "mysql:x", END.log_file, END.log_pos
    )
    assert at.reader_start() == {"is_mariadb": False, "log_file": "binlog.000002", "log_pos": 400}
    assert at.auto_position is None and at.transactions_since(at) is None
    earlier = FilePosition("mysql:x", "binlog.000001", 9_000)
    assert oldest_position([at, earlier]) == earlier


def test_positions_of_different_kinds_or_none_are_refused() -> None:
    with pytest.raises(ValueError, match="different kinds"):
        oldest_position([FilePosition("x", "b.1", 4), MariadbGtidPosition("x")])
    with pytest.raises(ValueError, match="unknown position encoding"):
        decode_binlog_position("x", "lsn:0/16B3748")


def test_file_positions_keep_the_fingerprint_of_their_commit() -> None:
    at = FilePosition("mysql:x", "binlog.000002", 400)
    later = at.after(BinlogCoordinate("binlog.000002", 410), END, "380/3/57")
    assert later.encode() == f"file:{END.log_file}:{END.log_pos}#380/3/57"
    assert decode_binlog_position("mysql:x", later.encode()) == later
    # A checkpoint of an older release has none, and reads back as it was.
    assert decode_binlog_position("mysql:x", "file:binlog.000002:400") == at
