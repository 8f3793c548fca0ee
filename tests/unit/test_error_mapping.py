"""The two library boundaries: pymysql and botocore errors become ours by one declared table
each (``db.mysql_errors``, ``scoring.aws.aws_errors``)."""

from __future__ import annotations

import pymysql
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from cdc_scorer.core.errors import CdcScorerError, FatalError, PoisonError, RetriableError
from cdc_scorer.mysql.connection import FIXES, RETRIABLE_CODES, mysql_errors
from cdc_scorer.services.aws import POISON_CODES, aws_errors
from cdc_scorer.services.aws import RETRIABLE_CODES as AWS_RETRIABLE


def mapped_mysql(exc: Exception) -> CdcScorerError:
    with pytest.raises(CdcScorerError) as caught, mysql_errors("doing it"):
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


@pytest.mark.parametrize("code", sorted(RETRIABLE_CODES))
def test_mysql_retriable_codes(code: int) -> None:
    error = mapped_mysql(pymysql.err.OperationalError(code, "lost"))
    assert isinstance(error, RetriableError)
    assert error.code == f"mysql_{code}"
    assert str(error) == f"doing it: MySQL error {code}: lost"


@pytest.mark.parametrize("code", sorted(FIXES))
def test_mysql_fatal_codes_carry_their_fix(code: int) -> None:
    error = mapped_mysql(pymysql.err.OperationalError(code, "refused"))
    assert isinstance(error, FatalError) and not error.retriable
    assert str(error) == f"doing it: MySQL error {code}: refused — {FIXES[code]}"


def test_mysql_interface_errors_are_retriable_and_unknown_codes_fatal() -> None:
    assert isinstance(mapped_mysql(pymysql.err.InterfaceError(0, "closed")), RetriableError)
    unknown = mapped_mysql(pymysql.err.ProgrammingError(1064, "syntax"))
    assert isinstance(unknown, FatalError)
    assert str(unknown) == "doing it: MySQL error 1064: syntax"


def test_mysql_boundary_leaves_other_errors_alone() -> None:
    with pytest.raises(KeyError), mysql_errors("doing it"):
        raise KeyError("not a database error")


def client_error(code: str, status: int, message: str = "m") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "InvokeEndpoint",
    )


def mapped_aws(exc: Exception) -> tuple[CdcScorerError, list[CdcScorerError | None]]:
    seen: list[CdcScorerError | None] = []

    def observe(seconds: float, error: CdcScorerError | None) -> None:
        assert seconds >= 0
        seen.append(error)

    with pytest.raises(CdcScorerError) as caught, aws_errors("calling", observe):
        raise exc
    assert caught.value.__cause__ is exc
    assert seen == [caught.value]  # the call's outcome is observed once, as mapped
    return caught.value, seen


@pytest.mark.parametrize("code", sorted(AWS_RETRIABLE))
def test_aws_retriable_codes(code: str) -> None:
    error, _ = mapped_aws(client_error(code, 400))
    assert isinstance(error, RetriableError) and error.code == code


POISON_REASONS = {
    "InvalidRequestException": "invalid_request",
    "TextSizeLimitExceededException": "text_size_limit_exceeded",
    "BatchSizeLimitExceededException": "batch_size_limit_exceeded",
    "UnsupportedLanguageException": "unsupported_language",
    "ValidationException": "validation",
    "ModelErrorException": "model_error",
}


@pytest.mark.parametrize(
    ("code", "status"), [("AccessDeniedException", 403), ("ResourceNotFoundException", 404)]
)
def test_aws_bedrock_refusals_of_the_model_are_fatal(code: str, status: int) -> None:
    error, _ = mapped_aws(client_error(code, status, "no such model"))
    assert isinstance(error, FatalError)
    assert str(error) == f"calling: {code} (HTTP {status}): no such model"


def test_aws_poison_codes() -> None:
    assert set(POISON_REASONS) == POISON_CODES - {"ModelError"}
    for code, reason in POISON_REASONS.items():
        error, _ = mapped_aws(client_error(code, 400))
        assert isinstance(error, PoisonError) and error.reason == reason, code


def test_aws_model_error_keeps_the_model_message() -> None:
    exc = client_error("ModelError", 424)
    exc.response["OriginalMessage"] = "could not convert '' to a number"
    error, _ = mapped_aws(exc)
    assert isinstance(error, PoisonError) and error.reason == "model_error"
    assert str(error) == "calling: ModelError: could not convert '' to a number"


def test_aws_status_codes_and_transport_errors() -> None:
    assert isinstance(mapped_aws(client_error("Whatever", 503))[0], RetriableError)
    assert isinstance(mapped_aws(client_error("SlowDown", 429))[0], RetriableError)
    denied, _ = mapped_aws(client_error("AccessDeniedException", 403, "no"))
    assert isinstance(denied, FatalError)
    assert str(denied) == "calling: AccessDeniedException (HTTP 403): no"
    assert isinstance(
        mapped_aws(EndpointConnectionError(endpoint_url="http://x"))[0], RetriableError
    )
    assert isinstance(mapped_aws(ReadTimeoutError(endpoint_url="http://x"))[0], RetriableError)
    no_credentials, _ = mapped_aws(NoCredentialsError())
    assert isinstance(no_credentials, FatalError) and "no AWS credentials" in str(no_credentials)


def test_aws_boundary_observes_success_and_passes_our_errors_through() -> None:
    seen: list[CdcScorerError | None] = []
    with aws_errors("calling", lambda _s, error: seen.append(error)):
        pass
    assert seen == [None]
    ours = PoisonError("bad line count", reason="bad_response")
    with pytest.raises(PoisonError) as caught, aws_errors("calling"):
        raise ours
    assert caught.value is ours
