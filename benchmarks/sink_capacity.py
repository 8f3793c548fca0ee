"""Capacity of the sink: prediction rows/s the product's Sink applies to a private MariaDB.

One churn pipeline's Sink (the real class: multi-row upserts, checkpoint, one transaction per
500-row batch) writes scored batches as fast as it can — new keys, then the same keys again
(updates) — first alone, then with a busy Python thread in the same process, as the reader
and the event loop are in ``cdc-scorer run``. The gap between the two is what sharing one
process (one GIL, and here two cores) costs the one serial stage of a pipeline.

    python -m benchmarks.sink_capacity [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from benchmarks.harness import (
    Batching,
    create_bench_database,
    init_scorer_tables,
    write_scorer_config,
)
from benchmarks.run import BUFFER_POOL
from cdc_scorer.config import load_config
from cdc_scorer.core.records import Checkpoint, Prediction, ScoredBatch
from cdc_scorer.core.spec import RetrySpec
from cdc_scorer.local.servers import PrivateMariaDB
from cdc_scorer.sources.binlog.positions import Gtid, MariadbGtidPosition, decode_binlog_position
from cdc_scorer.stores.mysql.leader import lock_name
from cdc_scorer.stores.mysql.sink import Sink

BATCH_ROWS = 500


def _batches(rows: int, first_seq: int) -> list[ScoredBatch]:
    at = datetime(2026, 11, 24, 12, 0, 0)
    batches = []
    for sequence, start in enumerate(range(0, rows, BATCH_ROWS)):
        seq = first_seq + sequence
        predictions = tuple(
            Prediction(
                key=(f"{i // 10000:03d}-{i % 10000:04d}",),
                columns={"will_churn": "True.", "churn_probability": (i % 997) / 997},
                variant="AllTraffic",
                source_position=f"0-1-{seq}",
                source_committed_at=at,
            )
            for i in range(start, min(rows, start + BATCH_ROWS))
        )
        position = MariadbGtidPosition("bench", (Gtid(0, 1, seq),))
        batches.append(
            ScoredBatch(
                sequence=seq,
                upserts=predictions,
                deletes=(),
                dead_letters=(),
                checkpoint=Checkpoint(position=position, snapshot_state="skipped"),
                model_calls=1,
            )
        )
    return batches


def _rate(sink: Sink, batches: list[ScoredBatch]) -> float:
    async def write_all() -> None:
        for batch in batches:
            await sink.write([batch])  # one transaction each, as the stream alone writes

    started = time.perf_counter()
    asyncio.run(write_all())
    return sum(len(b.upserts) for b in batches) / (time.perf_counter() - started)


def _busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-sink-"))
    launcher = PrivateMariaDB(extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",))
    with launcher as server:
        for busy in (False, True):
            database = f"sink_{int(busy)}"
            create_bench_database(server, database)
            config = workdir / f"{database}.toml"
            write_scorer_config(config, server, database, "http://127.0.0.1:1", Batching())
            init_scorer_tables(config)
            spec = load_config(config)
            pipeline = spec.pipelines[0]
            sink = Sink(
                spec.source,
                pipeline,
                ("phone",),
                "bench",
                RetrySpec(),
                lock=lock_name(database, pipeline.name),
                decode=decode_binlog_position,
            )
            assert sink.try_lead(5), "the leader lock is free in a fresh database"
            stop = threading.Event()
            spinner = threading.Thread(target=_busy, args=(stop,), daemon=True)
            if busy:
                spinner.start()
            try:
                label = "with a busy Python thread" if busy else "alone"
                inserts = _rate(sink, _batches(args.rows, 1))
                updates = _rate(sink, _batches(args.rows, 1_000_000))
                print(
                    f"sink {label}: {args.rows:,} rows in {BATCH_ROWS}-row batches — "
                    f"new keys {inserts:,.0f} rows/s, existing keys {updates:,.0f} rows/s",
                    flush=True,
                )
            finally:
                stop.set()
                sink.close()


if __name__ == "__main__":
    main()
