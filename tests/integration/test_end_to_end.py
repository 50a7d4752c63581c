"""End to end on one machine: DCMTK -> the SCP (S3 backend) -> moto_server -> the import pipeline -> AHI fake.

One ``moto_server`` serves S3, DynamoDB and Step Functions on one loopback endpoint, so the SCP process and the
in-process Lambda handlers see the same bucket, tables and state machine. Each handler runs with exactly the
environment the template gives it; the manifest's S3 event is built as AWS sends it (URL-encoded key).
"""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import numpy as np
import pydicom
import pytest
from dicom_store_contract import layout
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from support.cfn import REGION, Deployment
from support.iam import ApiCall, denied
from support.moto import MotoServer, aws_env
from support.pipeline import Pipeline, load_event, manifest_created_event
from support.scp import RunningScp, launch_scp, storescu

from .conftest import DICOM_PREFIX

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(stack: Deployment) -> Deployment:
    """The stack on moto_server (conftest): s3, the AHI fake and the pipeline reach it over HTTP."""
    return stack


# Above the SCP's multipart threshold (16 MiB), so the series exercises both of its upload paths.
LARGE_INSTANCE_BYTES = 17 * 1024 * 1024


def start_scp(tmp_path: Path, stack: Deployment, moto_server: MotoServer) -> RunningScp:
    bucket = stack.output("DICOMBucketName")
    return launch_scp(
        tmp_path,
        *("--dicom-bucket", bucket, "--dicom-prefix", DICOM_PREFIX, "--workers", "1"),
        env=aws_env(moto_server.endpoint),
    )


def write_series(folder: Path, count: int, large: int = 0) -> tuple[list[Path], set[str]]:
    """``count`` CT slices of one series (the last ``large`` of them big enough for a multipart upload)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths, uids = [], set()
    for number in range(count):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = number + 1
        if number >= count - large:
            side = int((LARGE_INSTANCE_BYTES / 2) ** 0.5) + 1
            dataset.Rows = dataset.Columns = side
            dataset.PixelData = np.zeros((side, side), dtype=np.uint16).tobytes()
        path = folder / f"{number:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.add(str(dataset.SOPInstanceUID))
    return paths, uids


def instance_items(stack: Deployment, endpoint: str) -> dict[str, dict[str, Any]]:
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    items = dynamodb.scan(TableName=stack.resources["DicomInstanceTable"], ConsistentRead=True)["Items"]
    plain = [{name: next(iter(value.values())) for name, value in item.items()} for item in items]
    return {item["sopInstanceUID"]: item for item in plain}


def job_item(stack: Deployment, endpoint: str, job_id: str) -> dict[str, Any]:
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    item = dynamodb.get_item(
        TableName=stack.resources["DicomImportJobTable"], Key={"jobId": {"S": job_id}}, ConsistentRead=True
    )["Item"]
    return {name: next(iter(value.values())) for name, value in item.items()}


def import_manifest(pipeline: Pipeline, s3: Any, bucket: str, manifest_key: str) -> dict[str, Any]:
    """What AWS does once the manifest lands: the S3 event to TriggerImport, then the workflow."""
    size = s3.head_object(Bucket=bucket, Key=manifest_key)["ContentLength"]
    triggered = pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, manifest_key, size))
    (batch,) = triggered["batches"]
    assert batch["started"] is True
    sfn = boto3.client("stepfunctions", region_name=REGION)  # AWS_ENDPOINT_URL: moto_server
    execution = sfn.describe_execution(executionArn=batch["executionArn"])
    return pipeline.run_workflow(json.loads(execution["input"]))


# --- the SCP's S3 requests, read from moto_server's request log --------------------------------------------

_REQUEST_LINE = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]" (\d{3})')


def s3_requests(log_text: str) -> list[ApiCall]:
    """The S3 operations in moto_server's request log (path-style addressing, as botocore uses for an IP)."""
    calls = []
    for method, target, status in _REQUEST_LINE.findall(log_text):
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        params: dict[str, Any] = {"Bucket": bucket}
        if key:
            params["Key"] = key
        if method == "PUT" and key:
            operation = "UploadPart" if "uploadId" in query else "PutObject"
        elif method == "POST" and "uploads" in query:
            operation = "CreateMultipartUpload"
        elif method == "POST" and "uploadId" in query:
            operation = "CompleteMultipartUpload"
        elif method == "DELETE" and "uploadId" in query:
            operation = "AbortMultipartUpload"
        elif method == "GET" and not key:
            operation = "ListObjectsV2"
            params.update({"Prefix": query["prefix"][0]} if "prefix" in query else {})
        elif method == "HEAD" and not key:
            operation = "HeadBucket"
        else:
            operation = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)
        calls.append(ApiCall("s3", operation, params, int(status)))
    return calls


def test_the_scp_writes_only_what_its_task_role_allows(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any
) -> None:
    paths, uids = write_series(tmp_path / "series", count=2, large=1)
    before = moto_server.log_path.stat().st_size
    scp = start_scp(tmp_path, stack, moto_server)
    try:
        result = storescu(scp.port, *paths)
        assert result.statuses == [0x0000, 0x0000], result.output
        scp.wait_for_event("association")
    finally:
        scp.stop()
    calls = s3_requests(moto_server.log_path.read_text()[before:])

    operations = {call.operation for call in calls}
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= operations
    assert all(call.status < 300 for call in calls), [str(c) for c in calls]
    statements = stack.role_statements("ScpTaskRole")
    assert denied(statements, calls) == []
    # The abort a failed multipart upload sends is allowed too, on the same keys.
    aborts = [ApiCall("s3", "AbortMultipartUpload", c.params) for c in calls if c.operation == "UploadPart"]
    assert denied(statements, aborts) == []
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=stack.output("DICOMBucketName"))["Contents"]}
    assert {key.rsplit("/", 1)[-1] for key in stored if key.endswith(".dcm")} == {f"{uid}.dcm" for uid in uids}


def test_a_series_sent_with_dcmtk_ends_imported(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any, pipeline: Pipeline
) -> None:
    bucket = stack.output("DICOMBucketName")
    paths, uids = write_series(tmp_path / "series", count=4)
    scp = start_scp(tmp_path, stack, moto_server)
    try:
        result = storescu(scp.port, *paths)
        assert result.statuses == [0x0000] * 4, result.output
        (ended,) = scp.wait_for_event("association")
    finally:
        scp.stop()
    (batch_id,) = ended["batches"]
    manifest_key = layout.manifest_key(DICOM_PREFIX, batch_id)

    final = import_manifest(pipeline, s3, bucket, manifest_key)

    assert final["polling"]["jobStatus"] == "COMPLETED"
    items = instance_items(stack, moto_server.endpoint)
    assert set(items) == uids
    assert {item["state"] for item in items.values()} == {"IMPORTED"}
    assert all(item["batchId"] == batch_id and item["imageSetId"] for item in items.values())
    job = job_item(stack, moto_server.endpoint, final["importJob"]["jobId"])
    assert (job["jobStatus"], job["batchId"]) == ("COMPLETED", batch_id)
    assert (job["instanceCount"], job["importedCount"], job["failedCount"]) == ("4", "4", "0")
    # And the functions stayed within their roles against the real HTTP path too.
    for function, calls in pipeline.calls.items():
        assert denied(stack.role_statements(stack.role_of(function)), calls) == [], function


def test_the_sweeper_seals_a_batch_the_scp_left_open_and_it_imports(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any, pipeline: Pipeline, monkeypatch: Any
) -> None:
    bucket = stack.output("DICOMBucketName")
    paths, _ = write_series(tmp_path / "series", count=3)
    scp = start_scp(tmp_path, stack, moto_server)
    sender = AE(ae_title="MODALITY1")
    sender.add_requested_context(pydicom.dcmread(paths[0]).SOPClassUID, ExplicitVRLittleEndian)
    assoc = sender.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    assert assoc.is_established
    acknowledged = set()
    try:
        for path in paths:
            dataset = pydicom.dcmread(path)
            if assoc.send_c_store(dataset).Status == 0x0000:
                acknowledged.add(str(dataset.SOPInstanceUID))
        scp.stop(signal.SIGKILL)  # the task dies mid-association: no release, no manifest
    finally:
        assoc.abort()
    assert len(acknowledged) == 3
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=DICOM_PREFIX)["Contents"]
    assert not [item for item in listed if "/manifests/" in item["Key"]]

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return datetime.now(tz or UTC) + timedelta(days=1)  # the next sweep after the age limit

    monkeypatch.setattr("functions.sweeper.datetime", Later)
    swept = pipeline.invoke("SweeperFunction", load_event("scheduled_sweep.json"))
    (batch_id,) = swept["sealed"]

    final = import_manifest(pipeline, s3, bucket, layout.manifest_key(DICOM_PREFIX, batch_id))

    assert final["polling"]["jobStatus"] == "COMPLETED"
    items = instance_items(stack, moto_server.endpoint)
    assert set(items) == acknowledged
    assert {item["state"] for item in items.values()} == {"IMPORTED"}
    assert all(item["imageSetId"] for item in items.values())


def _variant(source: Path, target: Path, **changes: Any) -> Path:
    dataset = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    dataset.save_as(target, enforce_file_format=True)
    return target


def _undecodable_jpeg2000(source: Path, target: Path) -> Path:
    """The CT as JPEG 2000 lossless, but its fragment is no codestream: AHI imports it and cannot transcode it."""
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    dataset.PixelData = encapsulate([b"not a JPEG 2000 codestream"])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.save_as(target, enforce_file_format=True)
    return target


def _send_and_import(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any, pipeline: Pipeline, *paths: Path, args=()
) -> tuple[list[int], dict[str, Any]]:
    scp = start_scp(tmp_path, stack, moto_server)
    try:
        result = storescu(scp.port, *paths, args=("-nh", *args))
        (ended,) = scp.wait_for_event("association")
    finally:
        scp.stop()
    (batch_id,) = ended["batches"]
    final = import_manifest(pipeline, s3, stack.output("DICOMBucketName"), layout.manifest_key(DICOM_PREFIX, batch_id))
    return result.statuses, final


def function_metrics(printed: str) -> dict[tuple[str, str], float]:
    """(service, metric name) -> sum of the values in the EMF documents the functions printed (Powertools)."""
    sums: dict[tuple[str, str], float] = {}
    for line in printed.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                key = (document["service"], metric["Name"])
                values = document[metric["Name"]]
                sums[key] = sums.get(key, 0) + sum(values if isinstance(values, list) else [values])
    return sums


def test_what_the_import_reported_is_recorded_per_instance(
    tmp_path: Path,
    stack: Deployment,
    moto_server: MotoServer,
    s3: Any,
    pipeline: Pipeline,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (first, second), _ = write_series(tmp_path / "series", count=2)
    too_long = _variant(first, tmp_path / "long-name.dcm", PatientName="N" * 257, SOPInstanceUID=generate_uid())
    warned = _undecodable_jpeg2000(second, tmp_path / "j2k.dcm")
    uid_first, uid_warned = str(pydicom.dcmread(first).SOPInstanceUID), str(pydicom.dcmread(warned).SOPInstanceUID)

    # One association: a plain CT is imported, the JPEG 2000 one with a warning; the long name never leaves the SCP.
    statuses, final = _send_and_import(
        tmp_path, stack, moto_server, s3, pipeline, first, too_long, warned, args=("-xv",)
    )
    assert statuses == [0x0000, 0xC004, 0x0000]
    assert final["polling"]["jobStatus"] == "COMPLETED"
    assert (final["polling"]["importedCount"], final["polling"]["warningCount"]) == (2, 1)
    items = instance_items(stack, moto_server.endpoint)
    assert set(items) == {uid_first, uid_warned}
    assert items[uid_first]["state"] == "IMPORTED"
    assert items[uid_warned]["state"] == "IMPORTED_WITH_WARNINGS"
    assert items[uid_warned]["warnings"] == [{"S": "0xB100 TRANSCODING_EXCEPTION"}]
    assert items[uid_first]["isPrimary"] is True
    # CheckStatus's metrics say the same, under this stack's service dimension (the dashboard's "with warnings").
    check_status = stack.lambda_environment("CheckStatusFunction")["POWERTOOLS_SERVICE_NAME"]
    assert check_status.endswith("-check-status") and check_status != "check-status"
    emitted = function_metrics(capsys.readouterr().out)
    assert emitted[(check_status, "InstancesImported")] == 2
    assert emitted[(check_status, "InstancesImportedWithWarnings")] == 1
    assert emitted[(check_status, "InstancesInNonPrimaryImageSets")] == 0

    # The same SOP instance sent again with other content: AHI keeps the first copy primary.
    changed = _variant(first, tmp_path / "changed.dcm", InstanceNumber=99)
    statuses, final = _send_and_import(tmp_path, stack, moto_server, s3, pipeline, changed)
    assert statuses == [0x0000]
    item = instance_items(stack, moto_server.endpoint)[uid_first]
    assert (item["state"], item["isPrimary"]) == ("IMPORTED", False)
    job = job_item(stack, moto_server.endpoint, final["importJob"]["jobId"])
    assert (job["importedCount"], job["nonPrimaryCount"]) == ("1", "1")
    assert function_metrics(capsys.readouterr().out)[(check_status, "InstancesInNonPrimaryImageSets")] == 1


def test_a_batch_waits_while_the_data_store_runs_its_quota_of_jobs(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any, pipeline: Pipeline
) -> None:
    from functions.healthimaging import ImportJobSlotsFull

    bucket = stack.output("DICOMBucketName")
    pipeline.fake_healthimaging.concurrent_jobs = 1
    executions = []
    for number in range(2):
        paths, _ = write_series(tmp_path / f"series{number}", count=1)
        scp = start_scp(tmp_path, stack, moto_server)
        try:
            assert storescu(scp.port, *paths).statuses == [0x0000]
            (ended,) = scp.wait_for_event("association")
        finally:
            scp.stop()
        (batch_id,) = ended["batches"]
        manifest_key = layout.manifest_key(DICOM_PREFIX, batch_id)
        size = s3.head_object(Bucket=bucket, Key=manifest_key)["ContentLength"]
        (batch,) = pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, manifest_key, size))[
            "batches"
        ]
        sfn = boto3.client("stepfunctions", region_name=REGION)
        executions.append(json.loads(sfn.describe_execution(executionArn=batch["executionArn"])["input"]))

    state = {key: executions[0][key] for key in ("batchId", "bucket", "manifestKey", "prefix")}
    running = pipeline.invoke("StartImportJobFunction", state)
    second = {key: executions[1][key] for key in ("batchId", "bucket", "manifestKey", "prefix")}
    # The error name the workflow's Retry waits on (hours, backoff, jitter), not a failed batch.
    with pytest.raises(ImportJobSlotsFull, match="ServiceQuotaExceededException"):
        pipeline.invoke("StartImportJobFunction", second)
    assert pipeline.fake_healthimaging.running() == 1

    for count in (1, 2):
        polling = {"waitSeconds": 0, "maxPolls": 10, "count": count}
        task = {**{k: state[k] for k in ("batchId", "bucket", "manifestKey")}, "jobId": running["jobId"]}
        pipeline.invoke("CheckStatusFunction", {**task, "outputS3Uri": running["outputS3Uri"], "polling": polling})
    assert pipeline.fake_healthimaging.running() == 0

    final = pipeline.run_workflow(executions[1])  # the retried start finds a free slot
    assert final["polling"]["jobStatus"] == "COMPLETED"
    assert {item["state"] for item in instance_items(stack, moto_server.endpoint).values()} == {"IMPORTED"}
