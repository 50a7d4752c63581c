"""Fixtures chain: credentials -> moto -> the template's resources (tables, buckets, state machine) -> pipeline."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from typing import Any

import boto3
import pydicom
import pytest
from moto import mock_aws
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from support.aws import FAKE_CREDENTIALS, load_fake_healthimaging
from support.cfn import REGION, Deployment, rendered_template
from support.pipeline import Pipeline

DATASTORE_ID = "0123456789abcdef0123456789abcdef"
DATA_ACCESS_ROLE_ARN = "arn:aws:iam::123456789012:role/dicom-scp-HealthImagingDataAccessRole-1ABC"
RESULTS_BUCKET = "dicom-scp-importresultsbucket-1abc"
STATE_MACHINE_NAME = "ImportWorkflow-1ABCDEF"
DICOM_PREFIX = "site-a/"


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return rendered_template()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


def create_stack_resources(template: dict[str, Any], endpoint_url: str | None = None) -> Deployment:
    """Stand-ins for the stack's tables, buckets and state machine, made from the template's own definitions."""
    clients = {
        name: boto3.client(name, region_name=REGION, endpoint_url=endpoint_url)
        for name in ("s3", "dynamodb", "stepfunctions")
    }
    deployment = Deployment(template, parameters={"DICOMPrefix": DICOM_PREFIX})
    for logical_id, table in deployment.of_type("AWS::DynamoDB::Table").items():
        props = deployment.value(table["Properties"])
        name = f"dicom-scp-{logical_id}-1ABC"
        arn = clients["dynamodb"].create_table(
            TableName=name,
            BillingMode=props["BillingMode"],
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            GlobalSecondaryIndexes=props.get("GlobalSecondaryIndexes", []),
        )["TableDescription"]["TableArn"]
        deployment.resources.update({logical_id: name, f"{logical_id}.Arn": arn})

    definition = {"StartAt": "TriggerImport", "States": {"TriggerImport": {"Type": "Pass", "End": True}}}
    machine_arn = clients["stepfunctions"].create_state_machine(
        name=STATE_MACHINE_NAME,
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/dicom-scp-ImportWorkflowRole-1ABC",
    )["stateMachineArn"]
    deployment.resources.update(
        {
            "ImportWorkflow": machine_arn,
            "ImportWorkflow.Name": STATE_MACHINE_NAME,
            "ImportResultsBucket": RESULTS_BUCKET,
            "ImportResultsBucket.Arn": f"arn:aws:s3:::{RESULTS_BUCKET}",
            "Datastore.DatastoreId": DATASTORE_ID,
            "HealthImagingDataAccessRole.Arn": DATA_ACCESS_ROLE_ARN,
        }
    )
    for bucket in (deployment.output("DICOMBucketName"), RESULTS_BUCKET):
        clients["s3"].create_bucket(Bucket=bucket)
    return deployment


@pytest.fixture
def deployment(aws_credentials: None, template: dict[str, Any]) -> Any:
    with mock_aws():
        yield create_stack_resources(template)


@pytest.fixture
def s3(deployment: Deployment) -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def fake_healthimaging(s3: Any) -> Any:
    return load_fake_healthimaging()(s3, DATASTORE_ID)


@pytest.fixture
def pipeline(deployment: Deployment, fake_healthimaging: Any, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    return Pipeline(deployment, fake_healthimaging, monkeypatch)


# --- batches as the SCP stores them ----------------------------------------------------------------------


def part10(study: str, series: str, sop: str) -> bytes:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_batch(s3: Any, bucket: str, batch_id: str, count: int, write_manifest: bool = True) -> dict[str, Any]:
    """Objects, then the manifest, in the layout of docs/contracts.md; returns the manifest."""
    prefix = f"{DICOM_PREFIX}incoming/{batch_id}/"
    study, series = generate_uid(), generate_uid()
    instances = []
    for _ in range(count):
        sop = generate_uid()
        body = part10(study, series, sop)
        key = f"{prefix}{study}/{series}/{sop}.dcm"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        instances.append(
            {
                "key": key,
                "sopClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "sopInstanceUID": sop,
                "studyInstanceUID": study,
                "seriesInstanceUID": series,
                "studyDate": "20040119",
                "transferSyntaxUID": "1.2.840.10008.1.2.1",
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
    manifest = {
        "manifestVersion": 1,
        "batchId": batch_id,
        "prefix": prefix,
        "callingAETitle": "MODALITY1",
        "calledAETitle": "STORESCP",
        "peerAddress": "10.0.1.23",
        "peerPort": 50123,
        "startedAt": "2026-11-23T19:05:01.123456Z",
        "endedAt": "2026-11-23T19:05:09.654321Z",
        "endReason": "released",
        "instanceCount": count,
        "totalBytes": sum(i["size"] for i in instances),
        "instances": instances,
    }
    if write_manifest:
        s3.put_object(Bucket=bucket, Key=f"{DICOM_PREFIX}manifests/{batch_id}.json", Body=json.dumps(manifest))
    return manifest
