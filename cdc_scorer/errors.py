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


class PipelineStopped(CdcScorerError):
    """One pipeline cannot go on (its model's input is gone); the others do."""


class ConfigError(FatalError):
    """Every problem of a configuration, reported at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))
