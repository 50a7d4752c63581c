"""`dicom-store-scp status` against the stack's tables (made from the template) after the pipeline ran.

The instance table's items are written by the real functions (TriggerImport, StartImportJob, CheckStatus with the
HealthImaging fake), so the command reads exactly what a deployed stack holds; the indexes it queries are the
template's own.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from dicom_store_contract import layout
from dicom_store_scp import status
from dicom_store_scp.__main__ import main as scp_main
from support.batches import write_batch
from support.cfn import REGION, Deployment
from support.pipeline import Pipeline, manifest_created_event

from .conftest import DICOM_PREFIX

BATCH_ID = "20261204T120000Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
PENDING_BATCH_ID = "20261204T120500Z-1f6c1d2e3a4b4c5d8e9f00112233aabb"


def import_batch(pipeline: Pipeline, s3: Any, batch_id: str, count: int, corrupt: int = 0) -> dict[str, Any]:
    """A batch stored as the SCP stores it, then what AWS does with it: the S3 event, then the workflow."""
    bucket = pipeline.deployment.output("DICOMBucketName")
    key, manifest = write_batch(s3, bucket, DICOM_PREFIX, batch_id, count, corrupt)
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, key, size))
    return manifest


def run_workflow(pipeline: Pipeline, manifest: dict[str, Any]) -> dict[str, Any]:
    return pipeline.run_workflow(
        {
            "batchId": manifest["batchId"],
            "bucket": pipeline.deployment.output("DICOMBucketName"),
            "manifestKey": layout.manifest_key(DICOM_PREFIX, manifest["batchId"]),
            "prefix": manifest["prefix"],
        }
    )


def tables_flags(deployment: Deployment) -> list[str]:
    return [
        "--instance-table",
        deployment.output("InstanceTableName"),
        "--job-table",
        deployment.output("ImportJobTableName"),
        "--region",
        REGION,
    ]


def status_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()  # what the pipeline's functions logged before
    code = scp_main(["status", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def imported(pipeline: Pipeline, s3: Any) -> dict[str, Any]:
    """One batch of four, the first not DICOM (AHI refuses it), imported; a second batch received only."""
    manifest = import_batch(pipeline, s3, BATCH_ID, count=4, corrupt=1)
    final = run_workflow(pipeline, manifest)
    assert final["polling"]["jobStatus"] == "COMPLETED"
    pending = import_batch(pipeline, s3, PENDING_BATCH_ID, count=2)
    return {"manifest": manifest, "job": final["importJob"]["jobId"], "pending": pending}


def test_a_study_shows_every_instance_with_its_outcome(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, imported: dict[str, Any]
) -> None:
    manifest = imported["manifest"]
    study = manifest["instances"][0]["studyInstanceUID"]

    code, shown = status_json(capsys, "--study", study, *tables_flags(deployment))

    assert code == status.EXIT_FOUND
    by_uid = {item["sopInstanceUID"]: item for item in shown["instances"]}
    assert set(by_uid) == {i["sopInstanceUID"] for i in manifest["instances"]}
    refused, *good = (by_uid[i["sopInstanceUID"]] for i in manifest["instances"])
    assert refused["state"] == "FAILED"
    assert refused["reason"] and refused["reason"] == refused["failureReason"]
    assert all(item["state"] == "IMPORTED" and item["imageSetId"] for item in good)
    assert {item["jobId"] for item in shown["instances"]} == {imported["job"]}
    assert {item["jobStatus"] for item in shown["instances"]} == {"COMPLETED"}
    assert shown["summary"] == {"FAILED": 1, "IMPORTED": 3}
    assert shown["count"] == 4


def test_series_sop_and_batch_lookups_use_the_templates_indexes(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, imported: dict[str, Any]
) -> None:
    manifest, pending = imported["manifest"], imported["pending"]
    flags = tables_flags(deployment)

    _, by_series = status_json(capsys, "--series", pending["instances"][0]["seriesInstanceUID"], *flags)
    assert {i["sopInstanceUID"] for i in by_series["instances"]} == {i["sopInstanceUID"] for i in pending["instances"]}
    assert by_series["summary"] == {"RECEIVED": 2}

    _, by_batch = status_json(capsys, "--batch", BATCH_ID, *flags)
    assert {i["sopInstanceUID"] for i in by_batch["instances"]} == {i["sopInstanceUID"] for i in manifest["instances"]}

    one = manifest["instances"][2]["sopInstanceUID"]
    _, by_sop = status_json(capsys, "--sop", one, *flags)
    assert [(i["sopInstanceUID"], i["state"], i["batchId"]) for i in by_sop["instances"]] == [
        (one, "IMPORTED", BATCH_ID)
    ]


def test_the_readable_table_names_state_job_and_reason(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, imported: dict[str, Any]
) -> None:
    manifest = imported["manifest"]
    refused_uid = manifest["instances"][0]["sopInstanceUID"]
    capsys.readouterr()

    code = scp_main(["status", "--batch", BATCH_ID, *tables_flags(deployment)])

    text = capsys.readouterr().out
    assert code == status.EXIT_FOUND
    assert f"batch {BATCH_ID}" in text and "4 instance(s)" in text and "3 IMPORTED" in text and "1 FAILED" in text
    (refused_line,) = [line for line in text.splitlines() if refused_uid in line]
    assert "FAILED" in refused_line and imported["job"] in refused_line and "(COMPLETED)" in refused_line
    item = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=deployment.output("InstanceTableName"), Key={"sopInstanceUID": {"S": refused_uid}}
    )["Item"]
    assert item["failureReason"]["S"] in refused_line


def test_states_are_printed_as_stored_whatever_they_are(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, imported: dict[str, Any]
) -> None:
    # The pipeline's vocabulary grows (imported with warnings, ...): the command shows what the table says.
    uid = imported["manifest"]["instances"][1]["sopInstanceUID"]
    boto3.client("dynamodb", region_name=REGION).update_item(
        TableName=deployment.output("InstanceTableName"),
        Key={"sopInstanceUID": {"S": uid}},
        UpdateExpression="SET #s = :s, warnings = :w, isPrimary = :p",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={
            ":s": {"S": "IMPORTED_WITH_WARNINGS"},
            ":w": {"L": [{"S": "TAG_TRUNCATED"}]},
            ":p": {"BOOL": False},
        },
    )

    _, shown = status_json(capsys, "--sop", uid, *tables_flags(deployment))

    (item,) = shown["instances"]
    assert (item["state"], item["reason"]) == ("IMPORTED_WITH_WARNINGS", "TAG_TRUNCATED; non-primary image set")


def test_nothing_found_exits_1_and_says_so(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, imported: dict[str, Any]
) -> None:
    capsys.readouterr()
    code = scp_main(["status", "--study", "1.2.3.999", *tables_flags(deployment)])

    assert code == status.EXIT_NOT_FOUND
    assert "study 1.2.3.999" in capsys.readouterr().out


def test_a_table_without_the_index_is_named_in_the_error(
    capsys: pytest.CaptureFixture[str], deployment: Deployment
) -> None:
    # A stack from an older template: the instance table has its study index only.
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName="old-instances",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "sopInstanceUID", "AttributeType": "S"},
            {"AttributeName": "studyInstanceUID", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "sopInstanceUID", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "studyInstanceUID-index",
                "KeySchema": [{"AttributeName": "studyInstanceUID", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )

    code = scp_main(["status", "--series", "1.2.3", "--instance-table", "old-instances", "--region", REGION])

    assert code == status.EXIT_USAGE
    error = capsys.readouterr().err
    assert "old-instances" in error and "seriesInstanceUID-index" in error
