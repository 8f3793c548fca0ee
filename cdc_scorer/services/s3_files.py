"""A batch job's files in S3, as the batch services (``bedrock/batch.py``,
``sagemaker/batch.py``) read and write them through an aiobotocore S3 client."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")
PIECE = 500  # records parsed at a time, each piece in a thread (the stream's loop stays free)


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


async def exists(s3: Any, bucket: str, key: str) -> bool:
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(o["Key"] == key for o in listed.get("Contents", []))


async def read_text(s3: Any, bucket: str, key: str) -> str:
    answer = await s3.get_object(Bucket=bucket, Key=key)
    async with answer["Body"] as stream:
        return bytes(await stream.read()).decode("utf-8")


async def read_outputs(s3: Any, bucket: str, prefix: str, suffix: str = "") -> list[str]:
    """The texts of the objects under ``prefix`` whose names end with ``suffix``."""
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [
        await read_text(s3, bucket, obj["Key"])
        for obj in listed.get("Contents", [])
        if obj["Key"].endswith(suffix)
    ]


def pieces(items: list[T]) -> list[list[T]]:
    return [items[i : i + PIECE] for i in range(0, len(items), PIECE)]
