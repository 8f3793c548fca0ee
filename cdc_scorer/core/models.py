"""The contract of model services: the plug point between a pipeline's batches and a model.

A service is its configuration section — a frozen dataclass subclassing :class:`ModelSpec`,
registered by name in ``services/registry.py`` — plus the :class:`ModelCodec` it builds: how a
row becomes an item of a request, how items are grouped into requests, encoded into the
client's call and decoded from its answer (per-item errors included). The shared driver
(``services/driver.py``) owns everything else: retries, splitting a poisoned request, dead
letters, the in-flight limit and the scored batch. Nothing outside ``services/`` names a
service; the implementations live in ``services/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from cdc_scorer.core.batch import BatchService
from cdc_scorer.core.records import Batch, RowChange, ScoredBatch

if TYPE_CHECKING:
    from cdc_scorer.core.spec import BackfillSpec

ItemT = TypeVar("ItemT")


# A prediction column's kind, in the store's neutral terms: ``label`` is text of at most
# ``length`` characters, ``text`` text of any length, ``number`` a double, ``integer`` a 64-bit
# integer, ``boolean`` true or false, ``vector`` ``length`` floats (the server's vector type
# where it has one, else a JSON array: the store decides and ``check`` says which).
ColumnKind = Literal["label", "text", "number", "integer", "boolean", "vector"]


@dataclass(frozen=True)
class PredictionColumn:
    """A column of the predictions table a service fills."""

    name: str
    kind: ColumnKind
    length: int = 0


@dataclass(frozen=True)
class ItemError:
    """One item the service answered with an error: retried alone when ``retriable``, else a
    dead letter with ``reason``."""

    reason: str
    message: str
    retriable: bool = False


# An item's answer: its prediction columns, or why it has none.
Outcome = Mapping[str, Any] | ItemError


@dataclass(frozen=True)
class Answer:
    """A decoded response: one outcome per item sent, in order; the production variant that
    answered, where the service says."""

    outcomes: Sequence[Outcome]
    variant: str | None = None


class Grant(Protocol):
    """A call's share of a budget, reserved before the call."""

    def settle(self, used: tuple[int, int] | None) -> None:
        """(input, output) tokens the call used, as its answer says (None: the estimate
        stands)."""


class Budget(Protocol):
    """Requests and tokens a pipeline may spend per minute (a service's quota)."""

    async def acquire(self, tokens: int, urgent: bool) -> Grant:
        """Wait until a call estimated at ``tokens`` fits; ``urgent`` calls (rows of the
        stream) go before the others (rows of a re-score) and may use the whole budget."""

    def stream_quiet(self) -> bool:
        """Whether no call for the stream's rows was granted within the last minute: then a
        re-score may use the whole budget, not only its share."""

    def spending(self) -> dict[str, float]:
        """Requests granted, tokens reported (``input_tokens``, ``output_tokens``) and seconds
        waited (``wait_stream_s``, ``wait_rescore_s``) so far: the metrics."""


class ModelCodec(Protocol[ItemT]):
    """What a service knows about its wire format; no retries, no dead letters, no I/O."""

    operation: str  # the client's method, e.g. ``invoke_endpoint``
    describe: str  # the call as errors name it, e.g. ``InvokeEndpoint churn-endpoint``

    def prepare(self, change: RowChange) -> ItemT:
        """A row as an item of a request; raises ``PoisonError`` for a row it cannot send."""

    def requests(
        self, items: Sequence[tuple[RowChange, ItemT]]
    ) -> Iterable[Sequence[tuple[RowChange, ItemT]]]:
        """The items grouped into requests (the service's own limits: items per call, one
        language per call)."""

    def encode(self, items: Sequence[ItemT]) -> dict[str, Any]:
        """The keyword arguments of one call of :attr:`operation`."""

    def decode(self, response: Mapping[str, Any], count: int) -> Answer:
        """The answer to a request of ``count`` items (streamed bodies already read into
        bytes); raises ``PoisonError`` when the response as a whole is no answer."""


class ModelSpec(ABC):
    """A pipeline's model service section, ``[pipelines.<service>]``."""

    service: ClassVar[str]  # the name in ``pipelines[].service`` and of the section
    client_name: ClassVar[str]  # the aiobotocore client the service is called through
    default_max_rows: ClassVar[int]  # rows per batch when the config does not say

    @property
    @abstractmethod
    def input_columns(self) -> tuple[str, ...]:
        """The source columns the model reads: an update touching none of them is skipped."""

    @abstractmethod
    def prediction_columns(self) -> tuple[PredictionColumn, ...]:
        """The columns the service adds to the predictions table, in order."""

    @property
    @abstractmethod
    def model_endpoint(self) -> str:
        """What the predictions' ``model_endpoint`` column says."""

    @property
    def display_name(self) -> str:
        """The endpoint as `check` names it."""
        return self.model_endpoint

    @property
    def pricing_key(self) -> str:
        """The model's name in ``[pricing]`` (the endpoint's, or the model id)."""
        return self.model_endpoint

    def check_sample(self) -> dict[str, Any] | None:
        """Values `check` sends in one real call (None: a real row of the table)."""
        return None

    @abstractmethod
    def codec(self) -> ModelCodec[Any]:
        """The service's wire format for this section."""

    def rescore_rows_per_s(self, stream_quiet: bool = False) -> float | None:
        """The pace a re-score of this model's table keeps by default, leaving the rest of
        the model's capacity to the stream (None: as fast as the model and the sink take
        rows). A re-score's rows go to the model in the pipeline's batches, before the stream
        rows behind them: a re-score faster than its share of a budget would queue batches in
        front of the stream. ``stream_quiet``: the budget says the stream has not called
        within the minute, and the re-score may spend (nearly) all of it."""
        return None

    def budget(self) -> Budget | None:
        """What the pipeline may spend per minute, and what it spent (None: a service not
        metered; its throttling, retried, is the only limit)."""
        return None

    # The aiobotocore clients a backfill's batch jobs use (none: the service has no batch
    # mode), e.g. ("bedrock", "s3").
    batch_clients: ClassVar[tuple[str, ...]] = ()

    def batch_problems(self, backfill: BackfillSpec) -> list[str]:
        """What is wrong with ``backfill`` for this service (config.py lists them)."""
        if backfill.mode != "realtime" and not self.batch_clients:
            return [
                f"mode: {backfill.mode!r} needs batch jobs, and {self.service} has none "
                'cdc-scorer runs — set mode = "realtime" (or remove the section)'
            ]
        return []

    def batch(
        self, pipeline: str, backfill: BackfillSpec, clients: Mapping[str, Any]
    ) -> BatchService:
        """The pipeline's batch jobs on ``clients`` (by the names of :attr:`batch_clients`)."""
        raise NotImplementedError(f"{self.service} has no batch jobs")


class MeteredCodec(ModelCodec[ItemT], Protocol):
    """A codec of a service whose calls cost tokens: what the budget reserves before a call
    and what the answer says was used."""

    def estimate_tokens(self, items: Sequence[ItemT]) -> int:
        """Tokens a call of these items may use, at most (what is reserved)."""

    def used_tokens(self, response: Mapping[str, Any]) -> tuple[int, int] | None:
        """(input, output) tokens the answer says the call used (None: it does not say)."""


class Scorer(Protocol):
    """A batch in, its predictions and dead letters out (``driver.ModelDriver``)."""

    async def score(self, batch: Batch) -> ScoredBatch: ...
