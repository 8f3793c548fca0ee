"""aiobotocore clients and the mapping of botocore errors to ours (the AWS boundary)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from cdc_scorer.core.errors import CdcScorerError, FatalError, PoisonError, RetriableError
from cdc_scorer.core.spec import AwsSpec

RETRIABLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ModelNotReadyException",
    "ModelTimeoutException",  # Bedrock: the model took too long this time
    "InternalFailure",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalDependencyException",
    "RequestTimeout",
    "RequestTimeoutException",
}
POISON_CODES = {
    "ModelError",
    # Bedrock: this input is refused (too long, content the model will not take) or made the
    # model fail; a wrong model id or no access are ResourceNotFound / AccessDenied: fatal.
    "ValidationException",
    "ModelErrorException",
    "InvalidRequestException",
    "TextSizeLimitExceededException",
    "BatchSizeLimitExceededException",
    "UnsupportedLanguageException",
}


def create_client_context(service: str, aws: AwsSpec, pool_size: int) -> Any:
    """An async context manager of an aiobotocore client; retries are ours, not botocore's."""
    s3 = service == "s3"
    config = AioConfig(
        retries={"total_max_attempts": 1},
        max_pool_connections=max(10, pool_size),
        read_timeout=aws.call_timeout_s,
        connect_timeout=min(10.0, aws.call_timeout_s),
        # An S3 of its own address (a local one): buckets in the path, not in the host name.
        s3={"addressing_style": "path"} if s3 and aws.s3_endpoint_url else None,
    )
    kwargs: dict[str, Any] = {"config": config}
    if aws.region:
        kwargs["region_name"] = aws.region
    endpoint = aws.s3_endpoint_url if s3 else aws.endpoint_url
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    try:
        return get_session().create_client(service, **kwargs)
    except NoRegionError as exc:
        raise FatalError("no AWS region: set AWS_REGION or [aws] region") from exc


def map_aws_error(exc: BaseException, doing: str) -> CdcScorerError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "ModelError":
            original = exc.response.get("OriginalMessage") or message
            return PoisonError(f"{doing}: ModelError: {original}", reason="model_error")
        if code in POISON_CODES:
            return PoisonError(f"{doing}: {code}: {message}", reason=_snake(code))
        if code in RETRIABLE_CODES or status >= 500 or status == 429:
            return RetriableError(f"{doing}: {code}: {message}", code=code)
        return FatalError(f"{doing}: {code} (HTTP {status}): {message}")
    if isinstance(
        exc,
        EndpointConnectionError | ConnectionClosedError | ConnectTimeoutError | ReadTimeoutError,
    ):
        return RetriableError(f"{doing}: {exc}", code=type(exc).__name__)
    if isinstance(exc, NoCredentialsError):
        return FatalError(f"{doing}: no AWS credentials (task role, AWS_ACCESS_KEY_ID, ...)")
    if isinstance(exc, BotoCoreError | OSError | TimeoutError):
        return RetriableError(f"{doing}: {exc!r}", code=type(exc).__name__)
    return FatalError(f"{doing}: unexpected {exc!r}")


CallObserver = Callable[[float, CdcScorerError | None], None]


@contextmanager
def aws_errors(doing: str, on_call: CallObserver | None = None) -> Iterator[None]:
    """The botocore boundary: what a call raises leaves as ours (``map_aws_error``).

    ``on_call`` sees each call's duration and outcome (the mapped error, or None)."""
    started = time.monotonic()
    try:
        yield
    except CdcScorerError:
        raise
    except Exception as exc:
        mapped = map_aws_error(exc, doing)
        if on_call is not None:
            on_call(time.monotonic() - started, mapped)
        raise mapped from exc
    if on_call is not None:
        on_call(time.monotonic() - started, None)


def _snake(code: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in code.removesuffix("Exception"))
    return out.lstrip("_")
