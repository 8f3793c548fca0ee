"""A local S3: moto's server mode on a free loopback port (a real S3 protocol server: the
scorer's aiobotocore client and the local batch services' boto3 client talk to it as to S3).

Its buckets live in the memory of the process that started it: ``cdc-scorer serve-models``
starts one beside the model endpoints, the tests one per session.
"""

from __future__ import annotations

import logging
from typing import Any

REGION = "us-east-1"


class LocalS3:
    """moto's threaded server; ``start()`` returns its URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: the scorer's polling would flood the log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.url = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        """A boto3 S3 client of this server (path-style addressing, test credentials)."""
        return s3_client(self.url)

    def __enter__(self) -> LocalS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(s3={"addressing_style": "path"}),
    )
