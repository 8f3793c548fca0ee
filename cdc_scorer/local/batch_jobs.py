"""Bedrock batch inference's control plane, served locally over the same models as the runtime
(``endpoints.py``), reading its input from and writing its output to a real S3 protocol
server (``s3.py``).

``CreateModelInvocationJob`` (rest-json ``POST /model-invocation-job``), ``GetModelInvocationJob``,
``StopModelInvocationJob``, ``ListModelInvocationJobs``, as the service documents them:

- a ``clientRequestToken`` seen before returns that job (an idempotent retry); a job name
  taken by another token is a ``ConflictException``; a role of another account than the
  local one (123456789012) is an ``AccessDeniedException`` (iam:PassRole);
- states Submitted → Validating → Scheduled → InProgress → Completed, PartiallyCompleted (some
  records answered with an error), Failed (the input refused, or an injected failure), Stopping
  → Stopped, Expired (not done within ``timeoutDurationInHours``: what it did is written); each
  step takes ``batch_step_s`` (a fault setting: a slow job);
- the input is JSONL of ``{"recordId", "modelInput"}``, the body InvokeModel (or Converse, with
  ``modelInvocationType = "Converse"``) takes; fewer than MIN_RECORDS records fail validation,
  more than MAX_RECORDS too;
- the output, under ``<output s3Uri>/<job id>/``: ``<input file name>.out`` with one line per
  record, ``{"recordId", "modelInput", "modelOutput"}`` or ``{"recordId", "modelInput",
  "error": {"errorCode", "errorMessage"}}``, and ``manifest.json.out`` with the counts;
- faults (``/_local/faults``, the bedrock section): ``batch_record_error_rate`` (a record
  answered with an internal error), ``batch_record_refusal_rate`` (a record refused, 400),
  ``batch_job_failure_rate`` (a job failing while in progress, after its first half),
  ``batch_step_s``, ``batch_hour_s`` (how long an hour of the timeout lasts: a job expiring).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import json
import multiprocessing
import os
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

if TYPE_CHECKING:
    from cdc_scorer.local.endpoints import ModelServer

MIN_RECORDS = 100  # Bedrock's "minimum number of records per batch inference job"
MAX_RECORDS = 50_000  # its default "records per batch inference job" quota
MAX_JOBS_IN_PROGRESS = 20  # its default quota of submitted + in-progress jobs per model
TERMINAL = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
_ROLE = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
_TOKEN = re.compile(r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}")


class BatchError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    if not uri.startswith("s3://"):
        raise BatchError(400, "ValidationException", f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


_EXPIRED = "the job did not complete within its timeoutDurationInHours"


@dataclass
class _Job:
    arn: str
    name: str
    token: str
    model_id: str
    role: str
    invocation_type: str
    input_uri: str
    output_uri: str
    timeout_hours: int
    status: str = "Submitted"
    message: str | None = None
    submitted: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)
    ended: str | None = None
    total: int = 0
    processed: int = 0
    success: int = 0
    errors: int = 0
    stop: bool = False
    expires: float = 0.0  # monotonic time its timeoutDurationInHours ends at

    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    @property
    def job_id(self) -> str:
        return self.arn.rsplit("/", 1)[1]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.name,
            "modelId": self.model_id,
            "clientRequestToken": self.token,
            "roleArn": self.role,
            "status": self.status,
            "submitTime": self.submitted,
            "lastModifiedTime": self.modified,
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": self.input_uri}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": self.output_uri}},
            "timeoutDurationInHours": self.timeout_hours,
            "modelInvocationType": self.invocation_type,
            "totalRecordCount": self.total,
            "processedRecordCount": self.processed,
            "successRecordCount": self.success,
            "errorRecordCount": self.errors,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.ended is not None:
            out["endTime"] = self.ended
        return out

    def set(self, status: str, message: str | None = None) -> None:
        self.status, self.modified = status, _now()
        if message is not None:
            self.message = message
        if status in TERMINAL:
            self.ended = self.modified


class BedrockBatch:
    """The jobs of one local Bedrock, run as tasks of the server's event loop."""

    def __init__(self, server: ModelServer, s3_url: str | None) -> None:
        self._server = server
        self._s3_url = s3_url
        self._s3: Any = None
        self.jobs: dict[str, _Job] = {}  # by ARN
        self._tasks: set[asyncio.Task[None]] = set()
        self.create_calls = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/model-invocation-job", self.create)
        app.router.add_get("/model-invocation-job/{job}", self.get)
        app.router.add_post("/model-invocation-job/{job}/stop", self.stop)
        app.router.add_get("/model-invocation-jobs", self.list_jobs)

    def stats(self) -> dict[str, Any]:
        return {
            "create_calls": self.create_calls,
            "jobs": len(self.jobs),
            "by_state": dict(Counter(j.status for j in self.jobs.values())),
            "records": sum(j.total for j in self.jobs.values()),
        }

    def client(self) -> Any:
        if self._s3 is None:
            if self._s3_url is None:
                raise BatchError(
                    400,
                    "ValidationException",
                    "the local Bedrock has no S3: start serve-models with --s3 (or without "
                    "--no-s3)",
                )
            from cdc_scorer.local.s3 import s3_client

            self._s3 = s3_client(self._s3_url)
        return self._s3

    # ------------------------------------------------------------------ the API
    async def create(self, request: web.Request) -> web.Response:
        self.create_calls += 1
        try:
            _signed(request)
            params = await _json(request)
            job = await self._create(params)
        except BatchError as exc:
            return _error(exc)
        return web.json_response({"jobArn": job.arn})

    async def _create(self, params: dict[str, Any]) -> _Job:
        token = str(params.get("clientRequestToken") or uuid.uuid4())
        same = next((j for j in self.jobs.values() if j.token == token), None)
        if same is not None:
            return same  # a retried request: the job it made
        name = str(params.get("jobName", ""))
        problems = []
        if not _NAME.fullmatch(name):
            problems.append(f"jobName {name!r} does not match {_NAME.pattern}")
        if not _TOKEN.fullmatch(token):
            problems.append(f"clientRequestToken does not match {_TOKEN.pattern}")
        role = str(params.get("roleArn", ""))
        if not _ROLE.fullmatch(role):
            problems.append(f"roleArn {role!r} is not an IAM role ARN")
        model_id = str(params.get("modelId", ""))
        invocation = str(params.get("modelInvocationType") or "InvokeModel")
        try:
            input_uri = params["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
            output_uri = params["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        except (KeyError, TypeError):
            problems.append(
                "inputDataConfig.s3InputDataConfig.s3Uri and "
                "outputDataConfig.s3OutputDataConfig.s3Uri are required"
            )
            input_uri = output_uri = ""
        hours = int(params.get("timeoutDurationInHours") or 24)
        if not 24 <= hours <= 168:
            problems.append("timeoutDurationInHours must be between 24 and 168")
        if problems:
            raise BatchError(400, "ValidationException", "; ".join(problems))
        from cdc_scorer.local.endpoints import ACCOUNT_ID

        role_account = role.split(":")[4]
        if role_account != ACCOUNT_ID:  # a role of another account is not passed to Bedrock
            raise BatchError(
                403,
                "AccessDeniedException",
                f"User: arn:aws:iam::{ACCOUNT_ID}:user/local is not authorized to perform: "
                f"iam:PassRole on resource: {role}",
            )
        if any(j.name == name for j in self.jobs.values()):
            raise BatchError(409, "ConflictException", f"a job named {name} already exists")
        running = [
            j for j in self.jobs.values() if j.model_id == model_id and j.status not in TERMINAL
        ]
        if len(running) >= MAX_JOBS_IN_PROGRESS:
            raise BatchError(
                400,
                "ServiceQuotaExceededException",
                f"at most {MAX_JOBS_IN_PROGRESS} batch inference jobs of {model_id} may be "
                "submitted or in progress at once",
            )
        for uri in (input_uri, output_uri):
            bucket, _ = split_s3(uri)
            await asyncio.to_thread(self._bucket_exists, bucket)
        job_id = uuid.uuid4().hex[:12]
        from cdc_scorer.local.endpoints import ACCOUNT_ID, REGION

        arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT_ID}:model-invocation-job/{job_id}"
        job = _Job(arn, name, token, model_id, role, invocation, input_uri, output_uri, hours)
        self.jobs[arn] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def _bucket_exists(self, bucket: str) -> None:
        try:
            self.client().head_bucket(Bucket=bucket)
        except Exception as exc:
            raise BatchError(
                400, "ValidationException", f"S3 bucket {bucket} cannot be read: {exc}"
            ) from None

    def _find(self, request: web.Request) -> _Job:
        ident = unquote(request.match_info["job"])
        job = self.jobs.get(ident) or next(
            (j for j in self.jobs.values() if ident in (j.name, j.job_id)), None
        )
        if job is None:
            raise BatchError(404, "ResourceNotFoundException", f"job {ident} not found")
        return job

    async def get(self, request: web.Request) -> web.Response:
        try:
            _signed(request)
            job = self._find(request)
        except BatchError as exc:
            return _error(exc)
        return web.json_response(job.describe())

    async def stop(self, request: web.Request) -> web.Response:
        try:
            _signed(request)
            job = self._find(request)
            if job.status in TERMINAL:
                raise BatchError(
                    400, "ValidationException", f"job {job.job_id} is {job.status}: not stoppable"
                )
        except BatchError as exc:
            return _error(exc)
        job.stop = True
        job.set("Stopping")
        return web.json_response({})

    async def list_jobs(self, request: web.Request) -> web.Response:
        status = request.query.get("statusEquals")
        name = request.query.get("nameContains")
        summaries = [
            {
                k: v
                for k, v in j.describe().items()
                if k
                in (
                    "jobArn",
                    "jobName",
                    "modelId",
                    "status",
                    "submitTime",
                    "roleArn",
                    "inputDataConfig",
                    "outputDataConfig",
                    "lastModifiedTime",
                )
            }
            for j in self.jobs.values()
            if (status is None or j.status == status) and (name is None or name in j.name)
        ]
        return web.json_response({"invocationJobSummaries": summaries})

    # ------------------------------------------------------------------ a job's life
    async def _run(self, job: _Job) -> None:
        faults = self._server.faults("bedrock")
        step = faults.batch_step_s
        job.expires = time.monotonic() + job.timeout_hours * faults.batch_hour_s
        try:
            for state in ("Validating", "Scheduled"):
                await asyncio.sleep(step)
                if job.stop:
                    job.set("Stopped")
                    return
                if job.expired():
                    await asyncio.to_thread(self._write, job, [], 0, 0)
                    job.set("Expired", _EXPIRED)
                    return
                job.set(state)
                if state == "Validating":
                    files = await asyncio.to_thread(self._inputs, job)
                    total = sum(len(records) for _, records in files)
                    job.total = total
                    if total < MIN_RECORDS or total > MAX_RECORDS:
                        job.set(
                            "Failed",
                            f"the input has {total} records: a job takes from {MIN_RECORDS} "
                            f"to {MAX_RECORDS}",
                        )
                        return
            await asyncio.sleep(step)
            job.set("InProgress")
            await self._process(job, files)
        except BatchError as exc:
            job.set("Failed", exc.message)
        except Exception as exc:  # the local service's own failure: the job says so
            job.set("Failed", f"internal error: {exc!r}")

    def _inputs(self, job: _Job) -> list[tuple[str, list[dict[str, Any]]]]:
        """The input files (name, records) under the job's input URI."""
        bucket, key = split_s3(job.input_uri)
        s3 = self.client()
        keys = (
            [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])]
            if key.endswith("/") or not key
            else [key]
        )
        files = []
        for name in keys:
            if not name.endswith(".jsonl"):
                continue
            try:
                body = s3.get_object(Bucket=bucket, Key=name)["Body"].read().decode("utf-8")
            except Exception as exc:
                raise BatchError(400, "ValidationException", f"{name}: {exc}") from None
            records = []
            for number, line in enumerate(body.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    record["modelInput"]
                except (ValueError, KeyError, TypeError):
                    raise BatchError(
                        400, "ValidationException", f"{name} line {number} is not a record"
                    ) from None
                records.append(record)
            files.append((name.rsplit("/", 1)[-1], records))
        if not files:
            raise BatchError(400, "ValidationException", f"no .jsonl input at {job.input_uri}")
        return files

    async def _process(self, job: _Job, files: list[tuple[str, list[dict[str, Any]]]]) -> None:
        faults = self._server.faults("bedrock")
        rng = self._server.rng
        fail_after = job.total // 2 if rng.random() < faults.batch_job_failure_rate else None
        tokens_in = tokens_out = 0
        outputs: list[tuple[str, list[str]]] = []
        for name, records in files:
            lines: list[str] = []
            outputs.append((name, lines))
            for record in records:
                if job.stop or job.expired():
                    break
                if fail_after is not None and job.processed >= fail_after:
                    await asyncio.to_thread(self._write, job, outputs, tokens_in, tokens_out)
                    job.set("Failed", "injected fault: the job failed while in progress")
                    return
                out: dict[str, Any] = {
                    "recordId": record.get("recordId"),
                    "modelInput": record["modelInput"],
                }
                draw = rng.random()
                if draw < faults.batch_record_error_rate:
                    out["error"] = {"errorCode": 500, "errorMessage": "injected fault: internal"}
                elif draw - faults.batch_record_error_rate < faults.batch_record_refusal_rate:
                    out["error"] = {
                        "errorCode": 400,
                        "errorMessage": "injected fault: the model refused this input",
                    }
                else:
                    try:
                        answer, used_in, used_out = await self._answer(job, record["modelInput"])
                        out["modelOutput"] = answer
                        tokens_in, tokens_out = tokens_in + used_in, tokens_out + used_out
                    except Exception as exc:
                        status = getattr(exc, "status", 500)
                        message = getattr(exc, "message", repr(exc))
                        out["error"] = {"errorCode": status, "errorMessage": message}
                lines.append(json.dumps(out))
                job.processed += 1
                if "error" in out:
                    job.errors += 1
                else:
                    job.success += 1
                if job.processed % 50 == 0:
                    job.modified = _now()
                    await asyncio.sleep(0)
        await asyncio.to_thread(self._write, job, outputs, tokens_in, tokens_out)
        if job.stop:
            job.set("Stopped")
        elif job.processed < job.total:  # (what it did is written, as AWS does)
            job.set("Expired", _EXPIRED)
        else:
            job.set("PartiallyCompleted" if job.errors else "Completed")

    async def _answer(self, job: _Job, body: Any) -> tuple[dict[str, Any], int, int]:
        runtime = self._server.bedrock_runtime
        if job.invocation_type == "Converse":
            answer = await runtime.converse_answer(job.model_id, body, faults=False)
            usage = answer.get("usage", {})
            return answer, int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0))
        result, _texts, tokens = await runtime.embedding_answer(job.model_id, body, faults=False)
        return result, tokens, 0

    def _write(
        self, job: _Job, outputs: list[tuple[str, list[str]]], tokens_in: int, tokens_out: int
    ) -> None:
        bucket, prefix = split_s3(job.output_uri.rstrip("/") + "/")
        s3 = self.client()
        for name, lines in outputs:
            body = "".join(f"{line}\n" for line in lines).encode()
            s3.put_object(Bucket=bucket, Key=f"{prefix}{job.job_id}/{name}.out", Body=body)
        manifest = {
            "totalRecordCount": job.total,
            "processedRecordCount": job.processed,
            "successRecordCount": job.success,
            "errorRecordCount": job.errors,
            "inputTokenCount": tokens_in,
            "outputTokenCount": tokens_out,
        }
        s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}{job.job_id}/manifest.json.out",
            Body=json.dumps(manifest).encode(),
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _signed(request: web.Request) -> None:
    if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
        raise BatchError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        params = json.loads(await request.read() or b"{}")
    except ValueError:
        raise BatchError(400, "ValidationException", "Malformed request") from None
    if not isinstance(params, dict):
        raise BatchError(400, "ValidationException", "Malformed request")
    return params


def _error(exc: BatchError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=json.dumps({"message": exc.message}).encode(),
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": exc.code},
    )


# ---------------------------------------------------------------------- SageMaker
SAGEMAKER_TARGET = "SageMaker."
_TRANSFORM_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_TRANSFORM_TERMINAL = ("Completed", "Failed", "Stopped")


def csv_filter(expression: str | None, fields: list[str]) -> list[str]:
    """SageMaker's JSONPath subset on a CSV record (``DataProcessing``): ``$`` (all),
    ``$[i]``, ``$[i,j,...]``, ``$[a:b]`` and lists of those, indexes from 0, negative from the
    end."""
    if expression is None or expression.strip() == "$":
        return fields
    match = re.fullmatch(r"\$\[(.+)\]", expression.strip())
    if match is None:
        raise BatchError(400, "ValidationException", f"unsupported filter {expression!r}")
    out: list[str] = []
    for part in match.group(1).split(","):
        part = part.strip()
        if ":" in part:
            start, _, stop = part.partition(":")
            out += fields[slice(int(start) if start else None, int(stop) if stop else None)]
        else:
            out.append(fields[int(part)])
    return out


@dataclass
class _Transform:
    name: str
    arn: str
    model: str
    endpoint: str  # whose model answers
    params: dict[str, Any]
    status: str = "InProgress"
    failure: str | None = None
    created: str = field(default_factory=_now)
    ended: str | None = None
    stop: bool = False
    records: int = 0

    def set(self, status: str, failure: str | None = None) -> None:
        self.status = status
        if failure is not None:
            self.failure = failure
        if status in _TRANSFORM_TERMINAL:
            self.ended = _now()

    def describe(self) -> dict[str, Any]:
        out = {
            "TransformJobName": self.name,
            "TransformJobArn": self.arn,
            "TransformJobStatus": self.status,
            "ModelName": self.model,
            "CreationTime": self.created,
            **{
                k: v
                for k, v in self.params.items()
                if k
                in (
                    "TransformInput",
                    "TransformOutput",
                    "TransformResources",
                    "DataProcessing",
                    "BatchStrategy",
                    "MaxPayloadInMB",
                )
            },
        }
        if self.failure is not None:
            out["FailureReason"] = self.failure
        if self.ended is not None:
            out["TransformEndTime"] = self.ended
        return out


class SageMakerBatch:
    """SageMaker's control plane for Batch Transform (JSON 1.1, ``X-Amz-Target:
    SageMaker.*``): ``DescribeEndpoint`` and ``DescribeEndpointConfig`` of the local endpoints
    (each endpoint's model is ``<endpoint>-model``), ``CreateTransformJob`` (a name taken is
    ``ResourceInUse``: SageMaker has no idempotency token, the name is the job's identity),
    ``DescribeTransformJob``, ``StopTransformJob``. A job reads CSV lines from S3
    (``SplitType = Line``), applies ``InputFilter`` to each record, scores mini-batches of
    them with the endpoint's model, joins each answer to its input record with ``JoinSource =
    Input``, applies ``OutputFilter`` and writes ``<S3OutputPath>/<input file>.out``; a record
    the model refuses fails the job (``ClientError``), as SageMaker does."""

    def __init__(self, server: ModelServer, batch: BedrockBatch) -> None:
        self._server = server
        self._s3 = batch  # its S3 client
        self.jobs: dict[str, _Transform] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.create_calls = 0
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "create_calls": self.create_calls,
            "jobs": len(self.jobs),
            "by_state": dict(Counter(j.status for j in self.jobs.values())),
            "records": sum(j.records for j in self.jobs.values()),
        }

    async def handle(self, request: web.Request, operation: str) -> web.Response:
        try:
            _signed(request)
            params = await _json(request)
            handler = {
                "DescribeEndpoint": self._describe_endpoint,
                "DescribeEndpointConfig": self._describe_endpoint_config,
                "CreateTransformJob": self._create,
                "DescribeTransformJob": self._describe,
                "StopTransformJob": self._stop,
            }.get(operation)
            if handler is None:
                raise BatchError(400, "UnknownOperationException", f"unknown {operation}")
            answer = await handler(params)
        except BatchError as exc:
            body = {"__type": exc.code, "Message": exc.message}
            return web.Response(
                status=exc.status,
                body=json.dumps(body).encode(),
                content_type="application/x-amz-json-1.1",
            )
        return web.Response(
            body=json.dumps(answer).encode(), content_type="application/x-amz-json-1.1"
        )

    def _workers(self) -> concurrent.futures.ProcessPoolExecutor:
        """The transform "instances": a process of their own (spawned, not forked from a
        process with threads), so a job's scoring never holds the endpoints' interpreter."""
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_background_priority,
            )
        return self._pool

    def _endpoint(self, name: str) -> str:
        if name not in self._server.config.endpoints:
            raise BatchError(400, "ValidationException", f'Could not find endpoint "{name}".')
        return name

    async def _describe_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        from cdc_scorer.local.endpoints import ACCOUNT_ID, REGION

        name = self._endpoint(str(params.get("EndpointName", "")))
        return {
            "EndpointName": name,
            "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:endpoint/{name.lower()}",
            "EndpointConfigName": f"{name}-config",
            "EndpointStatus": "InService",
            "CreationTime": _now(),
            "LastModifiedTime": _now(),
        }

    async def _describe_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        from cdc_scorer.local.endpoints import ACCOUNT_ID, REGION

        config = str(params.get("EndpointConfigName", ""))
        name = self._endpoint(config.removesuffix("-config"))
        return {
            "EndpointConfigName": config,
            "EndpointConfigArn": (
                f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:endpoint-config/{config.lower()}"
            ),
            "ProductionVariants": [
                {
                    "VariantName": self._server.config.variant,
                    "ModelName": f"{name}-model",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
            "CreationTime": _now(),
        }

    async def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        from cdc_scorer.local.endpoints import ACCOUNT_ID, REGION

        self.create_calls += 1
        name = str(params.get("TransformJobName", ""))
        if not _TRANSFORM_NAME.fullmatch(name):
            raise BatchError(400, "ValidationException", f"TransformJobName {name!r} is invalid")
        if name in self.jobs:
            raise BatchError(
                400,
                "ResourceInUse",
                "Job name must be unique within an AWS account and region, and a job with "
                f"this name already exists ({self.jobs[name].arn})",
            )
        model = str(params.get("ModelName", ""))
        endpoint = model.removesuffix("-model")
        if not model.endswith("-model") or endpoint not in self._server.config.endpoints:
            raise BatchError(400, "ValidationException", f'Could not find model "{model}".')
        try:
            source = params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
            output = params["TransformOutput"]["S3OutputPath"]
            resources = params["TransformResources"]
            resources["InstanceType"]
        except (KeyError, TypeError):
            raise BatchError(
                400,
                "ValidationException",
                "TransformInput.DataSource.S3DataSource.S3Uri, TransformOutput.S3OutputPath and "
                "TransformResources.InstanceType are required",
            ) from None
        for uri in (source, output):
            await asyncio.to_thread(self._s3._bucket_exists, split_s3(uri)[0])
        arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT_ID}:transform-job/{name.lower()}"
        job = _Transform(name, arn, model, endpoint, params)
        self.jobs[name] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"TransformJobArn": arn}

    def _job(self, params: dict[str, Any]) -> _Transform:
        name = str(params.get("TransformJobName", ""))
        job = self.jobs.get(name)
        if job is None:
            raise BatchError(400, "ValidationException", f"Could not find job {name!r}.")
        return job

    async def _describe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._job(params).describe()

    async def _stop(self, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(params)
        if job.status == "InProgress":
            job.stop = True
            job.set("Stopping")
        return {}

    async def _run(self, job: _Transform) -> None:
        step = self._server.faults("sagemaker").batch_step_s
        try:
            await asyncio.sleep(step)  # the instances start
            if job.stop:
                job.set("Stopped")
                return
            files = await asyncio.to_thread(self._inputs, job)
            await asyncio.sleep(step)
            outputs = []
            processing = job.params.get("DataProcessing") or {}
            form = self._server.config.endpoints[job.endpoint]
            payload = int(job.params.get("MaxPayloadInMB") or 6) * 1_000_000
            for name, lines in files:
                joined: list[str] = []
                # MultiRecord: mini-batches of lines up to MaxPayloadInMB, each scored in one
                # call of the model (in a thread: the endpoints keep answering meanwhile).
                batch: list[str] = []
                size = 0
                for line in [*lines, None]:
                    if line is not None and size + len(line) < payload and len(batch) < 1000:
                        batch.append(line)
                        size += len(line) + 1
                        continue
                    if batch:
                        try:
                            joined += await asyncio.get_running_loop().run_in_executor(
                                self._workers(), transform_mini_batch, batch, processing, form
                            )
                        except Exception as exc:  # the container's 400: the job fails
                            job.set(
                                "Failed",
                                "ClientError: the model container answered 400 for a "
                                f"mini-batch: {exc}",
                            )
                            return
                        job.records += len(batch)
                        if job.stop:
                            job.set("Stopped")
                            return
                    batch, size = ([line], len(line) + 1) if line is not None else ([], 0)
                outputs.append((name, joined))
            await asyncio.to_thread(self._write, job, outputs)
            job.set("Completed")
        except BatchError as exc:
            job.set("Failed", exc.message)
        except Exception as exc:
            job.set("Failed", f"InternalServerError: {exc!r}")

    def _inputs(self, job: _Transform) -> list[tuple[str, list[str]]]:
        source = job.params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = split_s3(source)
        s3 = self._s3.client()
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if not listed:
            raise BatchError(400, "ValidationException", f"no input at {source}")
        return [
            (
                obj["Key"].rsplit("/", 1)[-1],
                [
                    line
                    for line in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
                    .read()
                    .decode("utf-8")
                    .splitlines()
                    if line.strip()
                ],
            )
            for obj in listed
        ]

    def _write(self, job: _Transform, outputs: list[tuple[str, list[str]]]) -> None:
        bucket, prefix = split_s3(job.params["TransformOutput"]["S3OutputPath"].rstrip("/") + "/")
        s3 = self._s3.client()
        for name, lines in outputs:
            s3.put_object(Bucket=bucket, Key=f"{prefix}{name}.out", Body="".join(lines).encode())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:  # its worker ends now, not when the interpreter does
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


_WORKER_MODEL: Any = None
# The local stand-ins of what runs elsewhere on AWS (a transform job's instances, S3) yield the
# shared cores to the scorer, its database and the endpoints it calls.
BACKGROUND_NICE = 10


def _background_priority() -> None:
    """A transform worker's start: a lower priority, and an end with its parent (a
    serve-models stopped by a signal does not leave it behind)."""
    os.nice(BACKGROUND_NICE)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def transform_mini_batch(lines: list[str], processing: dict[str, Any], form: str) -> list[str]:
    """One mini-batch of a transform job, in a worker process: each record filtered, scored
    by the churn model, joined to its input and filtered again, as CSV lines."""
    global _WORKER_MODEL
    from cdc_scorer.local.churn_model import ChurnModel
    from cdc_scorer.local.endpoints import score_churn_csv

    if _WORKER_MODEL is None:
        _WORKER_MODEL = ChurnModel.load()
    inputs = [next(csv.reader(io.StringIO(line))) for line in lines]
    records = [csv_filter(processing.get("InputFilter"), fields) for fields in inputs]
    answers = score_churn_csv(_WORKER_MODEL, records, form).decode().splitlines()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for fields, answer in zip(inputs, answers, strict=True):
        answer_fields = next(csv.reader(io.StringIO(answer)))
        joined = (
            [*fields, *answer_fields] if processing.get("JoinSource") == "Input" else answer_fields
        )
        writer.writerow(csv_filter(processing.get("OutputFilter"), joined))
    return out.getvalue().splitlines(keepends=True)
