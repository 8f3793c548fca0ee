"""The backfill phase of ``make bench`` alone: a table re-scored beside a 1,000 rows/s stream
through the real-time endpoint, then by SageMaker Batch Transform jobs (the local control
plane and S3), on a private MariaDB and ``serve-models``; the stream's p99 during each against
the stream alone, the endpoint rows the re-score took, the modelled cost.

``python -m benchmarks.backfill [--mode quick|smoke] [--out DIR]`` writes
``backfill-benchmarks.md`` and ``.json`` (default: docs/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.harness import portable
from benchmarks.report import backfill_section
from benchmarks.run import BUFFER_POOL, MODES, RESCORE_STREAM_RATE, Bench
from cdc_scorer.local.servers import PrivateMariaDB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", default="docs", help="where backfill-benchmarks.md goes")
    args = parser.parse_args()
    mode = MODES[args.mode]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cdc-scorer-backfill-bench-"))
    try:
        launcher = PrivateMariaDB(extra_args=(f"--innodb-buffer-pool-size={BUFFER_POOL}",))
        with launcher as server:
            bench = Bench(mode, workdir, server, launcher.pid)
            try:
                result = bench.backfill_phase(RESCORE_STREAM_RATE)
            finally:
                bench.endpoints.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    title = f"# Backfill benchmark (`python -m benchmarks.backfill --mode {mode.name}`)"
    text = "\n".join([title, *backfill_section(result)[2:]]) + "\n"
    (out / "backfill-benchmarks.md").write_text(portable(text))
    (out / "backfill-benchmarks.json").write_text(
        portable(json.dumps(result, indent=2, default=str) + "\n")
    )
    print(text)


if __name__ == "__main__":
    main()
