"""The artifact buckets ``make publish`` makes, tried over HTTP against a real moto_server as a stranger would:
anyone may read the release artifacts, and nothing else.

moto evaluates a bucket policy for object requests without credentials (GET, PUT, DELETE of a key), which is how
these tests ask as "any other account". It does not evaluate bucket policies for signed requests (it has no
notion of another account's identity) nor for bucket-level requests (an anonymous ListObjects is answered
whatever the policy says), nor an anonymous PUT of a key that does not exist yet (moto stores it; S3 refuses a
write nothing grants). So the absence of any listing or write grant is checked on the policy itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from support.moto import FAKE_CREDENTIALS, MotoServer

from release import publish
from template_gen import release as layout

from .conftest import ARTIFACT_PREFIX, MOTO_ACCOUNT, development_release

ACCOUNT = MOTO_ACCOUNT
REGIONS = ("us-east-1", "eu-west-2")
PREFIX = ARTIFACT_PREFIX
DIGEST = "sha256:" + "d" * 64


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto_server.log")
    yield server
    server.stop()


@pytest.fixture
def published(moto_server, functions_zip, tmp_path, monkeypatch) -> publish.Release:
    """A release published to moto_server with the real plan (the image given by digest: no engine here)."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    release = development_release(functions_zip, REGIONS, tmp_path / "release")

    def client(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=moto_server.endpoint)

    publish.plan(release, None, image_digest=DIGEST, client=client).execute(dry_run=False, say=lambda _: None)
    # Objects outside the artifact prefix, as an owner might keep there (or a key that only looks alike).
    for region in REGIONS:
        owner = client("s3", region)
        bucket = release.artifact_bucket(region)
        owner.put_object(Bucket=bucket, Key="private/notes.txt", Body=b"not for buyers")
        owner.put_object(Bucket=bucket, Key=f"{layout.ARTIFACT_PREFIX}-private/x.zip", Body=b"not for buyers")
    yield release
    for region in REGIONS:
        owner = client("s3", region)
        bucket = release.artifact_bucket(region)
        for version in owner.list_object_versions(Bucket=bucket).get("Versions", []):
            owner.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        owner.delete_bucket_policy(Bucket=bucket)
        owner.delete_bucket(Bucket=bucket)


def stranger(moto_server: MotoServer, region: str) -> Any:
    """An S3 client without credentials: requests carry no signature, as from any other party."""
    return boto3.client(
        "s3", region_name=region, endpoint_url=moto_server.endpoint, config=Config(signature_version=UNSIGNED)
    )


def refused(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    status = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    assert status == 403, caught.value.response
    return str(caught.value.response["Error"]["Code"])


@pytest.mark.parametrize("region", REGIONS)
def test_anyone_reads_the_zip_and_the_template_of_the_stacks_region(published, moto_server, region) -> None:
    s3 = stranger(moto_server, region)
    bucket = f"{PREFIX}-{region}"
    assert s3.get_object(Bucket=bucket, Key=published.lambda_key)["Body"].read() == published.zip_path.read_bytes()
    template = s3.get_object(Bucket=bucket, Key=published.template_key)["Body"].read()
    assert template == published.template_path.read_bytes()
    assert f"BucketPrefix: {PREFIX}" in template.decode()


@pytest.mark.parametrize("region", REGIONS)
def test_nothing_else_is_readable_and_nothing_is_writable(published, moto_server, region) -> None:
    s3 = stranger(moto_server, region)
    bucket = f"{PREFIX}-{region}"
    for key in ("private/notes.txt", f"{layout.ARTIFACT_PREFIX}-private/x.zip"):
        refused(s3.get_object, Bucket=bucket, Key=key)
    refused(s3.put_object, Bucket=bucket, Key=published.lambda_key, Body=b"tampered")
    refused(s3.delete_object, Bucket=bucket, Key=published.lambda_key)
    owner = boto3.client("s3", region_name=region, endpoint_url=moto_server.endpoint)
    assert owner.get_object(Bucket=bucket, Key=published.lambda_key)["Body"].read() == published.zip_path.read_bytes()


def test_the_policy_grants_reading_objects_and_their_versions_and_no_listing(published, moto_server) -> None:
    for region in REGIONS:
        bucket = f"{PREFIX}-{region}"
        owner = boto3.client("s3", region_name=region, endpoint_url=moto_server.endpoint)
        policy = json.loads(owner.get_bucket_policy(Bucket=bucket)["Policy"])
        assert policy == publish.artifact_bucket_policy(bucket)
        grants = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
        assert [(g["Principal"], g["Action"], g["Resource"]) for g in grants] == [
            # s3:GetObjectVersion: the template names the functions' code by object version (S3ObjectVersion).
            ("*", ["s3:GetObject", "s3:GetObjectVersion"], f"arn:aws:s3:::{bucket}/{layout.ARTIFACT_PREFIX}/*")
        ]
        # Nothing but that read: no grant names the bucket itself (s3:ListBucket, s3:GetBucketPolicy, ... act on
        # the bucket's ARN), and none allows a write.
        assert not any(s.get("Resource") == f"arn:aws:s3:::{bucket}" for s in policy["Statement"])


def test_an_existing_version_is_never_overwritten(published, moto_server, tmp_path) -> None:
    owner = boto3.client("s3", region_name=REGIONS[0], endpoint_url=moto_server.endpoint)
    bucket = f"{PREFIX}-{REGIONS[0]}"
    body = b"other bytes under the same version"
    with pytest.raises(publish.PublishError, match="holds other bytes"):
        publish.upload_once(
            owner, bucket, published.lambda_key, body, hashlib.sha256(body).hexdigest(), "application/zip"
        )
    # S3 itself refuses the conditional write (If-None-Match: *), so two publishers cannot race past the check.
    with pytest.raises(ClientError) as caught:
        owner.put_object(Bucket=bucket, Key=published.lambda_key, Body=body, IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert owner.get_object(Bucket=bucket, Key=published.lambda_key)["Body"].read() == published.zip_path.read_bytes()
    assert owner.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


def test_publishing_again_over_http_changes_nothing(published, moto_server) -> None:
    def client(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=moto_server.endpoint)

    publish.plan(published, None, image_digest=DIGEST, client=client).execute(dry_run=False, say=lambda _: None)
    for region in REGIONS:
        versions = client("s3", region).list_object_versions(
            Bucket=f"{PREFIX}-{region}", Prefix=f"{layout.ARTIFACT_PREFIX}/"
        )["Versions"]
        assert sorted(v["Key"] for v in versions) == sorted([published.lambda_key, published.template_key])
