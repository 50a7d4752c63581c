"""Fixtures chain credentials -> mocks -> clients -> tables and buckets -> a stored batch."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from dicom_store_contract import metrics
from dicom_store_contract import tables as contract_tables
from moto import mock_aws
from support.aws import create_table
from support.batches import write_batch

from functions import healthimaging
from functions import settings as runtime
from functions.tracking import tracking as tables_of

from .fake_healthimaging import FakeHealthImaging

EVENTS = Path(__file__).parents[1] / "events"
REGION = "us-east-1"
DICOM_BUCKET = "dicom-bucket"
RESULTS_BUCKET = "results-bucket"
DICOM_PREFIX = "site a/"  # a space, so S3 event keys arrive URL-encoded
BATCH_ID = "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
DATASTORE_ID = "0123456789abcdef0123456789abcdef"
ROLE_ARN = "arn:aws:iam::123456789012:role/ImportJobDataAccessRole"
OTHER_BATCH_IDS = [f"20261123T19050{n}Z-{n:032x}" for n in range(1, 4)]


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def aws(aws_credentials):
    with mock_aws():
        yield


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=DICOM_BUCKET)
    client.create_bucket(Bucket=RESULTS_BUCKET)
    return client


@pytest.fixture
def tables(aws):
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, "DicomImportJobTable", contract_tables.JOB_ID, contract_tables.JOB_INDEXES)
    create_table(dynamodb, "DicomInstanceTable", contract_tables.SOP_INSTANCE_UID, contract_tables.INSTANCE_INDEXES)
    return dynamodb


@pytest.fixture
def state_machine(aws):
    sfn = boto3.client("stepfunctions", region_name=REGION)
    definition = {"StartAt": "TriggerImport", "States": {"TriggerImport": {"Type": "Pass", "End": True}}}
    return sfn.create_state_machine(
        name="ImportWorkflow",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/workflow",
    )["stateMachineArn"]


@pytest.fixture
def environment(monkeypatch, s3, tables, state_machine):
    for name, value in {
        "JOB_TABLE_NAME": "DicomImportJobTable",
        "INSTANCE_TABLE_NAME": "DicomInstanceTable",
        "STATE_MACHINE_ARN": state_machine,
        "DATASTORE_ID": DATASTORE_ID,
        "DATA_ACCESS_ROLE_ARN": ROLE_ARN,
        "DICOM_BUCKET": DICOM_BUCKET,
        "DICOM_PREFIX": DICOM_PREFIX,
        "RESULTS_BUCKET": RESULTS_BUCKET,
        "SWEEP_MIN_AGE_MINUTES": "30",
        "POWERTOOLS_SERVICE_NAME": "dicom-store-scp-pipeline",
        "POWERTOOLS_METRICS_NAMESPACE": metrics.NAMESPACE,
    }.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    healthimaging.import_jobs.cache_clear()
    yield runtime.settings()
    runtime.reset()
    healthimaging.import_jobs.cache_clear()


@pytest.fixture
def sfn(environment):
    return runtime.client("stepfunctions")


@pytest.fixture
def tracking(environment):
    return tables_of()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake_ahi(environment, s3, clock, monkeypatch):
    """The fake, wired in wherever the handlers ask for HealthImaging."""
    fake = FakeHealthImaging(s3, DATASTORE_ID, clock=clock)
    for module in ("functions.start_import_job", "functions.check_status"):
        monkeypatch.setattr(f"{module}.import_jobs", lambda: fake)
    return fake


@dataclass
class LambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"


@pytest.fixture
def context():
    return LambdaContext()


# --- batches ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    batch_id: str
    manifest_key: str
    manifest: dict[str, Any]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [instance["sopInstanceUID"] for instance in self.manifest["instances"]]

    def s3_event(self) -> dict[str, Any]:
        event = copy.deepcopy(load_event("s3_manifest_created.json"))
        event["Records"][0]["s3"]["object"]["key"] = self.manifest_key.replace(" ", "+")
        return event

    def execution_input(self) -> dict[str, Any]:
        return {
            "batchId": self.batch_id,
            "bucket": DICOM_BUCKET,
            "manifestKey": self.manifest_key,
            "prefix": self.manifest["prefix"],
            "polling": {"waitSeconds": 0, "maxPolls": 10, "count": 0},
        }


def store_batch(
    s3: Any, batch_id: str = BATCH_ID, count: int = 3, corrupt: int = 0, write_manifest: bool = True
) -> Batch:
    """Objects and manifest in the layout of docs/contracts.md, as the SCP writes them."""
    key, manifest = write_batch(s3, DICOM_BUCKET, DICOM_PREFIX, batch_id, count, corrupt, write_manifest)
    return Batch(batch_id, key, manifest)
