"""The one driver of every model service: retries, the in-flight limit, splitting a poisoned
request, per-item errors, dead letters and the scored batch. A service adds only its codec."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic

from cdc_scorer.core.errors import PoisonError, RetriableError
from cdc_scorer.core.models import (
    Answer,
    Budget,
    ItemError,
    ItemT,
    MeteredCodec,
    ModelCodec,
    ModelSpec,
)
from cdc_scorer.core.records import (
    Batch,
    BatchAnswer,
    DeadLetter,
    Gap,
    Op,
    Prediction,
    RowChange,
    ScoredBatch,
)
from cdc_scorer.core.retry import backoff_s, retrying
from cdc_scorer.core.spec import PipelineSpec, RetrySpec
from cdc_scorer.services.aws import CallObserver, aws_errors

Item = tuple[RowChange, ItemT]


def build_scorer(
    pipeline: PipelineSpec,
    client: Any,
    retry: RetrySpec,
    *,
    on_retry: Callable[[str, RetriableError], None] | None = None,
    on_call: CallObserver | None = None,
    budget: Budget | None = None,
) -> ModelDriver[Any]:
    """The pipeline's scorer on ``client`` (an aiobotocore client of its service's
    ``client_name``); the daemon and ``check`` build them the same way. ``budget``: the
    pipeline's own (None: the one its model section asks for, if any)."""
    return ModelDriver(
        pipeline.model,
        pipeline.model.codec(),
        client,
        retry,
        max_in_flight=pipeline.batching.max_in_flight,
        on_retry=on_retry,
        on_call=on_call,
        budget=budget if budget is not None else pipeline.model.budget(),
    )


class ModelDriver(Generic[ItemT]):
    """Scores a pipeline's batches through ``codec`` on ``client``.

    At most ``max_in_flight`` calls are at the service at once, whatever calls them (batches
    in flight, the requests of one batch, halves of a split): the limit the docs promise
    and the HTTP pool is sized for. With a ``budget``, each call (each attempt) waits for its
    share of it once it holds its slot, so what is counted is what is sent. Retriable errors
    are retried for ever, each reported to ``on_retry`` first; an ``on_retry`` that raises
    gives up instead (``check`` does, to report and move on)."""

    def __init__(
        self,
        spec: ModelSpec,
        codec: ModelCodec[ItemT],
        client: Any,
        retry: RetrySpec,
        *,
        max_in_flight: int,
        on_retry: Callable[[str, RetriableError], None] | None = None,
        on_call: CallObserver | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._codec = codec
        self._budget = budget
        self._client = client
        self._retry = retry
        self._stage = spec.service
        self._inputs = spec.input_columns
        self._slots = asyncio.Semaphore(max_in_flight)
        self._on_retry = on_retry
        self._on_call = on_call

    async def score(self, batch: Batch) -> ScoredBatch:
        dead: list[DeadLetter] = []
        items: list[Item[ItemT]] = []
        given: list[Prediction] = []
        for change in batch.upserts:
            if change.answered is not None:  # by a batch job, for these very inputs
                self._answered(change, change.answered, given, dead)
                continue
            try:
                require_complete(change, self._inputs)
                items.append((change, self._codec.prepare(change)))
            except PoisonError as exc:
                dead.append(self._dead(change, exc.reason, str(exc)))
        if not items:
            return ScoredBatch(
                sequence=batch.sequence,
                upserts=tuple(given),
                deletes=tuple(c.key for c in batch.deletes),
                dead_letters=tuple(dead),
                checkpoint=batch.checkpoint,
                rows_skipped=batch.rows_skipped,
                truncate=batch.truncate,
                columns_changed=batch.columns_changed,
            )
        # A batch's requests go together (Titan and Converse take one row a call): the
        # in-flight limit holds them; their rows keep the batch's order.
        requests = list(self._codec.requests(items))
        outputs: list[tuple[list[Prediction], list[DeadLetter]]] = [([], []) for _ in requests]
        if len(requests) == 1:
            calls = await self._score(requests[0], *outputs[0])
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._score(r, *out))
                        for r, out in zip(requests, outputs, strict=True)
                    ]
            except BaseExceptionGroup as failed:  # the first failure, as one call raises it
                raise failed.exceptions[0] from None
            calls = sum(t.result() for t in tasks)
        predictions = [*given, *(p for out, _ in outputs for p in out)]
        for _, letters in outputs:
            dead.extend(letters)
        return ScoredBatch(
            sequence=batch.sequence,
            upserts=tuple(predictions),
            deletes=tuple(c.key for c in batch.deletes),
            dead_letters=tuple(dead),
            checkpoint=batch.checkpoint,
            model_calls=calls,
            rows_skipped=batch.rows_skipped,
            truncate=batch.truncate,
            columns_changed=batch.columns_changed,
        )

    async def _score(
        self, items: Sequence[Item[ItemT]], predictions: list[Prediction], dead: list[DeadLetter]
    ) -> int:
        """One request's items; a request the service refuses as a whole is split in halves
        until the rows it refuses are isolated. Returns the calls made."""
        calls = 0
        attempt = 0
        while items:
            calls += 1
            try:
                answer = await retrying(
                    functools.partial(self._call, items),
                    spec=self._retry,
                    stage=self._stage,
                    on_retry=self._on_retry,
                )
            except PoisonError as exc:
                if len(items) == 1:
                    dead.append(self._dead(items[0][0], exc.reason, str(exc)))
                    return calls
                middle = len(items) // 2
                calls += await self._score(items[:middle], predictions, dead)
                return calls + await self._score(items[middle:], predictions, dead)
            items = self._collect(items, answer, predictions, dead)
            if items:  # items the service could not do this time: they go again, alone
                if self._on_retry is not None:
                    self._on_retry(
                        f"{self._stage}_items", RetriableError("item errors", code="item_error")
                    )
                await asyncio.sleep(backoff_s(self._retry, attempt))
                attempt += 1
        return calls

    def _collect(
        self,
        items: Sequence[Item[ItemT]],
        answer: Answer,
        predictions: list[Prediction],
        dead: list[DeadLetter],
    ) -> list[Item[ItemT]]:
        """Predictions and dead letters of an answer; the items to send again."""
        again: list[Item[ItemT]] = []
        variant = answer.variant
        # The rows of one transaction share its id: format it once, not once per row.
        tx: object = None
        tx_text: str | None = None
        for item, outcome in zip(items, answer.outcomes, strict=True):
            change = item[0]
            if isinstance(outcome, ItemError):
                if outcome.retriable:
                    again.append(item)
                else:
                    dead.append(self._dead(change, outcome.reason, outcome.message))
                continue
            if change.tx is not tx:
                tx = change.tx
                tx_text = str(tx) if tx else None
            predictions.append(
                Prediction(
                    key=change.key,
                    columns=dict(outcome),
                    variant=variant,
                    source_position=tx_text,
                    source_committed_at=change.committed_at,
                )
            )
        return again

    async def _call(self, items: Sequence[Item[ItemT]]) -> Answer:
        sent = [item for _, item in items]
        request = self._codec.encode(sent)
        method = getattr(self._client, self._codec.operation)
        async with self._slots:
            if self._budget is None:
                with aws_errors(self._codec.describe, self._on_call):
                    response = await read_bodies(await method(**request))
            else:
                metered: MeteredCodec[ItemT] = self._codec  # type: ignore[assignment]
                urgent = any(change.op is not Op.SNAPSHOT for change, _ in items)
                grant = await self._budget.acquire(metered.estimate_tokens(sent), urgent)
                used = None
                try:
                    with aws_errors(self._codec.describe, self._on_call):
                        response = await read_bodies(await method(**request))
                    used = metered.used_tokens(response)
                finally:
                    grant.settle(used)
        try:
            answer = self._codec.decode(response, len(items))
        except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise PoisonError(
                f"{self._codec.describe}: the answer cannot be read: {exc!r}",
                reason="bad_response",
            ) from None
        if len(answer.outcomes) != len(items):
            raise PoisonError(
                f"{self._codec.describe} answered {len(answer.outcomes)} items for "
                f"{len(items)} rows",
                reason="bad_response",
            )
        return answer

    def _answered(
        self,
        change: RowChange,
        answer: BatchAnswer,
        predictions: list[Prediction],
        dead: list[DeadLetter],
    ) -> None:
        if answer.columns is None:
            dead.append(self._dead(change, answer.reason, answer.error))
            return
        predictions.append(
            Prediction(
                key=change.key,
                columns=dict(answer.columns),
                variant=None,
                source_position=str(change.tx) if change.tx else None,
                source_committed_at=change.committed_at,
            )
        )

    def _dead(self, change: RowChange, reason: str, error: str) -> DeadLetter:
        return DeadLetter(
            key=change.key,
            reason=reason,
            error=error[:60_000],
            payload=payload_text(change, self._inputs),
            source_position=str(change.tx) if change.tx else None,
        )


async def read_bodies(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response with its streamed payloads (a blob body: SageMaker's ``Body``, Bedrock's
    ``body``) read into bytes, so codecs decode plain values."""
    out = dict(response)
    for name, value in response.items():
        if hasattr(value, "read") and hasattr(value, "__aenter__"):
            async with value as stream:
                out[name] = await stream.read()
    return out


# A gap a source did not explain (every source of ours does).
_UNEXPLAINED = Gap("incomplete_input", "did not arrive whole in the change log")


def require_complete(change: RowChange, inputs: Sequence[str]) -> None:
    """A row whose model input the log did not carry whole (a partial JSON diff, an unchanged
    TOASTed value) is not scored from a guess: it is a dead letter with the reason and the fix
    its source gives."""
    if not (change.incomplete or change.unchanged):
        return
    gaps = [c for c in inputs if c in change.incomplete or c in change.unchanged]
    if gaps:
        gap = change.gap or _UNEXPLAINED
        raise PoisonError(
            f"model input {', '.join(gaps)} {gap.text.format(table=change.table)}",
            reason=gap.reason,
        )


def payload_text(change: RowChange, columns: Sequence[str]) -> str:
    """A dead letter's payload: the model inputs of the row, as JSON."""
    return json.dumps({c: change.values.get(c) for c in columns}, default=str)[:65_000]
