"""Local model endpoints speaking the real AWS wire protocols, backed by real models.

One aiohttp server, one port:
- SageMaker Runtime ``InvokeEndpoint`` (rest-json): ``POST /endpoints/{name}/invocations``;
- the SageMaker inference container contract: ``GET /ping``, ``POST /invocations``;
- Comprehend ``DetectSentiment`` / ``BatchDetectSentiment`` (JSON 1.1): ``POST /``;
- Bedrock Runtime ``InvokeModel`` (rest-json) of the embedding models:
  ``POST /model/{modelId}/invoke`` — Titan Text Embeddings (V2 and V1 shapes) and Cohere Embed,
  both answered by a real small embedding model (``local/embeddings.py``);
- Bedrock Runtime ``Converse`` with a forced tool: ``POST /model/{modelId}/converse``, the
  tool's input computed from local models (``local/converse.py``; a stand-in, not an LLM);
- fault injection and call statistics under ``/_local/``.

Clients reach it with the standard ``endpoint_url`` / ``AWS_ENDPOINT_URL`` setting, so SigV4
signing and botocore's error parsing run exactly as against AWS.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from aiohttp import web

from cdc_scorer.local import embeddings
from cdc_scorer.local.batch_jobs import SAGEMAKER_TARGET, BedrockBatch, SageMakerBatch
from cdc_scorer.local.churn_model import ChurnModel, RecordError
from cdc_scorer.local.converse import CONTEXT_TOKENS, ConverseModel, output_tokens
from cdc_scorer.local.sentiment import COMPREHEND_LANGUAGES, SUPPORTED_LANGUAGES, SentimentModel

T = TypeVar("T")

SAGEMAKER = "sagemaker"
COMPREHEND = "comprehend"
BEDROCK = "bedrock"
SERVICES = (SAGEMAKER, COMPREHEND, BEDROCK)

OUTPUT_FORMS = ("predicted_label", "predicted_label,probability", "probabilities")
DEFAULT_ENDPOINT = "churn-autopilot-endpoint"
DEFAULT_VARIANT = "AllTraffic"
MAX_INVOKE_BODY_BYTES = 6_291_456  # SageMaker real-time payload limit (6 MB)
MAX_COMPREHEND_DOC_BYTES = 5_000
MAX_COMPREHEND_BATCH = 25
# The embedding models the local Bedrock serves, by model id, with their request shape.
TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
EMBEDDING_MODELS = {
    TITAN_V2: "titan-v2",
    TITAN_V1: "titan-v1",
    "cohere.embed-english-v3": "cohere",
    "cohere.embed-multilingual-v3": "cohere",
}
# The chat models the local Converse answers for (an inference profile's "us." and the like
# in front of one is taken too).
CONVERSE_MODELS = (
    "anthropic.claude-3-haiku-20240307-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "amazon.nova-micro-v1:0",
    "amazon.nova-lite-v1:0",
    "meta.llama3-1-8b-instruct-v1:0",
)
TITAN_DIMENSIONS = (256, 512, 1024)
MAX_TITAN_CHARS = 50_000
MAX_COHERE_TEXTS = 96
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"

_SAGEMAKER_ERROR_NS = "http://internal.amazon.com/coral/com.amazon.sagemaker/"
_JSON_11 = "application/x-amz-json-1.1"
_TARGET_PREFIX = "Comprehend_20171127."


@dataclass(frozen=True)
class Faults:
    """Fault settings of one service. Rates are probabilities per call in [0, 1]."""

    latency_ms: float = 0.0
    latency_per_row_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    throttle_rate: float = 0.0
    error_5xx_rate: float = 0.0
    model_error_rate: float = 0.0
    # Bedrock Converse: an answer whose tool input breaks the tool's schema (a value outside
    # its enum), as a real model's sometimes does.
    invalid_answer_rate: float = 0.0
    # Bedrock batch inference (``batch_jobs.py``): a record answered with an internal error, a
    # record refused (a 400, as for an input the model does not take), a job failing halfway,
    # the seconds each state of a job lasts (a slow job: more), and the seconds an hour of a
    # job's timeoutDurationInHours lasts (less: a job that expires before it is done).
    batch_record_error_rate: float = 0.0
    batch_record_refusal_rate: float = 0.0
    batch_job_failure_rate: float = 0.0
    batch_step_s: float = 0.5
    batch_hour_s: float = 3600.0

    def merged(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; raises ValueError naming each bad key."""
        known = {f.name for f in fields(self)}
        problems = [f"unknown fault setting {k!r}" for k in changes if k not in known]
        values: dict[str, float] = {}
        for key, value in changes.items():
            if key not in known:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                problems.append(f"{key} must be a number >= 0, got {value!r}")
            elif key.endswith("_rate") and value > 1:
                problems.append(f"{key} must be a probability in [0, 1], got {value!r}")
            else:
                values[key] = float(value)
        if problems:
            raise ValueError("; ".join(problems))
        return replace(self, **values)


@dataclass
class _CallStats:
    calls: int = 0
    rows: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _AwsError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass(frozen=True)
class ModelServerConfig:
    """What the server serves: SageMaker endpoints (name → output form) and fault settings."""

    endpoints: dict[str, str] = field(
        default_factory=lambda: {DEFAULT_ENDPOINT: "predicted_label,probability"}
    )
    variant: str = DEFAULT_VARIANT
    faults: dict[str, Faults] = field(
        default_factory=lambda: {service: Faults() for service in SERVICES}
    )
    seed: int = 0
    # The S3 the batch services read and write (None: no batch jobs; serve-models starts one).
    s3_url: str | None = None

    def __post_init__(self) -> None:
        for name, form in self.endpoints.items():
            if form not in OUTPUT_FORMS:
                forms = ", ".join(OUTPUT_FORMS)
                raise ValueError(f"endpoint {name!r}: output form {form!r} is not one of {forms}")


class ModelServer:
    """The local endpoints; ``await start()`` in-process, or ``cdc-scorer serve-models``."""

    def __init__(self, config: ModelServerConfig | None = None) -> None:
        self.config = config or ModelServerConfig()
        self._faults: dict[str, Faults] = {s: self.config.faults.get(s, Faults()) for s in SERVICES}
        self.rng = random.Random(self.config.seed)
        self._sagemaker = _SageMakerRuntime(self)
        self._comprehend = _Comprehend(self)
        self._bedrock = _BedrockRuntime(self)
        self.bedrock_batch = BedrockBatch(self, self.config.s3_url)
        self.sagemaker_batch = SageMakerBatch(self, self.bedrock_batch)
        self._stats: dict[tuple[str, str], _CallStats] = defaultdict(_CallStats)
        # When each model request arrived (monotonic), by service: what a quota counts.
        self.call_times: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=100_000))
        # Model requests being served now, and the most at once, per service: what a client's
        # in-flight limit is held to.
        self._serving: dict[str, int] = defaultdict(int)
        self._peak_serving: dict[str, int] = defaultdict(int)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False
        self._up_again: asyncio.TimerHandle | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # ----------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * MAX_INVOKE_BODY_BYTES, middlewares=[self._gate])
        app.router.add_post("/endpoints/{name}/invocations", self._sagemaker.invoke_endpoint)
        app.router.add_get("/ping", self._sagemaker.ping)
        app.router.add_post("/invocations", self._sagemaker.container_invocations)
        app.router.add_post("/", self._comprehend.handle)
        app.router.add_post("/model/{model_id}/invoke", self._bedrock.invoke_model)
        app.router.add_post("/model/{model_id}/converse", self._bedrock.converse)
        self.bedrock_batch.routes(app)
        app.router.add_get("/_local/faults", self._get_faults)
        app.router.add_post("/_local/faults", self._post_faults)
        app.router.add_get("/_local/stats", self._get_stats)
        app.router.add_post("/_local/stats/reset", self._reset_stats)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); returns the endpoint URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self.host = host
        await self._listen(port)
        return self.url

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, port, backlog=1024, reuse_address=True)
        await self._site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[-1][1]) if port == 0 else port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bedrock_runtime(self) -> _BedrockRuntime:
        return self._bedrock

    def score_csv(self, records: list[list[str]], form: str) -> bytes:
        """The churn model's CSV answer to ``records`` (a batch transform's mini-batch)."""
        return self._sagemaker.score_csv(records, form)

    async def stop(self) -> None:
        await self.bedrock_batch.close()
        await self.sagemaker_batch.close()
        if self._up_again is not None:
            self._up_again.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_down(self, for_s: float | None = None) -> None:
        """Refuse connections (listening socket closed; open connections aborted)."""
        if self._down:
            return
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if for_s is not None:
            loop = asyncio.get_running_loop()
            self._up_again = loop.call_later(for_s, lambda: asyncio.ensure_future(self.go_up()))

    async def go_up(self) -> None:
        """Accept connections again, on the same port."""
        if not self._down:
            return
        if self._up_again is not None:
            self._up_again.cancel()
            self._up_again = None
        await self._listen(self.port)
        self._down = False

    # ----------------------------------------------------------------- faults and stats
    def faults(self, service: str) -> Faults:
        return self._faults[service]

    def set_faults(self, changes: dict[str, Any]) -> None:
        """Apply ``{"sagemaker": {...}, "comprehend": {...}, "bedrock": {...}, "all": {...}}``;
        all or nothing."""
        unknown = [k for k in changes if k not in (*SERVICES, "all", "down_for_s")]
        if unknown:
            raise ValueError(
                f"unknown keys {unknown}; use 'sagemaker', 'comprehend', 'bedrock' or 'all'"
            )
        updated = dict(self._faults)
        for service in SERVICES:
            for scope in ("all", service):
                if scope in changes:
                    if not isinstance(changes[scope], dict):
                        raise ValueError(f"{scope!r} must be an object of fault settings")
                    updated[service] = updated[service].merged(changes[scope])
        self._faults = updated

    def stats(self) -> dict[str, Any]:
        operations: dict[str, dict[str, Any]] = defaultdict(dict)
        for (operation, endpoint), s in sorted(self._stats.items()):
            operations[operation][endpoint] = {
                "calls": s.calls,
                "rows": s.rows,
                "errors": dict(s.errors),
            }
        return {
            "operations": operations,
            "total_calls": sum(s.calls for s in self._stats.values()),
            "total_rows": sum(s.rows for s in self._stats.values()),
            "peak_concurrent": dict(self._peak_serving),
            "bedrock_batch": self.bedrock_batch.stats(),
            "sagemaker_batch": self.sagemaker_batch.stats(),
        }

    def reset_stats(self) -> None:
        self._stats.clear()
        self.call_times.clear()
        self._peak_serving.clear()

    async def inject(self, service: str, rows: int) -> str | None:
        """Sleep the configured latency; return an injected error code or None."""
        faults = self._faults[service]
        delay_ms = faults.latency_ms + rows * faults.latency_per_row_ms
        if faults.latency_jitter_ms:
            delay_ms += self.rng.uniform(0, faults.latency_jitter_ms)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        draw = self.rng.random()
        if draw < faults.throttle_rate:
            if service in (SAGEMAKER, BEDROCK) and self.rng.random() < 0.5:
                return "ModelNotReadyException"
            return "ThrottlingException"
        draw -= faults.throttle_rate
        if draw < faults.error_5xx_rate:
            if self.rng.random() < 0.5:
                return (
                    "ServiceUnavailable" if service == SAGEMAKER else "ServiceUnavailableException"
                )
            return "InternalFailure" if service == SAGEMAKER else "InternalServerException"
        draw -= faults.error_5xx_rate
        if service == SAGEMAKER and draw < faults.model_error_rate:
            return "ModelError"
        return None

    # ----------------------------------------------------------------- middleware
    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._down and request.transport is not None:
            # Listening is already stopped; a kept-alive connection must fail as well.
            request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if request.path.startswith(("/_local/", "/model-invocation-job")) or request.headers.get(
            "X-Amz-Target", ""
        ).startswith(SAGEMAKER_TARGET):
            control: web.StreamResponse = await handler(request)
            return control
        service = (
            SAGEMAKER
            if request.path.startswith("/endpoints/")
            else BEDROCK
            if request.path.startswith("/model/")
            else COMPREHEND
        )
        self.call_times[service].append(time.monotonic())
        self._serving[service] += 1
        self._peak_serving[service] = max(self._peak_serving[service], self._serving[service])
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            self._serving[service] -= 1
        return response

    def record(self, operation: str, endpoint: str, rows: int, error: str | None) -> None:
        stats = self._stats[(operation, endpoint)]
        stats.calls += 1
        stats.rows += rows
        if error is not None:
            stats.errors[error] += 1

    # ----------------------------------------------------------------- control API
    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"down": self._down, **{s: asdict(f) for s, f in self._faults.items()}}
        )

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            down_for_s = changes.get("down_for_s")
            if down_for_s is not None and (
                isinstance(down_for_s, bool)
                or not isinstance(down_for_s, int | float)
                or down_for_s <= 0
            ):
                raise ValueError("down_for_s must be a number of seconds > 0")
            self.set_faults(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if down_for_s is not None:
            # Answer this request first, then stop listening.
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: asyncio.ensure_future(self.go_down(float(down_for_s))))
        return await self._get_faults(request)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats())


class _SageMakerRuntime:
    """SageMaker Runtime's InvokeEndpoint (rest-json), and the model container's contract."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server
        self._churn = ChurnModel.load()

    async def invoke_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            _require_sigv4(request)
            form = self._server.config.endpoints.get(name)
            if form is None:
                raise _AwsError(
                    400,
                    "ValidationError",
                    f"Endpoint {name} of account {ACCOUNT_ID} not found.",
                )
            body = await request.read()
            if len(body) > MAX_INVOKE_BODY_BYTES:
                raise _AwsError(
                    400,
                    "ValidationError",
                    f"Request payload is {len(body)} bytes, over the limit of "
                    f"{MAX_INVOKE_BODY_BYTES} bytes.",
                )
            records = _csv_records(body, request.content_type)
            injected = await self._server.inject(SAGEMAKER, len(records))
            if injected == "ModelError":
                raise _model_error(name, 500, "injected fault: model container error")
            if injected is not None:
                raise _sagemaker_fault(injected)
            payload = self.score_csv(records, form)
        except _ContainerError as exc:
            self._server.record("InvokeEndpoint", name, 0, "ModelError")
            return _sagemaker_error(_model_error(name, exc.status, exc.message))
        except _AwsError as exc:
            self._server.record("InvokeEndpoint", name, 0, exc.code)
            return _sagemaker_error(exc)
        self._server.record("InvokeEndpoint", name, len(records), None)
        return web.Response(
            body=payload,
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "x-Amzn-Invoked-Production-Variant": self._server.config.variant,
            },
        )

    def score_csv(self, records: list[list[str]], form: str) -> bytes:
        return score_churn_csv(self._churn, records, form)

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def container_invocations(self, request: web.Request) -> web.Response:
        """The container contract: plain HTTP errors, no AWS envelope (SageMaker adds that)."""
        name = next(iter(self._server.config.endpoints))
        try:
            records = _csv_records(await request.read(), request.content_type)
            payload = self.score_csv(records, self._server.config.endpoints[name])
        except _ContainerError as exc:
            self._server.record("ContainerInvocations", name, 0, str(exc.status))
            return web.Response(status=exc.status, text=exc.message)
        self._server.record("ContainerInvocations", name, len(records), None)
        return web.Response(body=payload, content_type="text/csv")


_BEDROCK_STATUS = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ModelTimeoutException": 408,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "AccessDeniedException": 403,
}


class _BedrockRuntime:
    """Bedrock Runtime's InvokeModel (rest-json) for embedding models, answered by the local
    embedding model whatever the model id names (a stand-in: the vectors are its own)."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server
        self._converse = ConverseModel()

    async def converse(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        try:
            _require_sigv4(request)
            try:
                params = json.loads(await request.read())
            except ValueError:
                raise _AwsError(400, "ValidationException", "Malformed input request") from None
            body = await self.converse_answer(model_id, params)
        except _AwsError as exc:
            self._server.record("Converse", model_id, 0, exc.code)
            return _bedrock_error(exc)
        self._server.record("Converse", model_id, 1, None)
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def converse_answer(
        self, model_id: str, params: Any, *, faults: bool = True
    ) -> dict[str, Any]:
        """Converse's answer to ``params`` (the request body), or the ``_AwsError`` Bedrock
        gives; ``faults``: the runtime's injected faults apply (a batch job has its own)."""
        base = model_id.split(".", 1)[1] if model_id.split(".")[0] in _PROFILES else model_id
        if base in EMBEDDING_MODELS:
            raise _AwsError(
                400, "ValidationException", "This model doesn't support the Converse API."
            )
        if base not in CONVERSE_MODELS:
            raise _AwsError(404, "ResourceNotFoundException", "Model not found.")
        prompt, system, schema, tool, max_tokens = self._conversation(params)
        input_tokens = embeddings.token_count(prompt + " " + system)
        if input_tokens > CONTEXT_TOKENS:
            raise _AwsError(
                400,
                "ValidationException",
                f"Input is too long for requested model: {input_tokens} tokens, the "
                f"local stand-in takes {CONTEXT_TOKENS}",
            )
        if faults:
            injected = await self._server.inject(BEDROCK, 1)
            if injected is not None:
                raise _AwsError(_BEDROCK_STATUS[injected], injected, f"injected fault: {injected}")
        answer = await asyncio.to_thread(self._converse.tool_input, prompt, schema)
        if faults and self._server.rng.random() < self._server.faults(BEDROCK).invalid_answer_rate:
            answer = _break(answer, schema)
        produced = output_tokens(answer)
        if produced > max_tokens:
            content: list[dict[str, Any]] = [{"text": json.dumps(answer)[: max_tokens * 3]}]
            stop, produced = "max_tokens", max_tokens
        else:
            use_id = f"tooluse_{self._server.rng.getrandbits(64):016x}"
            content = [{"toolUse": {"toolUseId": use_id, "name": tool, "input": answer}}]
            stop = "tool_use"
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": {
                "inputTokens": input_tokens,
                "outputTokens": produced,
                "totalTokens": input_tokens + produced,
            },
            "metrics": {"latencyMs": 1},
        }

    @staticmethod
    def _conversation(params: Any) -> tuple[str, str, dict[str, Any], str, int]:
        """(the user's text, the system text, the forced tool's schema and name, maxTokens);
        the ValidationExceptions Bedrock gives a request it cannot take."""
        if not isinstance(params, dict) or not isinstance(params.get("messages"), list):
            raise _AwsError(400, "ValidationException", "Malformed input request: messages")
        texts = [
            str(block["text"])
            for message in params["messages"]
            if isinstance(message, dict) and message.get("role") == "user"
            for block in message.get("content", [])
            if isinstance(block, dict) and "text" in block
        ]
        if not texts or not any(t.strip() for t in texts):
            raise _AwsError(
                400, "ValidationException", "The content field in the Message object is empty."
            )
        system = " ".join(str(b.get("text", "")) for b in params.get("system", []))
        config = params.get("toolConfig") or {}
        tools = {
            t["toolSpec"]["name"]: t["toolSpec"].get("inputSchema", {}).get("json", {})
            for t in config.get("tools", [])
            if isinstance(t, dict) and "toolSpec" in t
        }
        forced = (config.get("toolChoice") or {}).get("tool", {}).get("name")
        if forced is None or forced not in tools:
            raise _AwsError(
                400,
                "ValidationException",
                "the local Converse stand-in answers only through a tool the request forces "
                "(toolChoice.tool naming one of toolConfig.tools)",
            )
        max_tokens = int((params.get("inferenceConfig") or {}).get("maxTokens", 4096))
        return "\n".join(texts), system, tools[forced], forced, max_tokens

    async def invoke_model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        try:
            _require_sigv4(request)
            try:
                params = json.loads(await request.read())
            except ValueError:
                raise _AwsError(400, "ValidationException", "Malformed input request") from None
            answer, texts, tokens = await self.embedding_answer(model_id, params)
        except _AwsError as exc:
            self._server.record("InvokeModel", model_id, 0, exc.code)
            return _bedrock_error(exc)
        self._server.record("InvokeModel", model_id, texts, None)
        return web.Response(
            body=json.dumps(answer).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Amzn-Bedrock-Input-Token-Count": str(tokens),
                "X-Amzn-Bedrock-Output-Token-Count": "0",
            },
        )

    async def embedding_answer(
        self, model_id: str, params: Any, *, faults: bool = True
    ) -> tuple[dict[str, Any], int, int]:
        """InvokeModel's answer to ``params`` (the body) of an embedding model, the texts it
        embedded and its input tokens; or the ``_AwsError`` Bedrock gives. ``faults``: the
        runtime's injected faults apply (a batch job has its own)."""
        shape = EMBEDDING_MODELS.get(model_id)
        if shape is None:
            raise _AwsError(404, "ResourceNotFoundException", "Model not found.")
        if not isinstance(params, dict):
            raise _AwsError(400, "ValidationException", "Malformed input request")
        texts, dimensions, normalize = self._texts(shape, params)
        if faults:
            injected = await self._server.inject(BEDROCK, len(texts))
            if injected is not None:
                raise _AwsError(_BEDROCK_STATUS[injected], injected, f"injected fault: {injected}")
        vectors = await asyncio.to_thread(embeddings.embed, texts, dimensions, normalize)
        tokens = sum(embeddings.token_count(t) for t in texts)
        if shape == "cohere":
            answer: dict[str, Any] = {
                "id": f"local-{self._server.rng.getrandbits(64):016x}",
                "embeddings": vectors,
                "texts": texts,
                "response_type": "embeddings_floats",
            }
        else:
            answer = {"embedding": vectors[0], "inputTextTokenCount": tokens}
            if shape == "titan-v2":
                answer["embeddingsByType"] = {"float": vectors[0]}
        return answer, len(texts), tokens

    @staticmethod
    def _texts(shape: str, params: dict[str, Any]) -> tuple[list[str], int, bool]:
        """The request's texts, the dimensions asked and whether to normalize; the errors
        Bedrock gives for a request of that model's shape."""
        if shape == "cohere":
            texts = params.get("texts")
            if (
                not isinstance(texts, list)
                or not texts
                or not all(isinstance(t, str) and t for t in texts)
            ):
                raise _AwsError(400, "ValidationException", "Malformed input request: texts")
            if len(texts) > MAX_COHERE_TEXTS:
                raise _AwsError(
                    400,
                    "ValidationException",
                    f"Malformed input request: #/texts: expected maximum item count: "
                    f"{MAX_COHERE_TEXTS}, found: {len(texts)}",
                )
            return texts, embeddings.DIMENSION, True
        text = params.get("inputText")
        if not isinstance(text, str) or not text.strip():
            raise _AwsError(
                400, "ValidationException", "Malformed input request: inputText is required"
            )
        if len(text) > MAX_TITAN_CHARS:
            raise _AwsError(
                400,
                "ValidationException",
                f"Malformed input request: #/inputText: expected maxLength: {MAX_TITAN_CHARS}, "
                f"actual: {len(text)}",
            )
        if shape == "titan-v1":
            return [text], embeddings.DIMENSION, True
        dimensions = params.get("dimensions", 1024)
        if dimensions not in TITAN_DIMENSIONS:
            raise _AwsError(
                400,
                "ValidationException",
                f"Malformed input request: #/dimensions: {dimensions} is not a valid enum value",
            )
        if dimensions > embeddings.DIMENSION:
            raise _AwsError(
                400,
                "ValidationException",
                f"the local stand-in's model has {embeddings.DIMENSION} dimensions: ask for "
                f"dimensions = 256 (Titan's 512 and 1024 are served only by Amazon Bedrock)",
            )
        return [text], int(dimensions), bool(params.get("normalize", True))


class _Comprehend:
    """Comprehend's DetectSentiment and BatchDetectSentiment (JSON 1.1)."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server
        self._sentiment = SentimentModel()

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith(SAGEMAKER_TARGET):  # SageMaker's control plane shares the path
            return await self._server.sagemaker_batch.handle(
                request, target.removeprefix(SAGEMAKER_TARGET)
            )
        operation = target.removeprefix(_TARGET_PREFIX)
        try:
            _require_sigv4(request)
            if operation not in ("DetectSentiment", "BatchDetectSentiment"):
                raise _AwsError(400, "UnknownOperationException", f"Unknown operation {target}")
            try:
                params = json.loads(await request.read() or b"{}")
            except ValueError:
                raise _AwsError(400, "SerializationException", "Request body is not JSON") from None
            if operation == "DetectSentiment":
                body, rows = await self._detect_sentiment(params)
            else:
                body, rows = await self._batch_detect_sentiment(params)
        except _AwsError as exc:
            self._server.record(operation, COMPREHEND, 0, exc.code)
            return _json_error(exc)
        self._server.record(operation, COMPREHEND, rows, None)
        return web.Response(body=json.dumps(body).encode(), content_type=_JSON_11)

    def _check_language(self, params: dict[str, Any]) -> None:
        language = params.get("LanguageCode")
        if language not in COMPREHEND_LANGUAGES:
            raise _AwsError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{language}' at 'languageCode' failed to "
                f"satisfy constraint: Member must satisfy enum value set: "
                f"[{', '.join(sorted(COMPREHEND_LANGUAGES))}]",
            )
        if language not in SUPPORTED_LANGUAGES:
            raise _AwsError(
                400,
                "UnsupportedLanguageException",
                f"The language code '{language}' is valid for Amazon Comprehend, but the local "
                "sentiment model of cdc-scorer is English-only (LanguageCode 'en').",
            )

    async def _detect_sentiment(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        text = params.get("Text")
        if not isinstance(text, str) or not text:
            raise _AwsError(
                400,
                "InvalidRequestException",
                "Text must be a non-empty string",
                Reason="INVALID_DOCUMENT",
            )
        self._check_language(params)
        if len(text.encode()) > MAX_COMPREHEND_DOC_BYTES:
            raise _AwsError(
                400,
                "TextSizeLimitExceededException",
                f"Input text size exceeds limit. Max length of request text allowed is "
                f"{MAX_COMPREHEND_DOC_BYTES} bytes while in this request the text size is "
                f"{len(text.encode())} bytes",
            )
        await self._comprehend_faults(1)
        return self._sentiment.detect(text).as_comprehend(), 1

    async def _batch_detect_sentiment(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        texts = params.get("TextList")
        if not isinstance(texts, list) or not texts:
            raise _AwsError(
                400,
                "InvalidRequestException",
                "TextList must be a non-empty list of strings",
                Reason="INVALID_DOCUMENT",
            )
        if len(texts) > MAX_COMPREHEND_BATCH:
            raise _AwsError(
                400,
                "BatchSizeLimitExceededException",
                f"The number of documents in the request ({len(texts)}) exceeds the limit of "
                f"{MAX_COMPREHEND_BATCH}.",
            )
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                raise _AwsError(
                    400,
                    "InvalidRequestException",
                    f"TextList[{index}] must be a non-empty string",
                    Reason="INVALID_DOCUMENT",
                )
        self._check_language(params)
        await self._comprehend_faults(len(texts))
        model_error_rate = self._server.faults(COMPREHEND).model_error_rate
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            size = len(text.encode())
            if size > MAX_COMPREHEND_DOC_BYTES:
                errors.append(
                    {
                        "Index": index,
                        "ErrorCode": "TEXT_SIZE_LIMIT_EXCEEDED",
                        "ErrorMessage": f"Document size {size} bytes exceeds the limit of "
                        f"{MAX_COMPREHEND_DOC_BYTES} bytes",
                    }
                )
            elif model_error_rate and self._server.rng.random() < model_error_rate:
                errors.append(
                    {
                        "Index": index,
                        "ErrorCode": "INTERNAL_SERVER_ERROR",
                        "ErrorMessage": "injected fault: document could not be processed",
                    }
                )
            else:
                results.append({"Index": index, **self._sentiment.detect(text).as_comprehend()})
        return {"ResultList": results, "ErrorList": errors}, len(texts)

    async def _comprehend_faults(self, rows: int) -> None:
        injected = await self._server.inject(COMPREHEND, rows)
        if injected == "ThrottlingException":
            raise _AwsError(400, injected, "Rate exceeded")
        if injected == "ServiceUnavailableException":
            raise _AwsError(503, injected, "Service unavailable, injected fault")
        if injected == "InternalServerException":
            raise _AwsError(500, injected, "Internal server error, injected fault")


def score_churn_csv(model: ChurnModel, records: list[list[str]], form: str) -> bytes:
    """The churn model's CSV answer to ``records``, one line each in ``form``; a record it
    cannot read is the container's 400 for the whole request."""
    out = io.StringIO()
    for number, record in enumerate(records, start=1):
        try:
            p_true = model.probability(record)
        except RecordError as exc:
            raise _ContainerError(400, f"record {number}: {exc}") from None
        label = "True." if p_true >= 0.5 else "False."
        if form == "predicted_label":
            out.write(f"{label}\n")
        elif form == "predicted_label,probability":
            out.write(f"{label},{max(p_true, 1 - p_true)!r}\n")
        else:
            out.write(f'"[{1 - p_true!r}, {p_true!r}]"\n')
    return out.getvalue().encode()


class _ContainerError(Exception):
    """What a model container answers with a plain HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _csv_records(body: bytes, content_type: str) -> list[list[str]]:
    if content_type != "text/csv":
        raise _ContainerError(415, f"unsupported content type {content_type!r}; use text/csv")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _ContainerError(400, f"body is not UTF-8: {exc}") from None
    try:
        return [record for record in csv.reader(io.StringIO(text)) if record]
    except csv.Error as exc:
        raise _ContainerError(400, f"malformed CSV: {exc}") from None


def _require_sigv4(request: web.Request) -> None:
    # Signatures are not verified (documented divergence), but an unsigned call is refused.
    if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
        raise _AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")


def _model_error(endpoint: str, original_status: int, original_message: str) -> _AwsError:
    log_stream = f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{endpoint}"
    return _AwsError(
        424,
        "ModelError",
        f"Received client error ({original_status}) from primary with message "
        f'"{original_message}". See {log_stream} for more information.',
        OriginalStatusCode=original_status,
        OriginalMessage=original_message,
        LogStreamArn=log_stream,
    )


def _sagemaker_fault(code: str) -> _AwsError:
    status = {
        "ThrottlingException": 400,
        "ModelNotReadyException": 429,
        "InternalFailure": 500,
        "ServiceUnavailable": 503,
    }[code]
    return _AwsError(status, code, f"injected fault: {code}")


def _sagemaker_error(exc: _AwsError) -> web.Response:
    body = {"ErrorCode": exc.code, "Message": exc.message, **exc.extra}
    return web.Response(
        status=exc.status,
        body=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "x-amzn-ErrorType": f"{exc.code}:{_SAGEMAKER_ERROR_NS}",
        },
    )


# Cross-region inference profiles: "us.amazon.nova-lite-v1:0" is the model behind it.
_PROFILES = {"us", "eu", "apac", "global", "us-gov", "ca", "jp", "au"}


def _break(answer: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The answer with a property out of its schema (an enum's value, else a wrong type)."""
    broken = dict(answer)
    for name, prop in dict(schema.get("properties", {})).items():
        if prop.get("enum"):
            broken[name] = "something else entirely"
            return broken
    for name in dict(schema.get("properties", {})):
        broken[name] = {"not": "a value of its type"}
        return broken
    return broken


def _bedrock_error(exc: _AwsError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=json.dumps({"message": exc.message}).encode(),
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": exc.code},
    )


def _json_error(exc: _AwsError) -> web.Response:
    body = {"__type": exc.code, "Message": exc.message, **exc.extra}
    return web.Response(status=exc.status, body=json.dumps(body).encode(), content_type=_JSON_11)


def parse_endpoint_spec(spec: str) -> tuple[str, str]:
    """``NAME`` or ``NAME=OUTPUT_FORM`` (the CLI's ``--endpoint``)."""
    name, _, form = spec.partition("=")
    form = form or "predicted_label,probability"
    if not name or form not in OUTPUT_FORMS:
        raise ValueError(
            f"--endpoint {spec!r}: expected NAME or NAME=FORM with FORM one of "
            f"{', '.join(OUTPUT_FORMS)}"
        )
    return name, form


async def serve_forever(server: ModelServer, host: str, port: int) -> None:
    url = await server.start(host, port)
    print(f"local model endpoints listening on {url} (AWS_ENDPOINT_URL={url})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


class BackgroundModelServer:
    """A :class:`ModelServer` on its own event loop in a daemon thread.

    For callers that block (boto3, the demo's main thread, tests of the daemon as a subprocess).
    """

    def __init__(self, config: ModelServerConfig | None = None) -> None:
        self.server = ModelServer(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="local-model-endpoints", daemon=True
        )

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._thread.start()
        return self._call(self.server.start(host, port))

    @property
    def url(self) -> str:
        return self.server.url

    def set_faults(self, changes: dict[str, Any]) -> None:
        self._call(_in_loop(lambda: self.server.set_faults(changes)))

    def go_down(self) -> None:
        self._call(self.server.go_down())

    def go_up(self) -> None:
        self._call(self.server.go_up())

    def stats(self) -> dict[str, Any]:
        return self._call(_in_loop(self.server.stats))

    def reset_stats(self) -> None:
        self._call(_in_loop(self.server.reset_stats))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self.server.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _in_loop(function: Callable[[], T]) -> T:
    return function()
