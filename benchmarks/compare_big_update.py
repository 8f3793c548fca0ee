"""One big UPDATE caught up on MySQL and on PostgreSQL, alternated in one run: rows/s and rows
per scorer CPU second of each, and PostgreSQL's share of MySQL's (within 30 %).

    python -m benchmarks.compare_big_update [--rows 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.harness import ModelEndpoints
from benchmarks.postgresql import PgBench
from benchmarks.run import BUFFER_POOL, MODES, Bench, Row
from cdc_scorer.local.mysql_dist import ensure_mysql
from cdc_scorer.local.servers import PrivateMySQL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    mode = dataclasses.replace(MODES["quick"], big_update_rows=args.rows, profile=False)
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-compare-"))
    endpoints = ModelEndpoints(workdir)
    try:
        for round_ in range(args.rounds):
            launcher = PrivateMySQL(
                gtid=True,
                distribution=ensure_mysql(),
                extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",),
            )
            with launcher as server:
                mysql = Bench(mode, workdir, server, launcher.pid, endpoints).big_update()
            with PgBench(mode, workdir, endpoints, print) as postgresql:
                pg = postgresql.big_update(Row)
            assert mysql.e2e_rows_per_s and pg.e2e_rows_per_s
            assert mysql.cpu_s_per_1k and pg.cpu_s_per_1k
            print(
                f"round {round_}: MySQL {mysql.e2e_rows_per_s:,.0f} rows/s, "
                f"{1000 / mysql.cpu_s_per_1k:,.0f} rows per scorer CPU s | PostgreSQL "
                f"{pg.e2e_rows_per_s:,.0f} rows/s, {1000 / pg.cpu_s_per_1k:,.0f} rows per "
                f"scorer CPU s, peak RSS {pg.peak_rss_mb:.0f} MB | PostgreSQL / MySQL: rows/s "
                f"{pg.e2e_rows_per_s / mysql.e2e_rows_per_s:.0%}, per CPU second "
                f"{mysql.cpu_s_per_1k / pg.cpu_s_per_1k:.0%}",
                flush=True,
            )
    finally:
        endpoints.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
