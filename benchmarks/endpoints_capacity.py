"""Capacity of the local model endpoints: churn scoring of 100-row batches, concurrent calls.

Runs ``cdc-scorer serve-models`` as its own process (as in use) and drives it from this one
through a real aiobotocore client, so SigV4 signing and response parsing are in the figures.

    python -m benchmarks.endpoints_capacity [--seconds 10] [--concurrency 64] [--rows 100]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import sys
import time
import urllib.request

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cdc_scorer.local.churn_data import FEATURE_COLUMNS, ChurnRowGenerator
from cdc_scorer.local.servers import free_port


def _body(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in ChurnRowGenerator(1).rows(rows):
        writer.writerow([row[c] for c in FEATURE_COLUMNS])
    return out.getvalue().encode()


async def _drive(url: str, seconds: float, concurrency: int, rows: int) -> tuple[int, float]:
    body = _body(rows)
    config = AioConfig(max_pool_connections=concurrency, retries={"total_max_attempts": 1})
    calls = 0
    async with get_session().create_client(
        "sagemaker-runtime", endpoint_url=url, config=config
    ) as runtime:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < deadline:
                response = await runtime.invoke_endpoint(
                    EndpointName="churn-autopilot-endpoint", ContentType="text/csv", Body=body
                )
                async with response["Body"] as stream:
                    await stream.read()
                calls += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cdc_scorer", "serve-models", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server_cpu_before = _cpu_seconds(server.pid)
        calls, elapsed = asyncio.run(_drive(url, args.seconds, args.concurrency, args.rows))
        server_cpu = _cpu_seconds(server.pid) - server_cpu_before
    finally:
        server.terminate()
        server.wait(timeout=10)
    rows = calls * args.rows
    print(
        f"endpoints capacity: {calls} calls x {args.rows} rows in {elapsed:.1f}s, "
        f"concurrency {args.concurrency}: {rows / elapsed:,.0f} rows/s, "
        f"{calls / elapsed:,.0f} calls/s; server CPU {server_cpu:.1f}s "
        f"({rows / max(server_cpu, 1e-9):,.0f} rows per server CPU-second)"
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
