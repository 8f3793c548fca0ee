"""The stream's side of DBLog, on the accumulator alone: what a chunk contributes at its high
watermark, where the job's cursor moves, and the jobs' bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

from cdc_scorer.core.batcher import Accumulator
from cdc_scorer.core.own_tables import RESCORE, WINDOW_CLOSE, WINDOW_OPEN
from cdc_scorer.core.records import (
    Batch,
    Checkpoint,
    Commit,
    Op,
    RescoreJob,
    Rescores,
    RowChange,
    Signal,
    SourceItem,
    TableAltered,
    TableTruncated,
)
from cdc_scorer.core.rescoring import (
    CHUNKS_AHEAD,
    Chunk,
    ChunkExchange,
    cancel,
    decode_rescores,
    encode_rescores,
    enqueue,
    finish,
)
from cdc_scorer.core.spec import BatchingSpec, PipelineSpec
from cdc_scorer.services.sagemaker import SageMakerSpec
from cdc_scorer.sources.binlog.events import EVERY_TABLE, gone_tables
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition

AT = datetime(2026, 11, 25, 6, 0, 0)
SPEC = PipelineSpec(
    name="p",
    table="t",
    model=SageMakerSpec("e", feature_columns=("n",)),
    key_columns=("id",),
    model_version="7",
    batching=BatchingSpec(max_rows=3),
)
JOB = RescoreJob(id="job", reason="requested", model_version="7")
RUNNING = Rescores(running=JOB)


def tx(seq: int) -> Gtid:
    return Gtid(0, 1, seq)


def change(op: Op, key: int, n: int, seq: int) -> RowChange:
    return RowChange(op, "t", (key,), {"id": key, "n": n}, tx(seq), AT)


def chunk_row(key: int, n: int) -> RowChange:
    return RowChange(Op.SNAPSHOT, "t", (key,), {"id": key, "n": n}, None, None)


def commit(seq: int) -> Commit:
    return Commit(MariadbGtidPosition("s", (tx(seq),)), AT, tx(seq))


def watermark(kind: str, chunk: str, seq: int) -> Signal:
    return Signal("p", kind, chunk, {}, tx(seq))


def feed(accumulator: Accumulator, items: list[SourceItem]) -> list[Batch]:
    out: list[Batch] = []
    for item in items:
        result = accumulator.accept(item)
        if isinstance(result, list):
            out += result
        elif result is not None:
            out.append(result)
    tail = accumulator.flush(force_checkpoint=True)
    return out + ([tail] if tail is not None else [])


def accumulator(exchange: ChunkExchange, rescores: Rescores = RUNNING) -> Accumulator:
    checkpoint = Checkpoint(MariadbGtidPosition("s", (tx(1),)), "done", rescores)
    exchange.job_changed(rescores.running)
    return Accumulator(SPEC, ("id",), checkpoint, exchange=exchange, clock=lambda: 0.0)


def test_rows_the_stream_changes_inside_the_window_leave_the_chunk() -> None:
    exchange = ChunkExchange()
    acc = accumulator(exchange)
    exchange.expect("c1")
    items: list[SourceItem] = [
        change(Op.UPDATE, 1, 10, 2),  # before the window: the chunk's version is newer
        commit(2),
        watermark(WINDOW_OPEN, "c1", 3),
        commit(3),
        change(Op.UPDATE, 2, 20, 4),  # inside: the stream's version wins
        change(Op.DELETE, 3, 0, 4),  # deleted inside: not resurrected by the chunk
        commit(4),
    ]
    batches = feed(acc, items[:4])
    exchange.deposit(
        Chunk(
            "c1",
            "job",
            (chunk_row(1, 11), chunk_row(2, 2), chunk_row(3, 3), chunk_row(4, 4)),
            (4,),
            False,
            4,
        )
    )
    batches += feed(acc, [*items[4:], watermark(WINDOW_CLOSE, "c1", 5), commit(5)])
    applied: dict[int, tuple[Op, int]] = {}
    for batch in batches:
        for row in batch.upserts:
            applied[row.key[0]] = (row.op, row.values["n"])
        for row in batch.deletes:
            applied[row.key[0]] = (Op.DELETE, 0)
    assert applied == {
        1: (Op.SNAPSHOT, 11),
        2: (Op.UPDATE, 20),
        3: (Op.DELETE, 0),
        4: (Op.SNAPSHOT, 4),
    }
    # A chunk row names the high watermark's transaction as its source version.
    snapshot_rows = [r for b in batches for r in b.upserts if r.op is Op.SNAPSHOT]
    assert {r.tx for r in snapshot_rows} == {tx(5)}
    last = batches[-1].checkpoint.rescores
    assert last.running is not None and last.running.cursor == (4,)
    assert last.running.rows_done == 2 and last.running.rows_total == 4
    assert sum(b.rows_skipped.get("rescore_conflict", 0) for b in batches) == 2


def test_the_cursor_moves_only_with_the_last_rows_of_its_chunk() -> None:
    exchange = ChunkExchange()
    acc = accumulator(exchange)
    exchange.expect("c1")
    feed(acc, [watermark(WINDOW_OPEN, "c1", 2)])
    rows = tuple(chunk_row(k, k) for k in range(1, 8))  # 7 rows, batches of 3
    exchange.deposit(Chunk("c1", "job", rows, (7,), False, 100))
    result = acc.accept(watermark(WINDOW_CLOSE, "c1", 3))
    assert isinstance(result, list) and len(result) == 2
    for early in result:  # a crash after these re-reads the chunk: nothing is lost
        assert early.checkpoint.rescores.running is not None
        assert early.checkpoint.rescores.running.cursor is None
    tail = acc.flush()
    assert tail is not None and len(tail.upserts) == 1
    assert tail.checkpoint.rescores.running is not None
    assert tail.checkpoint.rescores.running.cursor == (7,)


def test_watermarks_of_another_run_are_ignored() -> None:
    exchange = ChunkExchange()
    acc = accumulator(exchange)
    exchange.expect("mine")
    batches = feed(
        acc,
        [
            watermark(WINDOW_OPEN, "old", 2),  # replayed after a restart
            change(Op.INSERT, 5, 5, 3),
            watermark(WINDOW_CLOSE, "old", 4),
            commit(4),
        ],
    )
    assert [r.key for b in batches for r in b.upserts] == [(5,)]
    assert not exchange.window_open


def test_the_last_chunk_finishes_the_job_and_starts_the_next() -> None:
    exchange = ChunkExchange()
    queued = replace(JOB, id="next", where="n > 1")
    acc = accumulator(exchange, Rescores(running=JOB, queued=(queued,)))
    exchange.expect("c1")
    feed(acc, [watermark(WINDOW_OPEN, "c1", 2)])
    exchange.deposit(Chunk("c1", "job", (chunk_row(1, 1),), (1,), True, 1, (("n", "int"),)))
    batches = feed(acc, [watermark(WINDOW_CLOSE, "c1", 3), commit(3)])
    rescores = batches[-1].checkpoint.rescores
    assert rescores.running == queued and rescores.queued == ()
    assert [j.id for j in rescores.finished] == ["job"]
    assert rescores.finished[0].finished_at is not None
    assert rescores.input_types == (("n", "int"),)
    assert exchange.current_job() == queued  # the snapshotter is told


def test_requests_and_alters_queue_jobs_and_repeats_are_dropped() -> None:
    exchange = ChunkExchange()
    acc = accumulator(exchange, Rescores(input_types=(("n", "int"),)))
    request = Signal("p", RESCORE, "r1", {"where": "n > 3"}, tx(2))
    items: list[SourceItem] = [request, commit(2), TableAltered("t", tx(3)), commit(3)]
    batches = feed(acc, [*items, request])  # the same request again: once
    rescores = batches[-1].checkpoint.rescores
    assert rescores.running is not None and rescores.running.where == "n > 3"
    assert rescores.running.model_version == "7"
    (alter,) = rescores.queued
    assert alter.reason == "ALTER TABLE" and alter.check_types == (("n", "int"),)


def test_jobs_survive_their_json() -> None:
    job = RescoreJob(
        "a", "model version 2", "2", "x > 1", ("k", 3), 10, 20, (("n", "int"),), "t0", None
    )
    rescores = Rescores(job, (replace(job, id="b"),), (replace(job, id="c"),), (("n", "int"),))
    assert decode_rescores(encode_rescores(rescores)) == rescores
    assert encode_rescores(Rescores()) is None
    assert decode_rescores(None) == Rescores()


def test_a_binary_key_cursor_survives_its_json_as_bytes() -> None:
    """A BINARY(16) key's cursor read back after a restart is bytes again (its text form
    would compare wrongly with the column), with a composite's other parts untouched."""
    job = replace(JOB, cursor=(b"\x00\xff" * 8, "eu", 3))
    rescores = Rescores(job)
    assert decode_rescores(encode_rescores(rescores)) == rescores


def test_enqueue_and_finish() -> None:
    first = enqueue(Rescores(), JOB)
    assert first.running == JOB
    automatic = replace(JOB, id="v2", reason="model version 2")
    twice = enqueue(enqueue(first, automatic), replace(automatic, id="v2-again"))
    assert [j.id for j in twice.queued] == ["v2"]  # the scorer's own repeat is dropped
    requested = enqueue(twice, replace(JOB, id="again"))
    assert [j.id for j in requested.queued] == ["v2", "again"]  # an operator's is not
    done = finish(requested, None)
    assert done.running is not None and done.running.id == "v2"
    assert [j.id for j in done.finished] == ["job"]


def test_a_truncate_inside_the_window_empties_the_chunk() -> None:
    exchange = ChunkExchange()
    acc = accumulator(exchange)
    exchange.expect("c1")
    feed(acc, [watermark(WINDOW_OPEN, "c1", 2), commit(2)])
    exchange.deposit(Chunk("c1", "job", (chunk_row(1, 1), chunk_row(2, 2)), (2,), False, 2))
    batches = feed(
        acc,
        [
            TableTruncated("t", tx(3)),
            commit(3),
            change(Op.INSERT, 9, 9, 4),
            commit(4),
            watermark(WINDOW_CLOSE, "c1", 5),
            commit(5),
        ],
    )
    assert [r.key for b in batches for r in b.upserts] == [(9,)]
    assert any(b.truncate for b in batches)
    last = batches[-1].checkpoint.rescores.running
    assert last is not None and last.cursor == (2,)  # the job goes on after the chunk


def test_the_tables_a_ddl_takes_away() -> None:
    assert gone_tables("DROP TABLE `churn` /* generated by server */") == [(None, "churn")]
    assert gone_tables("DROP TABLE IF EXISTS a, mltest.churn") == [
        (None, "a"),
        ("mltest", "churn"),
    ]
    assert gone_tables("RENAME TABLE churn TO churn_old, b TO c") == [(None, "churn"), (None, "b")]
    assert gone_tables("ALTER TABLE churn RENAME TO x") == [(None, "churn")]
    assert gone_tables("DROP DATABASE IF EXISTS `mltest`") == [("mltest", EVERY_TABLE)]
    for kept in (
        "ALTER TABLE churn RENAME COLUMN a TO b",
        "ALTER TABLE churn ADD COLUMN renamed INT",
        "DROP TEMPORARY TABLE churn",
        "DROP VIEW churn_scored",
    ):
        assert gone_tables(kept) == [], kept


def test_an_update_of_other_columns_inside_the_window_keeps_the_chunk_row() -> None:
    """The stream skips an update that changes no model input; were the chunk's row dropped
    too, a re-score would leave that row with the old model's prediction."""
    exchange = ChunkExchange()
    acc = accumulator(exchange)
    exchange.expect("c1")
    feed(acc, [watermark(WINDOW_OPEN, "c1", 2), commit(2)])
    exchange.deposit(Chunk("c1", "job", (chunk_row(1, 1),), (1,), False, 1))
    before = {"id": 1, "n": 1, "note": "a"}
    other = RowChange(Op.UPDATE, "t", (1,), {**before, "note": "b"}, tx(3), AT, before)
    batches = feed(acc, [other, commit(3), watermark(WINDOW_CLOSE, "c1", 4), commit(4)])
    assert [(r.op, r.key) for b in batches for r in b.upserts] == [(Op.SNAPSHOT, (1,))]


def test_cancel_ends_the_running_job_or_drops_a_waiting_one() -> None:
    waiting = replace(JOB, id="w")
    rescores = Rescores(running=JOB, queued=(waiting,))
    dropped = cancel(rescores, "w")
    assert dropped.running == JOB and dropped.queued == ()
    assert [(j.id, j.error) for j in dropped.finished] == [("w", "cancelled")]
    ended = cancel(rescores, "job")
    assert ended.running == waiting
    assert [(j.id, j.error) for j in ended.finished] == [("job", "cancelled")]
    first = Rescores(running=replace(JOB, reason="snapshot"))
    assert cancel(first, "job") == first  # the first snapshot is not cancelled
    assert cancel(rescores, "unknown") == rescores


def test_a_sweep_chunk_deletes_its_orphans_except_keys_the_stream_wrote_in_the_window() -> None:
    """A sweep chunk's orphans (predictions whose row was not in the table when it was read)
    join the stream as deletes at the high watermark; a key the stream wrote inside the window
    keeps what the stream made of it; the sweep's cursor and count move with the last of them,
    and the job goes on to its rows."""
    exchange = ChunkExchange()
    job = replace(JOB, sweep=True)
    acc = accumulator(exchange, Rescores(running=job))
    exchange.expect("s1")
    batches = feed(acc, [watermark(WINDOW_OPEN, "s1", 2)])
    orphans = ((1,), (2,), (3,), (4,))
    exchange.deposit(Chunk("s1", "job", (), (b"\x07" * 32,), False, 10, orphans=orphans))
    items: list[SourceItem] = [
        change(Op.INSERT, 2, 20, 3),  # re-created inside the window: its prediction stays
        commit(3),
        watermark(WINDOW_CLOSE, "s1", 4),
        change(Op.INSERT, 3, 30, 5),  # re-created after the window: deleted, then scored
        commit(5),
    ]
    batches += feed(acc, items)
    applied: dict[int, tuple[Op, int]] = {}
    for batch in batches:  # a batch's deletes and upserts are of different keys
        for row in batch.upserts:
            applied[row.key[0]] = (row.op, row.values["n"])
        for row in batch.deletes:
            applied[row.key[0]] = (Op.DELETE, 0)
    assert applied == {1: (Op.DELETE, 0), 2: (Op.INSERT, 20), 3: (Op.INSERT, 30), 4: (Op.DELETE, 0)}
    deletes = [r for b in batches for r in b.deletes]
    assert {r.tx for r in deletes} == {tx(4)}  # at the high watermark, before what follows
    running = batches[-1].checkpoint.rescores.running
    assert running is not None and running.id == "job"  # the rows are still to come
    assert running.sweep_cursor == (b"\x07" * 32,) and not running.swept
    assert running.orphans_removed == 3 and running.rows_done == 0 and running.cursor is None
    assert running.rows_total == 10

    exchange.expect("s2")  # the sweep's last chunk: swept, the job not finished
    feed(acc, [watermark(WINDOW_OPEN, "s2", 6)])
    exchange.deposit(Chunk("s2", "job", (), (b"\x09" * 32,), True, None, orphans=()))
    tail = feed(acc, [watermark(WINDOW_CLOSE, "s2", 7), commit(7)])
    running = tail[-1].checkpoint.rescores.running
    assert running is not None and running.swept and running.orphans_removed == 3
    restored = decode_rescores(encode_rescores(tail[-1].checkpoint.rescores)).running
    assert restored == running  # a restart resumes after the sweep


def test_a_rescore_reads_ahead_only_while_few_merged_chunks_wait_for_their_commit() -> None:
    """The snapshotter reads the next chunk only while fewer than CHUNKS_AHEAD merged chunks
    wait for the commit of the batch that carries their cursor: a re-score keeps little of
    its rows in front of the stream's."""

    async def run() -> None:
        exchange = ChunkExchange()
        await asyncio.wait_for(exchange.durable(), 0.1)  # nothing merged: read
        for sequence in range(CHUNKS_AHEAD):
            exchange.merged(10 + sequence)
        waiting = asyncio.create_task(exchange.durable())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        exchange.committed(9)  # an earlier batch: still waiting
        await asyncio.sleep(0.05)
        assert not waiting.done()
        exchange.committed(10)  # the first chunk's batch: one waits now, read on
        await asyncio.wait_for(waiting, 0.5)
        # A job that changed (cancelled, finished) does not keep the snapshotter waiting.
        exchange.merged(12)
        waiting = asyncio.create_task(exchange.durable())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        exchange.job_changed(None)
        await asyncio.wait_for(waiting, 0.5)

    asyncio.run(run())
