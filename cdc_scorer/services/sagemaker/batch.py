"""SageMaker Batch Transform: a backfill's jobs (``core/backfill.py``) as ``CreateTransformJob``
over the endpoint's own model (DescribeEndpoint → DescribeEndpointConfig → ModelName), on
instances of their own: no endpoint capacity is taken from the stream.

Each job's files live under ``<s3_uri>/<pipeline>/<job name>/``: ``input/records.csv``, one line
a row — its record id, then the very CSV line InvokeEndpoint gets —, ``keys.json`` (each record
id's source key) and the service's ``output/records.csv.out``. The record id is carried past
the model by ``DataProcessing``: ``InputFilter = "$[1:]"`` hands the model the features alone,
``JoinSource = "Input"`` joins each answer to its input line, ``OutputFilter = "$"`` keeps
both; answers are matched by that id, never by line order (``SplitType = Line``,
``BatchStrategy = MultiRecord``). SageMaker has no idempotency token: the job's name is its
identity, and a name already taken is the job a previous submission made.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cdc_scorer.core.batch import (
    DONE,
    ENDED,
    SUBMITTED,
    BatchJob,
    Estimate,
    JobProgress,
    RecordResult,
)
from cdc_scorer.core.errors import FatalError, PoisonError
from cdc_scorer.core.records import Op, RowChange
from cdc_scorer.core.spec import BackfillSpec
from cdc_scorer.services.aws import aws_errors
from cdc_scorer.services.s3_files import exists, pieces, read_outputs, read_text, split_s3
from cdc_scorer.services.sagemaker import SageMakerSpec

MAX_PAYLOAD_MB = 6  # a mini-batch's body, as InvokeEndpoint's limit
# The estimate's rule: records a ml.m5.large-class instance scores per second with a small
# tabular model (the local container: ~2,000; set it against a test job of yours), and the
# minutes each job spends starting its instances (billed).
RECORDS_PER_INSTANCE_S = 2_000
STARTUP_MINUTES = 6


class SageMakerTransformJobs:
    """The ``BatchService`` of one SageMaker pipeline."""

    min_records = 1
    max_records = 10_000_000

    def __init__(
        self,
        spec: SageMakerSpec,
        pipeline: str,
        backfill: BackfillSpec,
        sagemaker: Any,
        s3: Any,
    ) -> None:
        self._spec = spec
        self._pipeline = pipeline
        self._backfill = backfill
        self._sagemaker = sagemaker
        self._s3 = s3
        self._codec = spec.codec()
        self._model: str | None = None
        self.describe = f"SageMaker Batch Transform of {spec.endpoint_name}'s model"
        self._root = (backfill.s3_uri or "").rstrip("/")  # set when jobs are submitted

    def record(self, values: Mapping[str, Any]) -> str:
        change = RowChange(Op.SNAPSHOT, "", (), dict(values), None, None)
        return self._codec.prepare(change).rstrip("\n")

    def _prefix(self, job: BatchJob) -> str:
        return f"{self._root}/{self._pipeline}/{job.name}"

    async def model_name(self) -> str:
        """The model behind the endpoint (its production variant's), as a job names it."""
        if self._model is None:
            endpoint = self._spec.endpoint_name
            with aws_errors(f"{self.describe}: DescribeEndpoint {endpoint}"):
                found = await self._sagemaker.describe_endpoint(EndpointName=endpoint)
                config = await self._sagemaker.describe_endpoint_config(
                    EndpointConfigName=found["EndpointConfigName"]
                )
            self._model = str(config["ProductionVariants"][0]["ModelName"])
        return self._model

    async def submit(self, job: BatchJob, records: Sequence[tuple[str, str]]) -> BatchJob:
        prefix = self._prefix(job)
        bucket, key = split_s3(prefix)
        input_uri, output_uri = f"{prefix}/input/", f"{prefix}/output/"
        try:
            with aws_errors(f"{self.describe}: writing job {job.name}'s input to S3"):
                # Written once: the job may be reading it.
                if not await exists(self._s3, bucket, f"{key}/input/records.csv"):
                    keys, lines = await asyncio.to_thread(_input_files, records)
                    await self._s3.put_object(Bucket=bucket, Key=f"{key}/keys.json", Body=keys)
                    await self._s3.put_object(
                        Bucket=bucket, Key=f"{key}/input/records.csv", Body=lines
                    )
        except FatalError as exc:
            raise FatalError(
                f"{exc} — check [pipelines.{self._pipeline}.backfill] s3_uri (the bucket and "
                "prefix must exist and be writable by the scorer)"
            ) from exc
        model = await self.model_name()
        request = {
            "TransformJobName": job.name,
            "ModelName": model,
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": MAX_PAYLOAD_MB,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            "TransformOutput": {
                "S3OutputPath": output_uri,
                "Accept": "text/csv",
                "AssembleWith": "Line",
            },
            "TransformResources": {
                "InstanceType": self._backfill.instance_type,
                "InstanceCount": self._backfill.instance_count,
            },
            "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$"},
        }
        try:
            with aws_errors(f"{self.describe}: CreateTransformJob {job.name}"):
                answer = await self._sagemaker.create_transform_job(**request)
            arn = str(answer["TransformJobArn"])
        except FatalError as exc:
            if "ResourceInUse" not in str(exc):
                raise FatalError(f"{exc} — {self._fix(str(exc))}") from exc
            # The name is taken: by this very job, submitted before a restart.
            with aws_errors(f"{self.describe}: DescribeTransformJob {job.name}"):
                found = await self._sagemaker.describe_transform_job(TransformJobName=job.name)
            arn = str(found["TransformJobArn"])
        except PoisonError as exc:  # a ValidationException: a setting is wrong
            raise FatalError(f"{exc} — {self._fix(str(exc))}") from exc
        return job.moved(arn=arn, input_uri=input_uri, output_uri=output_uri)

    def _fix(self, error: str) -> str:
        where = f"[pipelines.{self._pipeline}.backfill]"
        if "ResourceLimitExceeded" in error:
            return (
                f"lower {where} max_jobs_in_flight or instance_count, or ask AWS for a higher "
                "quota of the instance type for transform jobs"
            )
        return (
            f"check {where} instance_type, instance_count and s3_uri, and that the scorer may "
            "pass the model's execution role (iam:PassRole)"
        )

    async def progress(self, job: BatchJob) -> JobProgress:
        with aws_errors(f"{self.describe}: DescribeTransformJob {job.name}"):
            found = await self._sagemaker.describe_transform_job(TransformJobName=job.name)
        status = str(found["TransformJobStatus"])
        state = (
            DONE
            if status == "Completed"
            else ENDED
            if status in ("Failed", "Stopped")
            else SUBMITTED
        )
        return JobProgress(
            state=state,
            service_state=status,
            message=found.get("FailureReason"),
            total=job.records,
            processed=job.records if state == DONE else 0,
        )

    async def stop(self, job: BatchJob) -> None:
        try:
            with aws_errors(f"{self.describe}: StopTransformJob {job.name}"):
                await self._sagemaker.stop_transform_job(TransformJobName=job.name)
        except PoisonError:
            pass  # it ended already

    async def results(self, job: BatchJob) -> Mapping[str, RecordResult]:
        bucket, key = split_s3(self._prefix(job))
        with aws_errors(f"{self.describe}: reading job {job.name}'s files from S3"):
            keys = await read_text(self._s3, bucket, f"{key}/keys.json")
            inputs = await read_text(self._s3, bucket, f"{key}/input/records.csv")
            outputs = await read_outputs(self._s3, bucket, f"{key}/output/")
        # Tens of thousands of records: parsed in threads, the results a piece at a time, so
        # the stream's event loop is never held for long (tens of milliseconds per job when
        # the files were split on it).
        key_of, features, answers = await asyncio.to_thread(_read_files, keys, inputs, outputs)
        results: dict[str, RecordResult] = {}
        for piece in pieces(list(features.items())):
            results |= await asyncio.to_thread(self._results, piece, key_of, answers)
        return results

    def _results(
        self,
        records: list[tuple[str, str]],
        key_of: Mapping[str, str],
        answers: Mapping[str, str],
    ) -> dict[str, RecordResult]:
        return {
            key_of[record_id]: self._result(line, answers.get(record_id))
            for record_id, line in records
            if record_id in key_of
        }

    def _result(self, features: str, joined: str | None) -> RecordResult:
        if joined is None:
            return RecordResult(features, None, "not_processed", "the job did not answer it", True)
        if not joined.startswith(features + ","):
            return RecordResult(
                features, None, "bad_response", f"the answer {joined!r} is not joined to its input"
            )
        answer = joined[len(features) + 1 :]
        try:
            record = next(csv.reader(io.StringIO(answer)))
            label, probability = self._codec.parse(record)
        except (PoisonError, StopIteration) as exc:
            return RecordResult(features, None, "bad_response", str(exc))
        return RecordResult(
            features,
            {self._spec.label_column: label, self._spec.probability_column: probability},
        )

    def estimate(self, records: int, characters: int, jobs: int) -> Estimate:
        instances = self._backfill.instance_count
        scoring_h = records / RECORDS_PER_INSTANCE_S / 3600
        return Estimate(
            records=records,
            jobs=jobs,
            units=jobs * instances * STARTUP_MINUTES / 60 + scoring_h,
            unit="instance-hours of transform jobs",
            method=(
                f"{STARTUP_MINUTES} minutes of start-up per job and instance, then "
                f"{RECORDS_PER_INSTANCE_S:,} records a second an instance (a small tabular "
                "model; time a test job of yours); through the endpoint the same scoring time "
                "on its instances"
            ),
            realtime_units=scoring_h,
            realtime_unit="instance-hours of the endpoint",
            price_unit="instance-hour",
        )


def _input_files(records: Sequence[tuple[str, str]]) -> tuple[bytes, bytes]:
    """A job's ``keys.json`` (record id → key) and ``records.csv`` (the record id, then the
    model's CSV line), from (key text, CSV line) pairs."""
    ids = [f"r{number}" for number in range(len(records))]
    keys = {rid: text for rid, (text, _) in zip(ids, records, strict=True)}
    lines = "".join(f"{rid},{line}\n" for rid, (_, line) in zip(ids, records, strict=True))
    return json.dumps(keys).encode(), lines.encode()


def _read_files(
    keys: str, inputs: str, outputs: Sequence[str]
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """A job's files read back: keys, inputs and answers by record id."""
    key_of: dict[str, str] = json.loads(keys)
    features = dict(line.partition(",")[::2] for line in inputs.splitlines() if line)
    answers: dict[str, str] = {}
    for text in outputs:
        answers |= dict(line.partition(",")[::2] for line in text.splitlines() if line)
    return key_of, features, answers
