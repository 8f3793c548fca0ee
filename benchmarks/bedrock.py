"""The Bedrock phases of ``make bench``: an embedding pipeline at saturation against its
budget, on a private MariaDB and the local Bedrock endpoint (Titan V2 shape, 30 ms a call).

- requests-bound: ``requests_per_minute`` binds; requests counted at the endpoint in the
  measured minute against it, tokens per minute, rows/s;
- tokens-bound: ``tokens_per_minute`` binds (each call reserved at a third of its characters,
  corrected by the token count the answer reports): tokens per minute against it;
- a re-score sharing the budget with the stream: the table's snapshot runs against the budget
  while the application inserts rows; the stream's freshness (source commit → prediction
  committed) against the same inserts with no re-score, in the same run.

The daemon and the endpoint run in this process (the measures are rates against a budget, not
CPU). ``python -m benchmarks.bedrock [--out DIR]`` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from benchmarks.harness import portable
from cdc_scorer.app import ScorerApp
from cdc_scorer.config import load_config
from cdc_scorer.core.spec import ScorerSpec
from cdc_scorer.local.churn_data import FEEDBACK_TABLE_DDL, FeedbackGenerator
from cdc_scorer.local.endpoints import TITAN_V2, ModelServer
from cdc_scorer.local.servers import DatabaseServer, PrivateMariaDB
from cdc_scorer.ops.logs import configure_logging
from cdc_scorer.stores.registry import build_store

MINUTE_S = 60.0
WARM_UP_S = 5.0  # the measured minute starts after the first calls
CALL_LATENCY_MS = 30.0


@dataclass
class BudgetRow:
    phase: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    measured_requests: int  # at the endpoint, in the measured minute
    measured_tokens: float  # as the answers reported them, in the measured minute
    most_requests_in_any_minute: int
    rows_per_s: float
    stream_p50_s: float | None = None
    stream_p99_s: float | None = None
    note: str = ""

    @property
    def share_of_budget(self) -> float:
        if self.requests_per_minute is not None and self.tokens_per_minute is None:
            return self.measured_requests / self.requests_per_minute
        assert self.tokens_per_minute is not None
        return self.measured_tokens / self.tokens_per_minute


def _config(
    path: Path,
    server: DatabaseServer,
    database: str,
    url: str,
    rescore: dict[str, Any] | None = None,
    **bedrock: Any,
) -> ScorerSpec:
    config = {
        "source": {
            "host": "127.0.0.1",
            "port": server.port,
            "user": "root",
            "database": database,
            "binlog": {"heartbeat_interval_s": 0.5},
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "aws": {"region": "us-east-1", "endpoint_url": url},
        "pipelines": [
            {
                "name": "feedback_embedding",
                "table": "feedback",
                "service": "bedrock",
                "predictions_table": "feedback_embedding_predictions",
                "batching": {"linger_ms": 50, "max_in_flight": 8},
                **({"rescore": rescore} if rescore else {}),
                "bedrock": {
                    "model_id": TITAN_V2,
                    "task": "embedding",
                    "text_column": "user_feedback",
                    "dimensions": 256,
                    **bedrock,
                },
            }
        ],
    }
    path.write_text(tomli_w.dumps(config))
    spec = load_config(path)
    store = build_store(spec.source, spec.retry)
    store.init(spec.pipelines)
    store.close()
    return spec


def _database(server: DatabaseServer, rows: int) -> str:
    name = f"bedrock_{random.getrandbits(32):08x}"
    conn = server.connect()
    texts = FeedbackGenerator(seed=11)
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cursor.execute(f"USE {name}")
        cursor.execute(FEEDBACK_TABLE_DDL)
        cursor.executemany(
            "INSERT INTO feedback (user_feedback) VALUES (%s)",
            [(f"{texts.text()} (#{i})",) for i in range(rows)],
        )
    conn.close()
    return name


def _scored(server: DatabaseServer, database: str) -> int:
    conn = server.connect(database)
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM feedback_embedding_predictions")
        (count,) = cursor.fetchone() or (0,)
    conn.close()
    return int(count)


async def _saturate(
    server: DatabaseServer,
    models: ModelServer,
    workdir: Path,
    phase: str,
    rows: int,
    **budget: Any,
) -> BudgetRow:
    """The first snapshot of ``rows`` rows against the budget; one minute measured."""
    database = await asyncio.to_thread(_database, server, rows)
    spec = _config(workdir / f"{phase}.toml", server, database, models.url, **budget)
    models.reset_stats()
    app = ScorerApp(spec)
    task = asyncio.create_task(app.run())
    started = time.monotonic()
    await asyncio.sleep(WARM_UP_S)
    spending = app.telemetry.pipelines["feedback_embedding"].spending
    assert spending is not None
    tokens_before, scored_before = (
        _tokens(spending()),
        await asyncio.to_thread(_scored, server, database),
    )
    window_start = time.monotonic()
    await asyncio.sleep(MINUTE_S)
    window_end = time.monotonic()
    tokens = _tokens(spending()) - tokens_before
    scored = await asyncio.to_thread(_scored, server, database) - scored_before
    await _stop(app, task)
    arrivals = list(models.call_times["bedrock"])
    inside = sum(1 for t in arrivals if window_start <= t < window_end)
    most = max((sum(1 for u in arrivals if t <= u < t + MINUTE_S) for t in arrivals), default=0)
    if scored >= rows:
        raise RuntimeError(f"{phase}: the table ran out before the minute: make it bigger")
    return BudgetRow(
        phase=phase,
        requests_per_minute=budget.get("requests_per_minute"),
        tokens_per_minute=budget.get("tokens_per_minute"),
        measured_requests=inside,
        measured_tokens=tokens,
        most_requests_in_any_minute=most,
        rows_per_s=scored / (window_end - window_start),
        note=f"{time.monotonic() - started:.0f} s",
    )


async def _quiet_table(
    server: DatabaseServer, models: ModelServer, workdir: Path, rows: int, rpm: int
) -> BudgetRow:
    """The first snapshot of a quiet table of ``rows`` rows at the default pace, to its end:
    its seconds against what ``rpm`` allows, and the most requests in any 60 s."""
    database = await asyncio.to_thread(_database, server, rows)
    spec = _config(workdir / "quiet.toml", server, database, models.url, requests_per_minute=rpm)
    models.reset_stats()
    app = ScorerApp(spec)
    task = asyncio.create_task(app.run())
    started = time.monotonic()
    deadline = started + 10 * MINUTE_S
    while await asyncio.to_thread(_scored, server, database) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a quiet table of {rows} rows not scored in 10 minutes")
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    await _stop(app, task)
    arrivals = list(models.call_times["bedrock"])
    most = max((sum(1 for u in arrivals if t <= u < t + MINUTE_S) for t in arrivals), default=0)
    allowed_s = rows / rpm * MINUTE_S
    return BudgetRow(
        phase="a quiet table's first snapshot, default pace",
        requests_per_minute=rpm,
        tokens_per_minute=None,
        measured_requests=len(arrivals),
        measured_tokens=0.0,
        most_requests_in_any_minute=most,
        rows_per_s=rows / elapsed,
        note=f"{rows} rows in {elapsed:.0f} s from the start (the budget allows {allowed_s:.0f} s)",
    )


async def _stop(app: ScorerApp, task: asyncio.Task[None]) -> None:
    """A clean stop drains the batches in flight, at the budget's pace (up to max_in_flight
    batches of 96 calls): past a few seconds it is cut, as the CLI's shutdown grace would."""
    app.request_stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task, 5)


def _tokens(spent: Any) -> float:
    return float(spent["input_tokens"] + spent["output_tokens"])


async def _shared(
    server: DatabaseServer, models: ModelServer, workdir: Path, rpm: int, rescore: bool
) -> BudgetRow:
    """Stream inserts at 2 rows/s for a minute, beside the first snapshot of a table big
    enough to keep the budget busy (``rescore``), or alone."""
    rows = int(rpm * 1.5) if rescore else 0
    database = await asyncio.to_thread(_database, server, rows)
    phase = "stream beside a re-score" if rescore else "stream alone"
    spec = _config(
        workdir / f"shared-{rescore}.toml",
        server,
        database,
        models.url,
        requests_per_minute=rpm,
    )
    models.reset_stats()
    app = ScorerApp(spec)
    task = asyncio.create_task(app.run())
    await asyncio.sleep(WARM_UP_S)
    conn = server.connect(database)
    watcher = server.connect(database)
    texts = FeedbackGenerator(seed=12)
    window_start = time.monotonic()
    written: dict[int, float] = {}  # stream row → when its insert committed
    seen: dict[int, float] = {}  # → when its prediction was first there
    snapshot_before = _snapshot_rows(conn, rows)

    async def watch() -> None:
        while True:
            pending = [k for k in written if k not in seen]
            if pending:
                found = await asyncio.to_thread(_present, watcher, pending)
                now = time.monotonic()
                seen.update((k, now) for k in found)
            await asyncio.sleep(0.1)

    watching = asyncio.create_task(watch())
    while time.monotonic() - window_start < MINUTE_S:
        with conn.cursor() as cursor:
            cursor.execute("INSERT INTO feedback (user_feedback) VALUES (%s)", (texts.text(),))
            written[int(cursor.lastrowid)] = time.monotonic()
        await asyncio.sleep(0.5)
    window_end = time.monotonic()
    snapshot_rows = _snapshot_rows(conn, rows) - snapshot_before
    deadline = time.monotonic() + MINUTE_S
    while time.monotonic() < deadline and len(seen) < len(written):  # noqa: ASYNC110
        await asyncio.sleep(0.2)  # the watcher fills seen
    watching.cancel()
    freshness = sorted(seen[k] - t for k, t in written.items() if k in seen)
    conn.close()
    watcher.close()
    await _stop(app, task)
    arrivals = list(models.call_times["bedrock"])
    inside = sum(1 for t in arrivals if window_start <= t < window_end)
    most = max((sum(1 for u in arrivals if t <= u < t + MINUTE_S) for t in arrivals), default=0)
    return BudgetRow(
        phase=phase,
        requests_per_minute=rpm,
        tokens_per_minute=None,
        measured_requests=inside,
        measured_tokens=0.0,
        most_requests_in_any_minute=most,
        rows_per_s=snapshot_rows / (window_end - window_start),
        stream_p50_s=_percentile(freshness, 0.5),
        stream_p99_s=_percentile(freshness, 0.99),
        note=f"{len(written)} stream rows, {len(freshness)} scored",
    )


def _present(conn: Any, keys: list[int]) -> list[int]:
    """The keys that have a prediction now."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM feedback_embedding_predictions WHERE id IN ("
            + ", ".join(["%s"] * len(keys))
            + ")",
            keys,
        )
        return [int(r[0]) for r in cursor.fetchall()]


def _snapshot_rows(conn: Any, preloaded: int) -> int:
    """Rows of the preloaded table (ids 1..preloaded) scored so far."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM feedback_embedding_predictions WHERE id <= %s", (preloaded,)
        )
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_phases(server: DatabaseServer, workdir: Path) -> list[BudgetRow]:
    models = ModelServer()
    await models.start()
    models.set_faults({"bedrock": {"latency_ms": CALL_LATENCY_MS}})
    try:
        rows = [
            await _saturate(
                server,
                models,
                workdir,
                "requests-bound",
                1200,
                requests_per_minute=600,  # the snapshot at its default pace
            ),
            await _saturate(server, models, workdir, "tokens-bound", 1500, tokens_per_minute=6000),
            await _quiet_table(server, models, workdir, 50, 40),
        ]
        models.set_faults({"bedrock": {"latency_ms": CALL_LATENCY_MS, "throttle_rate": 0.1}})
        rows.append(
            await _saturate(
                server,
                models,
                workdir,
                "requests-bound, 10 % throttled",
                1200,
                requests_per_minute=600,
            )
        )
        models.set_faults({"bedrock": {"latency_ms": CALL_LATENCY_MS, "throttle_rate": 0.0}})
        rows += [
            await _shared(server, models, workdir, 300, rescore=False),
            await _shared(server, models, workdir, 300, rescore=True),
        ]
    finally:
        await models.stop()
    return rows


def render(rows: list[BudgetRow]) -> str:
    lines = [
        "## Bedrock: an embedding pipeline against its budget",
        "",
        "In process, on the private MariaDB and the local Bedrock endpoint (Titan V2 shape, "
        f"{CALL_LATENCY_MS:.0f} ms a call, `batching.max_in_flight = 8`); one minute measured "
        f"after {WARM_UP_S:.0f} s of warm-up. Requests are counted at the endpoint as they "
        "arrive; tokens as the answers report them.",
        "",
        "| phase | budget | requests in the minute | tokens in the minute | share of the "
        "binding limit | most requests in any 60 s | rows/s | stream freshness p50 / p99 | "
        "note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = ", ".join(
            f"{v:,} {k}"
            for k, v in (("rpm", r.requests_per_minute), ("tpm", r.tokens_per_minute))
            if v is not None
        )
        fresh = (
            f"{r.stream_p50_s:.2f} / {r.stream_p99_s:.2f} s"
            if r.stream_p50_s is not None and r.stream_p99_s is not None
            else ""
        )
        share = f"{r.share_of_budget:.1%}" if "bound" in r.phase else ""
        lines.append(
            f"| {r.phase} | {budget} | {r.measured_requests:,} | {r.measured_tokens:,.0f} | "
            f"{share} | {r.most_requests_in_any_minute:,} | {r.rows_per_s:.1f} | {fresh} | "
            f"{r.note} |"
        )
    lines += [
        "",
        "In the shared phases `rows/s` is the re-score's (its rows scored in the minute); the "
        "stream inserts 2 rows/s, and its freshness is from the insert's commit to its "
        "prediction first seen by a reader polling every 0.1 s (both client clocks). The "
        "budget counts a call a second past its minute, so at saturation 1/61 of it stays "
        "unused.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs", help="where bedrock-benchmarks.md goes")
    args = parser.parse_args()
    configure_logging("json")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    out = Path(args.out)
    with (
        tempfile.TemporaryDirectory(prefix="cdc-scorer-bedrock-") as tmp,
        PrivateMariaDB(basedir=Path(tmp) / "mariadb") as server,
    ):
        rows = asyncio.run(run_phases(server, Path(tmp)))
    write(rows, out)
    print(render(rows))


def write(rows: list[BudgetRow], out: Path) -> None:
    """bedrock-benchmarks.md and .json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bedrock-benchmarks.md").write_text(
        portable(
            "# Bedrock benchmarks (`python -m benchmarks.bedrock`, part of `make bench`)\n\n"
            + render(rows)
        )
    )
    (out / "bedrock-benchmarks.json").write_text(
        json.dumps([asdict(r) | {"share": r.share_of_budget} for r in rows], indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
