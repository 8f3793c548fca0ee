"""structlog: JSON lines when not on a terminal (CloudWatch), readable console on a terminal.

The libraries (pymysqlreplication, botocore, aiobotocore, pymysql) log through the standard
``logging`` module: their records go through the same processors and renderer as ours, so the
output stays one format (one JSON object a line in production), and they speak only from
WARNING up unless the level is DEBUG.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(log_format: str = "auto", level: int = logging.INFO) -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Library chatter (allowed events, credentials found, reconnects at INFO) only at debug;
    # their warnings and errors always.
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
