"""The scorer's own tables, by name, and what their rows mean to the stream.

The store makes them (``init``) and writes them; the source captures two of them — the signal
table, whose inserted rows are re-score requests and chunk watermarks, and the heartbeat table,
whose rows move positions on quiet tables and measure the lag — and the router turns their row
changes into what the pipelines and the telemetry need (:func:`signal_of`).
"""

from __future__ import annotations

import json

import structlog

from cdc_scorer.core.records import RowChange, Signal

CHECKPOINT_TABLE = "cdc_scorer_checkpoint"
DEAD_LETTER_TABLE = "cdc_scorer_dead_letter"
HEARTBEAT_TABLE = "cdc_scorer_heartbeat"
SIGNAL_TABLE = "cdc_scorer_signal"
BATCH_JOB_TABLE = "cdc_scorer_batch_job"  # a backfill's batch jobs (core/backfill.py)
OWN_TABLES = (CHECKPOINT_TABLE, DEAD_LETTER_TABLE, HEARTBEAT_TABLE, SIGNAL_TABLE, BATCH_JOB_TABLE)
# A predictions table's columns besides the key and the model's: who answered, from which
# transaction, when (``key_hash`` and ``scored_at`` are the store's own too).
PREDICTION_METADATA = (
    "model_endpoint",
    "model_variant",
    "model_version",
    "source_position",
    "source_committed_at",
)

# The captured tables of the scorer's own, with their key and the columns read from them.
HEARTBEAT_KEY = ("instance",)
HEARTBEAT_COLUMNS = frozenset({"instance", "beat_at"})
SIGNAL_KEY = ("id",)
SIGNAL_COLUMNS = frozenset({"id", "pipeline", "kind", "data"})

# The kinds of signal rows.
RESCORE = "rescore"  # a request (`cdc-scorer rescore`, or the scorer's own)
CANCEL = "rescore-cancel"  # `cdc-scorer rescore --cancel ID`
WINDOW_OPEN = "window-open"  # a chunk's low watermark
WINDOW_CLOSE = "window-close"  # a chunk's high watermark
REQUESTS = (RESCORE, CANCEL)

log = structlog.get_logger("cdc_scorer.core.own_tables")


def watermark_id(chunk_id: str, kind: str) -> str:
    """The signal row id of a chunk's watermark: ``<chunk>-open`` / ``<chunk>-close``."""
    return f"{chunk_id}-{kind.removeprefix('window-')}"


def signal_of(row: RowChange) -> Signal | None:
    """The signal an inserted row of the signal table carries (None: not one to act on)."""
    pipeline = _text(row.values.get("pipeline"))
    kind = _text(row.values.get("kind"))
    try:
        data = json.loads(_text(row.values.get("data")) or "null")
    except ValueError:
        data = None
    if kind not in REQUESTS:  # a watermark: its data is the chunk's id
        return Signal(pipeline, kind, str(data), {}, row.tx)
    signal = Signal(pipeline, kind, _text(row.values.get("id")), data or {}, row.tx)
    if not isinstance(data, dict):
        log.error("request ignored: its data is not a JSON object", kind=kind, id=signal.id)
        return None
    return signal


def _text(value: object) -> str:
    """A text column's value (bytes where the binlog did not say the column's charset)."""
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)
