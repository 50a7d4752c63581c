"""The batch contract as the functions meet it: manifests and objects in S3.

The layout and the manifest's format are dicom_store_contract's (shipped in this zip and in the SCP image);
this module only reads them from S3 and names S3 locations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError
from dicom_store_contract.manifest import InvalidManifest, Manifest, parse


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def read_manifest(s3: Any, bucket: str, key: str, dicom_prefix: str) -> Manifest:
    """The manifest at ``key``, checked; InvalidManifest when it is missing or breaks the contract."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            raise InvalidManifest(f"s3://{bucket}/{key} does not exist") from None
        raise
    return parse(body, dicom_prefix, key)


def list_objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])
