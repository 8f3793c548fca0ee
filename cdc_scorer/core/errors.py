"""One error taxonomy: every library exception is mapped to one of these where it enters."""

from __future__ import annotations


class CdcScorerError(Exception):
    """Base of all our errors; ``retriable`` says whether trying again can help."""

    retriable: bool = False


class RetriableError(CdcScorerError):
    """Throttling, 5xx, model not ready, timeouts, lost connections, deadlocks."""

    retriable = True

    def __init__(self, message: str, *, code: str = "unknown") -> None:
        super().__init__(message)
        self.code = code


class PoisonError(CdcScorerError):
    """The input itself is rejected; retrying the same input cannot succeed."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FatalError(CdcScorerError):
    """The process cannot go on (bad config, missing table, binlog off...): exit, one line."""


class PositionLost(FatalError):
    """A checkpoint's position cannot be resumed on this server (purged, reset, another
    history, a binlog file of another server): stop with the cause, or — with the feed's
    ``on_lost_position = "rescore"`` — stream from now and re-score every row."""


class PipelineStopped(CdcScorerError):
    """One pipeline cannot go on (its model's input is gone); the others do."""


def inputs_gone(pipeline: str, table: str, columns: list[str]) -> PipelineStopped:
    """The stop of a pipeline whose model reads columns the table no longer has."""
    return PipelineStopped(
        f"pipeline {pipeline}: column {', '.join(columns)} of table {table} is gone (dropped or "
        "renamed) and its model reads it — restore the column, or change the pipeline's columns "
        "in the config, then restart: the pipeline resumes from its checkpoint"
    )


class ConfigError(FatalError):
    """Every problem of a configuration, reported at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


def table_gone(pipeline: str, table: str, statement: str) -> PipelineStopped:
    """The stop of a pipeline whose table was dropped or renamed (``statement`` did it)."""
    return PipelineStopped(
        f"pipeline {pipeline}: table {table} was dropped or renamed ({statement}) — point the "
        "pipeline at the table's new name, or for a table made anew run `cdc-scorer "
        f"reposition --config FILE --pipeline {pipeline} --now --rescore` (its rows scored, "
        "the old rows' predictions removed), then restart"
    )
