"""A local S3: moto's server mode in a process of its own on a loopback port (a real S3
protocol server: the scorer's aiobotocore client and the local batch services' boto3 client
talk to it as to S3, and its work does not share a process with the model endpoints).

Its buckets live in that process's memory: ``cdc-scorer serve-models`` starts one beside the
model endpoints, the tests one per session.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

REGION = "us-east-1"
BACKGROUND_NICE = 10
PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 30.0


class LocalS3:
    """``python -m moto.server`` on ``host:port`` (0: a free port); ``start()`` returns its
    URL once it answers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from cdc_scorer.local.servers import free_port

        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_child_of_this_process,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return self.url
            except (OSError, urllib.error.URLError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the local S3 (moto's server mode) did not start on {self.url}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def client(self) -> Any:
        """A boto3 S3 client of this server (path-style addressing, test credentials)."""
        return s3_client(self.url)

    def __enter__(self) -> LocalS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_of_this_process() -> None:
    """In the server's process before it runs: a stand-in of what runs elsewhere on AWS, it
    yields the shared cores; and it ends with the process that started it (Linux's parent-death
    signal), however that one ends."""
    os.nice(BACKGROUND_NICE)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
