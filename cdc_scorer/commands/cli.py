"""Command line: ``cdc-scorer serve-models | init | run | check | status | rescore |
reposition | demo``. No command branches on the change feed: each asks the source."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cdc_scorer import __version__
from cdc_scorer.core.errors import CdcScorerError, ConfigError, FatalError
from cdc_scorer.core.feeds import Source, Target
from cdc_scorer.core.spec import PipelineSpec, ScorerSpec
from cdc_scorer.core.store import Store


def _serve_models(args: argparse.Namespace) -> int:
    from cdc_scorer.local.endpoints import (
        DEFAULT_ENDPOINT,
        ModelServer,
        ModelServerConfig,
        parse_endpoint_spec,
        serve_forever,
    )
    from cdc_scorer.local.s3 import LocalS3

    s3: LocalS3 | None = None
    try:
        endpoints = dict(parse_endpoint_spec(s) for s in (args.endpoint or [DEFAULT_ENDPOINT]))
        s3_url = args.s3_url
        if s3_url is None and args.s3_port is not None and args.s3_port >= 0:
            s3 = LocalS3(args.host, args.s3_port)
            s3_url = s3.start()
            print(f"local S3 (moto) listening on {s3_url} ([aws] s3_endpoint_url)", flush=True)
        server = ModelServer(
            ModelServerConfig(
                endpoints=endpoints, variant=args.variant, seed=args.seed, s3_url=s3_url
            )
        )
        flags = {
            "latency_ms": args.latency_ms,
            "latency_per_row_ms": args.latency_per_row_ms,
            "latency_jitter_ms": args.latency_jitter_ms,
            "throttle_rate": args.throttle_rate,
            "error_5xx_rate": args.error_5xx_rate,
            "model_error_rate": args.model_error_rate,
        }
        server.set_faults({"all": {k: v for k, v in flags.items() if v is not None}})
        if args.faults:
            server.set_faults(json.loads(args.faults))
    except ValueError as exc:
        print(f"cdc-scorer serve-models: {exc}", file=sys.stderr)
        if s3 is not None:
            s3.stop()
        return 2
    # SIGTERM (a supervisor's stop) ends it as Ctrl-C does: the S3 server it started goes too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(server, args.host, args.port))
    finally:
        if s3 is not None:
            s3.stop()
    return 0


def _init(args: argparse.Namespace) -> int:
    from cdc_scorer.commands.init import initialize
    from cdc_scorer.config import load_config

    spec = load_config(args.config)
    statements = initialize(spec)
    print(f"cdc-scorer init: {len(statements)} statements applied to {spec.source.database}")
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _run(args: argparse.Namespace) -> int:
    # ECS may stop a task while it is still importing: remember the signal until the event
    # loop's handlers take over, and then stop cleanly instead of dying by the signal.
    early: list[int] = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from cdc_scorer.config import load_config, select_pipelines
    from cdc_scorer.ops.logs import configure_logging

    spec = load_config(args.config)
    if args.pipelines is not None:
        spec = select_pipelines(spec, args.pipelines)
    configure_logging(args.log_format, getattr(logging, args.log_level.upper()))
    return asyncio.run(run_daemon(spec, early))


async def run_daemon(spec: ScorerSpec, early_signals: Sequence[int] = ()) -> int:
    """Run until SIGTERM/SIGINT; drain within the grace period; 0 on a clean stop."""
    from cdc_scorer.app import ScorerApp

    app = ScorerApp(spec)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        app.request_stop()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    if early_signals:
        stop()
    task = asyncio.create_task(app.run())
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        try:
            await asyncio.wait_for(task, spec.shutdown_grace_s)
        except TimeoutError:
            print(
                f"cdc-scorer: shutdown grace of {spec.shutdown_grace_s}s exceeded; "
                "uncommitted batches will be replayed at the next start",
                file=sys.stderr,
            )
            return 1
    stop_wait.cancel()
    task.result()
    return 0


def _check(args: argparse.Namespace) -> int:
    from cdc_scorer.commands.check import run_checks
    from cdc_scorer.config import load_config

    spec = load_config(args.config)
    results = asyncio.run(run_checks(spec))
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


@contextmanager
def _source_and_store(spec: ScorerSpec) -> Iterator[tuple[Source, Store]]:
    """The configuration's source and its store, closed after the command."""
    from cdc_scorer.sources.registry import source_of
    from cdc_scorer.stores.registry import build_store

    store = build_store(spec.source, spec.retry)
    try:
        yield source_of(spec, store), store
    finally:
        store.close()


def find_pipeline(spec: ScorerSpec, name: str) -> PipelineSpec:
    for pipeline in spec.pipelines:
        if pipeline.name == name:
            return pipeline
    names = ", ".join(p.name for p in spec.pipelines)
    raise FatalError(f"--pipeline {name}: no such pipeline in the config (it has: {names})")


def _status(args: argparse.Namespace) -> int:
    from cdc_scorer.config import load_config

    spec = load_config(args.config)
    with _source_and_store(spec) as (source, store):
        reports, notes = source.status(spec.pipelines, store)
    if args.json:
        print(json.dumps([dict(r.fields) for r in reports], indent=2, default=str))
        return 0
    for report in reports:
        for line in report.lines:
            print(line)
    for name, note in notes:
        print(f"{name}: {note}")
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from cdc_scorer.config import load_config

    spec = load_config(args.config)
    pipeline = find_pipeline(spec, args.pipeline)
    with _source_and_store(spec) as (source, store):
        if args.estimate:
            from cdc_scorer.commands.estimate import estimate

            for line in estimate(spec, pipeline, store, args.where or None):
                print(line)
            return 0
        rescores = source.rescores(store)
        if args.cancel:
            ended = rescores.cancel(pipeline, args.cancel, timeout_s=args.timeout or 60)
            print(
                f"re-score {ended.id} of pipeline {pipeline.name} {ended.error or 'ended'} "
                f"after {ended.rows_done} rows"
            )
            return 0
        ticket = rescores.request(pipeline, args.where or None)
        print(ticket.said)
        if not ticket.followable:
            return 0
        if args.no_wait:
            print("follow it with `cdc-scorer status`")
            return 0
        outcome = rescores.follow(pipeline, ticket, out=sys.stderr, timeout_s=args.timeout)
    if outcome.stopped is not None:
        print(f"cdc-scorer: pipeline {pipeline.name} stopped: {outcome.stopped}", file=sys.stderr)
        return 1
    assert outcome.job is not None
    if outcome.job.error:
        print(f"cdc-scorer: re-score {ticket.id} failed: {outcome.job.error}", file=sys.stderr)
        return 1
    print(f"re-score {ticket.id} done: {outcome.job.rows_done} rows re-scored")
    return 0


def _reposition(args: argparse.Namespace) -> int:
    from cdc_scorer.config import load_config

    spec = load_config(args.config)
    pipeline = find_pipeline(spec, args.pipeline)
    target = _target(args)
    if target is None:
        return 2
    with _source_and_store(spec) as (source, store):
        for line in source.reposition(pipeline, store, target):
            print(line)
    return 0


def _target(args: argparse.Namespace) -> Target | None:
    """The flags of ``reposition`` as a target (None: a usage error, said)."""

    def usage(text: str) -> None:
        print(f"cdc-scorer reposition: {text}", file=sys.stderr)

    if args.pos is not None and args.file is None:
        usage("--pos goes with --file")
        return None
    if (args.partition is not None) != (args.to_offset is not None):
        usage("--to-offset N goes with --partition P")
        return None
    rescore = args.rescore
    if args.gtid is not None:
        return Target("position", f"gtid:{args.gtid}", rescore=rescore)
    if args.lsn is not None:
        return Target("position", f"lsn:{args.lsn}", rescore=rescore)
    if args.file is not None:
        if args.pos is None:
            usage("--file goes with --pos")
            return None
        return Target("position", f"file:{args.file}:{args.pos}", rescore=rescore)
    if args.to_earliest:
        return Target("earliest", rescore=rescore)
    if args.to_latest:
        return Target("latest", rescore=rescore)
    if args.to_datetime is not None:
        return Target("datetime", args.to_datetime, rescore=rescore)
    if args.to_offset is not None:
        return Target("offset", str(args.to_offset), args.partition, rescore=rescore)
    return Target("now", rescore=rescore)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cdc_scorer.local.demo import run_demo

    workdir = Path(args.workdir) if args.workdir else None
    return asyncio.run(run_demo(args.seconds, args.rate, not args.no_wait, workdir, args.server))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdc-scorer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cdc-scorer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve-models",
        help="local SageMaker, Comprehend and Bedrock endpoints backed by real models, with "
        "the batch jobs' control planes and an S3",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="the port to listen on")
    serve.add_argument(
        "--endpoint",
        action="append",
        metavar="NAME[=FORM]",
        help="a SageMaker endpoint to serve (repeatable); FORM is predicted_label | "
        "predicted_label,probability (default) | probabilities",
    )
    serve.add_argument("--variant", default="AllTraffic", help="production variant name")
    serve.add_argument(
        "--s3-port",
        type=int,
        default=0,
        help="the port of the local S3 the batch jobs use (moto's server mode; 0: a free "
        "port, -1: none)",
    )
    serve.add_argument(
        "--s3-url", default=None, help="an S3 to use instead of starting one (e.g. moto's)"
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    for flag, meaning in (
        ("latency-ms", "added latency per call"),
        ("latency-per-row-ms", "added latency per row/document"),
        ("latency-jitter-ms", "uniform random extra latency up to this"),
        ("throttle-rate", "probability of a throttling error per call"),
        ("error-5xx-rate", "probability of a 500/503 per call"),
        ("model-error-rate", "probability of ModelError (SageMaker) / an ErrorList item"),
    ):
        serve.add_argument(f"--{flag}", type=float, default=None, help=f"{meaning}, all services")
    serve.add_argument(
        "--faults",
        metavar="JSON",
        help='per-service faults as for POST /_local/faults, e.g. \'{"sagemaker": '
        '{"latency_ms": 15}}\'',
    )
    serve.set_defaults(handler=_serve_models)

    init = commands.add_parser("init", help="create the scorer's tables and views (idempotent)")
    init.add_argument("--config", required=True, help="TOML configuration file")
    init.set_defaults(handler=_init)

    run = commands.add_parser("run", help="the daemon: change feed → models → prediction tables")
    run.add_argument("--config", required=True, help="TOML configuration file")
    run.add_argument(
        "--pipelines",
        metavar="NAME,NAME",
        help="run only these pipelines of the configuration (several processes can split one "
        "configuration; each takes only its pipelines' leader locks and checkpoint rows)",
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="json: one object a line (production); console: for a terminal; auto: by the tty",
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning"),
        default="info",
        help="debug also shows the database, Kafka and AWS libraries' own debug logs",
    )
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check", help="preflight before deploying: change feed, grants, tables, endpoints"
    )
    check.add_argument("--config", required=True, help="TOML configuration file")
    check.set_defaults(handler=_check)

    status = commands.add_parser(
        "status", help="per pipeline: checkpoint, lag, leader, dead letters, snapshot"
    )
    status.add_argument("--config", required=True, help="TOML configuration file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    rescore = commands.add_parser(
        "rescore",
        help="re-score a pipeline's rows through the running daemon (progress bar until done)",
    )
    rescore.add_argument("--config", required=True, help="TOML configuration file")
    rescore.add_argument("--pipeline", required=True, help="the pipeline whose rows to re-score")
    rescore.add_argument(
        "--where", help="an SQL condition on the source table (default: every row)"
    )
    rescore.add_argument("--no-wait", action="store_true", help="return once it is requested")
    rescore.add_argument(
        "--estimate",
        action="store_true",
        help="print rows, records, batch jobs and the cost both ways ([pricing]); submit nothing",
    )
    rescore.add_argument(
        "--cancel", metavar="ID", help="end the re-score ID (running or waiting) instead"
    )
    rescore.add_argument(
        "--timeout", type=float, default=None, help="give up waiting after this many seconds"
    )
    rescore.set_defaults(handler=_rescore)

    reposition = commands.add_parser(
        "reposition",
        help="move a pipeline's checkpoint to a position (checked against the server); the "
        "daemon must be stopped",
    )
    reposition.add_argument("--config", required=True, help="TOML configuration file")
    reposition.add_argument("--pipeline", required=True, help="the pipeline to move")
    where = reposition.add_mutually_exclusive_group(required=True)
    where.add_argument("--gtid", metavar="SET", help="a GTID set (MySQL) or GTID list (MariaDB)")
    where.add_argument("--file", metavar="FILE", help="a binlog file, with --pos")
    where.add_argument("--lsn", metavar="LSN", help="a WAL position (PostgreSQL), e.g. 0/1A63938")
    where.add_argument("--now", action="store_true", help="the server's position now")
    where.add_argument(
        "--to-earliest", action="store_true", help="Kafka: each partition's first offset"
    )
    where.add_argument(
        "--to-latest", action="store_true", help="Kafka: each partition's end (skip the backlog)"
    )
    where.add_argument(
        "--to-datetime",
        metavar="ISO",
        help="Kafka: each partition's first offset at or after this time (UTC if no zone)",
    )
    where.add_argument("--to-offset", type=int, metavar="N", help="Kafka: offset N of --partition")
    reposition.add_argument("--pos", type=int, metavar="N", help="where a commit ends in --file")
    reposition.add_argument("--partition", type=int, metavar="P", help="with --to-offset")
    reposition.add_argument(
        "--rescore", action="store_true", help="and re-score every row beside the stream"
    )
    reposition.set_defaults(handler=_reposition)

    demo = commands.add_parser(
        "demo",
        help="a private database + local endpoints + the scorer, with a live workload",
    )
    demo.add_argument("--seconds", type=float, default=20.0, help="length of the live workload")
    demo.add_argument("--rate", type=float, default=50.0, help="workload transactions per second")
    demo.add_argument("--no-wait", action="store_true", help="exit after the queries")
    demo.add_argument("--workdir", help="keep the server's data here (default: a temp dir)")
    demo.add_argument(
        "--server",
        choices=("mariadb", "mysql", "mysql-gtid", "mariadb-vector", "postgresql"),
        default="mariadb",
        help="the source: MariaDB, MySQL as Aurora MySQL ships it (GTIDs off), MySQL with "
        "GTIDs on, MariaDB 11.8 (vectors in VECTOR columns), or PostgreSQL (logical "
        "replication)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print("cdc-scorer: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except CdcScorerError as exc:
        print(f"cdc-scorer: {exc}", file=sys.stderr)
        return 1
    return code
