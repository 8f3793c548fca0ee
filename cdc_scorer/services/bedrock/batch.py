"""Bedrock batch inference: a backfill's jobs (``core/backfill.py``) as
``CreateModelInvocationJob`` over JSONL in S3, at batch prices.

Each job's files live under ``<s3_uri>/<pipeline>/<job name>/``: ``input/records.jsonl`` (one
``{"recordId", "modelInput"}`` line a row, ``modelInput`` the very body InvokeModel — or, for
a Converse pipeline, Converse — gets in real time, so a batch answer is the answer the endpoint
would give), ``keys.json`` (each record id's source key: records are matched by id, never by
line order), and the service's ``output/<job id>/records.jsonl.out`` and
``manifest.json.out``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from botocore.exceptions import ClientError

from cdc_scorer.core.batch import (
    DONE,
    ENDED,
    SUBMITTED,
    BatchJob,
    Estimate,
    JobProgress,
    RecordResult,
)
from cdc_scorer.core.errors import CdcScorerError, FatalError, PoisonError
from cdc_scorer.core.models import ItemError
from cdc_scorer.core.records import Op, RowChange
from cdc_scorer.core.spec import BackfillSpec
from cdc_scorer.services.aws import aws_errors, map_aws_error
from cdc_scorer.services.bedrock import BedrockSpec
from cdc_scorer.services.s3_files import exists, pieces, read_outputs, read_text, split_s3

MIN_RECORDS = 100  # Bedrock refuses a job of fewer ("minimum number of records per job")
MAX_RECORDS = 50_000  # the default quota of records per job
CHARS_PER_TOKEN = 4  # the estimate's rule: about four characters of English a token
_RUNNING = ("Submitted", "Validating", "Scheduled", "InProgress", "Stopping")
_DONE = ("Completed", "PartiallyCompleted")


def canonical(body: Any) -> str:
    """A request body as the text records are compared by (key order and spacing fixed)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class BedrockBatchJobs:
    """The ``BatchService`` of one Bedrock pipeline."""

    min_records = MIN_RECORDS
    max_records = MAX_RECORDS

    def __init__(
        self,
        spec: BedrockSpec,
        pipeline: str,
        backfill: BackfillSpec,
        bedrock: Any,
        s3: Any,
    ) -> None:
        self._spec = spec
        self._pipeline = pipeline
        self._backfill = backfill
        self._bedrock = bedrock
        self._s3 = s3
        self._codec: Any = spec.codec()
        self._converse = spec.task == "converse"
        self.describe = f"Bedrock batch inference of {spec.model_id}"
        # Both set when the section's mode submits jobs (BackfillSpec checks); an estimate
        # of a real-time pipeline submits nothing.
        self._root = (backfill.s3_uri or "").rstrip("/")
        self._role = backfill.role_arn or ""

    # ---------------------------------------------------------------- records
    def record(self, values: Mapping[str, Any]) -> str:
        change = RowChange(Op.SNAPSHOT, "", (), dict(values), None, None)
        return canonical(self._body(self._codec.prepare(change)))

    def _body(self, item: Any) -> dict[str, Any]:
        """The body of one row's real-time call, as a record's ``modelInput``."""
        request = self._codec.encode([item])
        if self._converse:
            return {k: v for k, v in request.items() if k != "modelId"}
        return dict(json.loads(request["body"]))

    # ---------------------------------------------------------------- jobs
    def _prefix(self, job: BatchJob) -> str:
        return f"{self._root}/{self._pipeline}/{job.name}"

    async def submit(self, job: BatchJob, records: Sequence[tuple[str, str]]) -> BatchJob:
        prefix = self._prefix(job)
        bucket, key = split_s3(prefix)
        input_uri, output_uri = f"{prefix}/input/records.jsonl", f"{prefix}/output/"
        with self._refusals("writing the job's input to S3", "s3_uri"):
            # The keys first, the records last: records in S3 mean the job's files are whole
            # (and maybe in use by the job: never written again).
            if not await exists(self._s3, bucket, f"{key}/input/records.jsonl"):
                # Made in a thread: tens of thousands of records held the event loop.
                keys, lines = await asyncio.to_thread(_input_files, records)
                await self._s3.put_object(Bucket=bucket, Key=f"{key}/keys.json", Body=keys)
                await self._s3.put_object(
                    Bucket=bucket, Key=f"{key}/input/records.jsonl", Body=lines
                )
        with self._refusals("CreateModelInvocationJob", "role_arn"):
            answer = await self._bedrock.create_model_invocation_job(
                jobName=job.name,
                roleArn=self._role,
                clientRequestToken=job.token,
                modelId=self._spec.model_id,
                inputDataConfig={
                    "s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}
                },
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
                timeoutDurationInHours=self._backfill.timeout_hours,
                modelInvocationType="Converse" if self._converse else "InvokeModel",
            )
        return job.moved(arn=str(answer["jobArn"]), input_uri=input_uri, output_uri=output_uri)

    def _refusals(self, doing: str, setting: str) -> Any:
        """Errors of a control-plane call: retriable ones as ours; a refusal names the
        setting to fix."""
        return _Refusals(f"{self.describe}: {doing}", setting, self._pipeline)

    async def progress(self, job: BatchJob) -> JobProgress:
        with aws_errors(f"{self.describe}: GetModelInvocationJob {job.name}"):
            answer = await self._bedrock.get_model_invocation_job(jobIdentifier=job.arn)
        status = str(answer["status"])
        state = SUBMITTED if status in _RUNNING else DONE if status in _DONE else ENDED
        return JobProgress(
            state=state,
            service_state=status,
            message=answer.get("message"),
            total=int(answer.get("totalRecordCount") or 0),
            processed=int(answer.get("processedRecordCount") or 0),
            failed=int(answer.get("errorRecordCount") or 0),
        )

    async def stop(self, job: BatchJob) -> None:
        try:
            with aws_errors(f"{self.describe}: StopModelInvocationJob {job.name}"):
                await self._bedrock.stop_model_invocation_job(jobIdentifier=job.arn)
        except PoisonError:
            pass  # a ValidationException: it ended already

    async def results(self, job: BatchJob) -> Mapping[str, RecordResult]:
        bucket, key = split_s3(self._prefix(job))
        with aws_errors(f"{self.describe}: reading job {job.name}'s files from S3"):
            keys = await read_text(self._s3, bucket, f"{key}/keys.json")
            inputs = await read_text(self._s3, bucket, f"{key}/input/records.jsonl")
            outputs = await read_outputs(self._s3, bucket, f"{key}/output/", ".jsonl.out")
        # Tens of thousands of records: parsed a piece at a time, each in a thread, so the
        # stream's event loop is never held for long.
        key_of: dict[str, str] = await asyncio.to_thread(json.loads, keys)
        bodies: dict[str, Any] = {}
        for piece in pieces(inputs.splitlines()):
            bodies |= await asyncio.to_thread(_json_lines, piece, "modelInput")
        answers: dict[str, Any] = {}
        for text in outputs:
            for piece in pieces(text.splitlines()):
                answers |= await asyncio.to_thread(_json_lines, piece, None)
        results: dict[str, RecordResult] = {}
        for records in pieces(list(bodies.items())):
            results |= await asyncio.to_thread(self._results, records, key_of, answers)
        return results

    def _results(
        self,
        records: list[tuple[str, Any]],
        key_of: Mapping[str, str],
        answers: Mapping[str, Any],
    ) -> dict[str, RecordResult]:
        return {
            key_of[record_id]: self._result(body, answers.get(record_id))
            for record_id, body in records
            if record_id in key_of
        }

    def _result(self, body: Any, output: Mapping[str, Any] | None) -> RecordResult:
        text = canonical(body)
        if output is None:
            return RecordResult(text, None, "not_processed", "the job did not answer it", True)
        if "error" in output or "modelOutput" not in output:
            error = output.get("error") or {}
            code = int(error.get("errorCode") or 500)
            message = str(error.get("errorMessage") or "no answer")
            retry = code == 429 or code >= 500
            return RecordResult(text, None, "batch_record_error", f"{code}: {message}", retry)
        if "modelInput" in output:
            text = canonical(output["modelInput"])  # as the service got it
        answer = output["modelOutput"]
        try:
            response = answer if self._converse else {"body": json.dumps(answer).encode()}
            outcome = self._codec.decode(response, 1).outcomes[0]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return RecordResult(text, None, "bad_response", f"the answer cannot be read: {exc!r}")
        if isinstance(outcome, ItemError):
            return RecordResult(text, None, outcome.reason, outcome.message, outcome.retriable)
        return RecordResult(text, dict(outcome))

    def estimate(self, records: int, characters: int, jobs: int) -> Estimate:
        tokens = math.ceil(characters / CHARS_PER_TOKEN)
        return Estimate(
            records=records,
            jobs=jobs,
            units=tokens,
            unit="input tokens",
            method=(
                f"the request bodies' characters / {CHARS_PER_TOKEN} (each row's body as the "
                "endpoint gets it; the model's tokenizer counts its own way)"
            ),
            realtime_units=tokens,
            realtime_unit="input tokens",
            per=1000,
            price_unit="1,000 input tokens",
        )


class _Refusals:
    def __init__(self, doing: str, setting: str, pipeline: str) -> None:
        self._doing, self._setting, self._pipeline = doing, setting, pipeline

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None or isinstance(exc, CdcScorerError) or not isinstance(exc, Exception):
            return False
        mapped = map_aws_error(exc, self._doing)
        if isinstance(exc, ClientError) and not _retriable(mapped):
            code = exc.response.get("Error", {}).get("Code", "")
            fix = (
                "lower backfill.max_jobs_in_flight or records_per_job, or ask AWS for a "
                "higher quota"
                if "Quota" in code
                else f"check [pipelines.{self._pipeline}.backfill] {self._setting}"
                + (
                    " (the role Bedrock assumes must read and write s3_uri; iam:PassRole)"
                    if self._setting == "role_arn"
                    else " (the bucket and prefix must exist and be writable by the scorer)"
                )
            )
            raise FatalError(f"{mapped} — {fix}") from exc
        raise mapped from exc


def _retriable(error: CdcScorerError) -> bool:
    from cdc_scorer.core.errors import RetriableError

    return isinstance(error, RetriableError)


def _json_lines(lines: list[str], field: str | None) -> dict[str, Any]:
    """JSONL records by recordId: ``field`` of each (None: the whole record)."""
    out: dict[str, Any] = {}
    for line in lines:
        if line.strip():
            record = json.loads(line)
            out[str(record.get("recordId"))] = record if field is None else record[field]
    return out


def _input_files(records: Sequence[tuple[str, str]]) -> tuple[bytes, bytes]:
    """A job's ``keys.json`` (record id → key) and ``records.jsonl`` (``recordId`` and
    ``modelInput``, the InvokeModel body), from (key text, body) pairs."""
    ids = [f"{number:011d}" for number in range(len(records))]
    lines = "".join(
        f'{{"recordId":"{rid}","modelInput":{body}}}\n'
        for rid, (_, body) in zip(ids, records, strict=True)
    )
    keys = {rid: key_text for rid, (key_text, _) in zip(ids, records, strict=True)}
    return json.dumps(keys).encode(), lines.encode()
