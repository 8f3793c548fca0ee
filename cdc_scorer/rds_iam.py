"""RDS IAM database authentication: a fresh token for every new connection.

A token is a SigV4-presigned ``connect`` request for one host, port and user, valid 15 minutes,
signed locally by botocore with the task role's credentials (no network call). It is sent as
the password — on MySQL with the cleartext plugin Aurora's AWSAuthenticationPlugin asks for, on
PostgreSQL as the password of every connection, the replication one included — so only over
TLS (``spec.SourceSpec`` refuses ``rds-iam`` without it). Both engines' clients use it. Tokens
are never stored, logged or put in an error message.
"""

from __future__ import annotations

import threading
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError, NoCredentialsError, NoRegionError

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import SourceSpec

TOKEN_LIFETIME_S = 900  # what RDS accepts; a reconnect after that needs a new token


class RdsTokens:
    """Makes tokens for one source (its host, port, user and region)."""

    def __init__(self, source: SourceSpec) -> None:
        self._source = source
        self._client: Any = None
        self._lock = threading.Lock()  # connections are opened from several threads

    def token(self) -> str:
        source = self._source
        try:
            with self._lock:
                if self._client is None:
                    self._client = botocore.session.get_session().create_client(
                        "rds", region_name=source.iam_region
                    )
                return str(
                    self._client.generate_db_auth_token(
                        DBHostname=source.host, Port=source.port, DBUsername=source.user
                    )
                )
        except NoRegionError as exc:
            raise FatalError(
                "RDS IAM authentication needs a region: set [source] iam_region or AWS_REGION"
            ) from exc
        except NoCredentialsError as exc:
            raise FatalError(
                "RDS IAM authentication needs AWS credentials (the task role, or "
                "AWS_ACCESS_KEY_ID): none were found"
            ) from exc
        except BotoCoreError as exc:
            raise FatalError(f"RDS IAM authentication: cannot make a token ({exc})") from exc


_TOKENS: dict[SourceSpec, RdsTokens] = {}
_TOKENS_LOCK = threading.Lock()


def tokens_for(source: SourceSpec) -> RdsTokens:
    """One token maker per source (its botocore client is made once)."""
    with _TOKENS_LOCK:
        maker = _TOKENS.get(source)
        if maker is None:
            maker = _TOKENS[source] = RdsTokens(source)
        return maker
