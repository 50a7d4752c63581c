"""Fixtures chain: credentials -> moto -> the template's resources (tables, buckets, state machine) -> pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from support.aws import load_fake_healthimaging
from support.batches import write_batch
from support.cfn import REGION, Deployment, rendered_template
from support.moto import MotoServer
from support.pipeline import Pipeline

DATASTORE_ID = "0123456789abcdef0123456789abcdef"
DATA_ACCESS_ROLE_ARN = "arn:aws:iam::123456789012:role/dicom-scp-HealthImagingDataAccessRole-1ABC"
RESULTS_BUCKET = "dicom-scp-importresultsbucket-1abc"
STATE_MACHINE_NAME = "ImportWorkflow-1ABCDEF"
DICOM_PREFIX = "site-a/"


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return rendered_template()


def create_stack_resources(
    template: dict[str, Any], endpoint_url: str | None = None, parameters: dict[str, str] | None = None
) -> Deployment:
    """Stand-ins for the stack's tables, buckets and state machine, made from the template's own definitions."""
    clients = {
        name: boto3.client(name, region_name=REGION, endpoint_url=endpoint_url)
        for name in ("s3", "dynamodb", "stepfunctions")
    }
    deployment = Deployment(template, parameters={"DICOMPrefix": DICOM_PREFIX, **(parameters or {})})
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


# -- the same on a real moto_server over HTTP, for tests whose SCP is a separate process ------------------------
# A module takes these with `def deployment(stack): return stack`: conftest's s3, fake and pipeline then reach
# moto_server through botocore's AWS_ENDPOINT_URL, as the SCP does. A module may override moto_server.


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto_server.log")
    yield server
    server.stop()


@pytest.fixture
def stack(aws_credentials: None, template: dict[str, Any], moto_server: MotoServer, monkeypatch: Any) -> Deployment:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    return create_stack_resources(template, endpoint_url=moto_server.endpoint)


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


def store_batch(s3: Any, bucket: str, batch_id: str, count: int, write_manifest: bool = True) -> dict[str, Any]:
    """Objects, then the manifest, in the layout of docs/contracts.md; returns the manifest."""
    return write_batch(s3, bucket, DICOM_PREFIX, batch_id, count, write_manifest=write_manifest)[1]
