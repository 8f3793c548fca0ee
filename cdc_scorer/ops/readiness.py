"""Readiness policy: when this process counts as ready (``/readyz``)."""

from __future__ import annotations

from cdc_scorer.ops.metrics import Telemetry


def not_ready(telemetry: Telemetry, ready_max_lag_s: float) -> list[str]:
    """Why this process should not count as ready (empty: ready)."""
    source = telemetry.source
    reasons = []
    if not source.owns_work:
        reasons.append("owns no work: not the leader (standby), no partition assigned")
    # A snapshot or re-score does not count: it runs beside the stream, which stays fresh.
    if not (source.streaming and source.connected):
        reasons.append("change stream not connected")
    for name, state in telemetry.pipelines.items():
        if state.stopped is not None:
            reasons.append(f"pipeline {name} stopped: {state.stopped}")
    lag = source.lag_s()
    if source.owns_work and (lag is None or lag > ready_max_lag_s):
        shown = "unknown" if lag is None else f"{lag:.1f}s"
        reasons.append(f"source lag {shown} over {ready_max_lag_s}s")
    return reasons
