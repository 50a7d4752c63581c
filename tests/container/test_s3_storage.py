"""The S3 backend against a real moto_server over HTTP: what lands in the bucket, what senders hear when S3 fails."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from dicom_store_contract import layout
from dicom_store_scp import statuses
from dicom_store_scp.config import Config
from dicom_store_scp.s3 import (
    MIB,
    MULTIPART_THRESHOLD,
    RETRY_MODE,
    S3Settings,
    S3Storage,
    longest_backoff,
    worst_case_store_seconds,
)
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from support.crc import s3_crc64nvme
from support.moto import FailingS3Proxy, aws_env, bucket_objects
from support.scp import dataset_bytes, sample_file, storescu

STUDY_UID = "1.2.826.0.1.3680043.8.498.100"
SERIES_UID = "1.2.826.0.1.3680043.8.498.100.1"


def write_series(folder: Path, count: int) -> list[Path]:
    """``count`` CT instances of one study and series, each with its own SOP Instance UID."""
    paths = []
    for number in range(1, count + 1):
        dataset = dcmread(sample_file("CT_small.dcm"))
        dataset.StudyInstanceUID = STUDY_UID
        dataset.SeriesInstanceUID = SERIES_UID
        dataset.SOPInstanceUID = f"{SERIES_UID}.{number}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = folder / f"ct{number}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def start_s3_scp(start_scp, endpoint: str, bucket: str, *args: str, **env: str):
    return start_scp("--dicom-bucket", bucket, *args, env=aws_env(endpoint, **env))


def manifests_in(objects: dict[str, bytes], prefix: str = "") -> list[dict]:
    return [json.loads(body) for key, body in objects.items() if key.startswith(f"{prefix}manifests/")]


@pytest.mark.parametrize(
    ("prefix_flag", "prefix", "sse_args", "sse"),
    [
        ("", "", (), "AES256"),
        ("/site-a/", "site-a/", ("--s3-sse", "aws:kms", "--s3-kms-key-id", "alias/dicom-bucket"), "aws:kms"),
    ],
    ids=["no-prefix-aes256", "prefix-kms"],
)
def test_a_series_lands_in_the_bucket_as_sent_with_its_manifest(
    start_scp, s3_bucket, moto_server, wire_witness, tmp_path, prefix_flag, prefix, sse_args, sse
):
    client, bucket = s3_bucket
    sources = write_series(tmp_path, 4)
    scp = start_s3_scp(start_scp, moto_server.endpoint, bucket, "--dicom-prefix", prefix_flag, *sse_args)

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 4, result.output
    scp.wait_for_event("association")
    objects = bucket_objects(client, bucket)
    [manifest] = manifests_in(objects, prefix)
    batch = manifest["batchId"]
    assert manifest["prefix"] == f"{prefix}incoming/{batch}/"
    assert manifest["instanceCount"] == 4
    expected_keys = {
        layout.instance_key(prefix, batch, STUDY_UID, SERIES_UID, f"{SERIES_UID}.{n}") for n in range(1, 5)
    }
    assert {item["key"] for item in manifest["instances"]} == expected_keys
    assert set(objects) == expected_keys | {f"{prefix}manifests/{batch}.json"}
    for source, item in zip(sources, sorted(manifest["instances"], key=lambda i: i["key"]), strict=True):
        body = objects[item["key"]]
        assert dataset_bytes_of(body, tmp_path) == wire_witness.sent_dataset(source, ())
        assert item["size"] == len(body)
        assert (item["checksum"], item["checksumAlgorithm"]) == (s3_crc64nvme(body), "CRC64NVME")
        head = client.head_object(Bucket=bucket, Key=item["key"], ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == sse
        # The value sent with the PUT (moto_server records it; S3 would refuse the PUT had the bytes differed).
        assert head["ChecksumCRC64NVME"] == s3_crc64nvme(body)
        assert head["ContentType"] == "application/dicom"
        if sse == "aws:kms":
            assert head["SSEKMSKeyId"].endswith("alias/dicom-bucket")
    manifest_key = f"{prefix}manifests/{batch}.json"
    manifest_head = client.head_object(Bucket=bucket, Key=manifest_key, ChecksumMode="ENABLED")
    assert manifest_head["ServerSideEncryption"] == sse
    assert manifest_head["ChecksumCRC64NVME"] == s3_crc64nvme(objects[manifest_key])
    assert scp.events("listening")[0]["storage"] == f"s3://{bucket}/{prefix}"


def dataset_bytes_of(body: bytes, folder: Path) -> bytes:
    path = folder / "object.dcm"
    path.write_bytes(body)
    return dataset_bytes(path)


def test_a_large_instance_goes_up_in_parts_and_arrives_intact(
    start_scp, s3_bucket, moto_server, wire_witness, tmp_path
):
    client, bucket = s3_bucket
    # One 40 MiB CT frame: above the multipart threshold (16 MiB), so three parts.
    dataset = dcmread(sample_file("CT_small.dcm"))
    dataset.Rows, dataset.Columns = 4096, 5120
    dataset.PixelData = os.urandom(4096 * 5120 * 2)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    source = tmp_path / "large.dcm"
    dataset.save_as(source)
    scp = start_s3_scp(start_scp, moto_server.endpoint, bucket)

    result = storescu(scp.port, source)

    assert result.statuses == [statuses.SUCCESS], result.output
    scp.wait_for_event("association")
    objects = bucket_objects(client, bucket)
    [manifest] = manifests_in(objects)
    [item] = manifest["instances"]
    body = objects[item["key"]]
    assert dataset_bytes_of(body, tmp_path) == wire_witness.sent_dataset(source, ())
    assert (item["checksum"], item["checksumAlgorithm"]) == (s3_crc64nvme(body), "CRC64NVME")
    head = client.head_object(Bucket=bucket, Key=item["key"], ChecksumMode="ENABLED")
    # A multipart object's ETag ends in its part count. CRC64NVME is a full-object checksum: S3 holds the whole
    # object's value (moto_server computes it over the assembled parts), the one the manifest lists.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert head["ChecksumCRC64NVME"] == item["checksum"]
    assert head["ServerSideEncryption"] == "AES256"
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


_CHECKSUM_HEADERS = ("x-amz-checksum", "x-amz-trailer", "x-amz-sdk-checksum")


def test_each_upload_carries_the_checksum_computed_while_receiving(s3_bucket, moto_server, monkeypatch, tmp_path):
    """S3 verifies the value the receive loop computed: botocore sends it as given, for a PUT and for the
    completion of a multipart upload, rather than a value of its own read from the spool file."""
    client, bucket = s3_bucket
    for name, value in aws_env(moto_server.endpoint).items():
        monkeypatch.setenv(name, value)
    storage = S3Storage(S3Settings(bucket=bucket))
    sent: dict[str, dict[str, str]] = {}

    def record(request, event_name, **_):
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith(_CHECKSUM_HEADERS)}
        sent[event_name.rsplit(".", 1)[1]] = {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}

    storage.client().meta.events.register("before-send.s3", record)
    small, large = tmp_path / "small.dcm", tmp_path / "large.dcm"
    small.write_bytes(os.urandom(1000))
    large.write_bytes(os.urandom(MULTIPART_THRESHOLD + MIB))
    # A value that is not the file's: a stand-in for bytes changed after they were received. moto_server records
    # the value it is given for a PUT without checking it (S3 would answer BadDigest), which shows what was sent.
    stand_in = "AAAAAAAAAAE="

    storage.store_instance(small, "incoming/b/1/1.1/1.1.1.dcm", stand_in)
    storage.store_instance(large, "incoming/b/1/1.1/1.1.2.dcm", s3_crc64nvme(large.read_bytes()))

    assert sent["PutObject"] == {"x-amz-sdk-checksum-algorithm": "CRC64NVME", "x-amz-checksum-crc64nvme": stand_in}
    head = client.head_object(Bucket=bucket, Key="incoming/b/1/1.1/1.1.1.dcm", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == stand_in
    assert sent["CreateMultipartUpload"] == {
        "x-amz-checksum-algorithm": "CRC64NVME",
        "x-amz-checksum-type": "FULL_OBJECT",
    }
    # Each part's own CRC64NVME, computed by botocore (a header over plain HTTP, a trailer over HTTPS).
    assert sent["UploadPart"]["x-amz-sdk-checksum-algorithm"] == "CRC64NVME"
    assert sent["CompleteMultipartUpload"] == {
        "x-amz-checksum-crc64nvme": s3_crc64nvme(large.read_bytes()),
        "x-amz-checksum-type": "FULL_OBJECT",
    }


@pytest.mark.parametrize("mode", ["500", "gone"])
def test_when_s3_fails_mid_send_only_stored_instances_are_acknowledged(
    start_scp, s3_bucket, moto_server, tmp_path, mode
):
    client, bucket = s3_bucket
    sources = write_series(tmp_path, 7)
    # Batches of two, so manifests are written while S3 is still healthy. Requests in order: instance 1,
    # instance 2, manifest 1, instance 3, instance 4, manifest 2; then S3 fails and instances 5-7 with it (their
    # batch holds nothing stored, so it gets no manifest).
    proxy = FailingS3Proxy(moto_server.port, healthy_requests=6, mode=mode)
    try:
        scp = start_s3_scp(
            start_scp,
            proxy.endpoint,
            bucket,
            "--batch-max-instances",
            "2",
            "--dimse-timeout",
            "10",
            AWS_MAX_ATTEMPTS="2",
        )

        # -nh: go on after a failure status (storescu stops at the first one by default), so every instance
        # gets an answer.
        result = storescu(scp.port, *sources, args=("-nh",), timeout=60)

        scp.wait_for_event("association")
    finally:
        proxy.close()
    objects = bucket_objects(client, bucket)
    stored = {key for key in objects if key.endswith(".dcm")}
    acknowledged = [status for status in result.statuses if status == statuses.SUCCESS]
    assert len(result.statuses) == 7, result.output
    assert len(acknowledged) == len(stored) == 4
    assert result.statuses[4:] == [statuses.OUT_OF_RESOURCES_STORAGE] * 3
    stored_uids = {key.rsplit("/", 1)[1].removesuffix(".dcm") for key in stored}
    assert stored_uids == {f"{SERIES_UID}.{n}" for n in range(1, 5)}
    manifests = manifests_in(objects)
    assert len(manifests) == 2
    for manifest in manifests:
        for item in manifest["instances"]:
            assert item["key"] in objects
            assert s3_crc64nvme(objects[item["key"]]) == item["checksum"]
    if mode == "500":
        # Each failed instance was tried, and retried (AWS_MAX_ATTEMPTS=2), before the failure status went out.
        assert proxy.failed == 3 * 2
    failures = scp.events("c-store-failed")
    assert [line["status"] for line in failures] == ["0xA700"] * 3
    assert all(bucket in line["detail"] for line in failures)
    # Error details name the bucket and the S3 error, never the credentials botocore signed with.
    assert "testing" not in scp.log_path.read_text()


def test_the_s3_client_gives_up_well_within_the_dimse_timeout(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    config = Config(dicom_bucket="b", dicom_prefix="p/", dimse_timeout=60, maximum_associations=300)

    settings = S3Settings.from_config(config)

    attempts = settings.max_attempts or 0
    assert attempts == 3
    # Every attempt timing out and every backoff at its longest still answers within half the DIMSE timeout.
    assert attempts * (settings.connect_timeout + settings.read_timeout) + longest_backoff(attempts) <= 30
    assert worst_case_store_seconds(settings) <= config.dimse_timeout / 2
    # A read outlasts a 5 s brown-out answer (issue 26: S3 answering after 2-5 s).
    assert settings.read_timeout > 5
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    assert worst_case_store_seconds(S3Settings.from_config(config)) <= config.dimse_timeout / 2
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    # One socket per association that may be uploading at once, unless MAX_POOL_CONNECTIONS says otherwise.
    assert settings.pool_connections == 300
    assert S3Settings.from_config(replace(config, max_pool_connections=20)).pool_connections == 20
    assert S3Storage(settings).describe() == "s3://b/p/"
    assert S3Storage(settings).spool_dir() is None
    assert S3Storage.from_config(replace(config, spool_dir="/var/spool/scp")).spool_dir() == Path("/var/spool/scp")


def test_slowdown_is_retried_after_botocores_own_longest_backoffs():
    """longest_backoff is what botocore's standard mode waits at most before retrying a 503 SlowDown."""
    from botocore.retries.standard import (
        ExponentialBackoff,
        RetryContext,
        ThrottledRetryableChecker,
        ThrottlingErrorDetector,
    )

    assert RETRY_MODE == "standard"  # adaptive mode adds a client-side wait with no bound
    backoff = ExponentialBackoff(
        random=lambda: 1.0, throttling_detector=ThrottlingErrorDetector(ThrottledRetryableChecker())
    )
    slowdown = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
    waits = [
        backoff.delay_amount(RetryContext(attempt_number=attempt, parsed_response=slowdown, http_response=None))
        for attempt in (1, 2, 3, 4)
    ]
    assert longest_backoff(5) == sum(waits)
    assert longest_backoff(3) == sum(waits[:2]) > 0
