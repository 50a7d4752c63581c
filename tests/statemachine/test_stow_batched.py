"""IngestMode stow-batched: the template's workflow run by moto's interpreter, its Lambda tasks answered by the real
StoreBatch and RecordFailure functions over moto's S3 and DynamoDB, storing into the StoreDICOM fake over loopback."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from dicom_store_contract import tables as contract_tables
from support.aws import create_table
from support.batches import write_batch
from support.fake_stow import FakeStow

from functions import record_failure, store_batch
from functions.settings import Settings
from functions.tracking import Tracking, stow_job_id

from .conftest import REGION

BUCKET = "dicom"
PREFIX = "site-a/"
BATCH_ID = "20261207T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
DATASTORE_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def fake():
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


@pytest.fixture
def pipeline(workflow, lambda_script, fake, monkeypatch):
    """The bucket, the tables, a received batch of five; StoreBatch and RecordFailure as the real functions."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    create_table(dynamodb, "jobs", contract_tables.JOB_ID, contract_tables.JOB_INDEXES)
    create_table(dynamodb, "instances", contract_tables.SOP_INSTANCE_UID, contract_tables.INSTANCE_INDEXES)
    repository = Tracking(dynamodb, "jobs", "instances")
    config = Settings(
        job_table_name="jobs",
        instance_table_name="instances",
        datastore_id=DATASTORE_ID,
        dicom_bucket=BUCKET,
        dicom_prefix=PREFIX,
        ingest_mode="stow-batched",
        ahi_stow_url=fake.base_url,
    )
    manifest_key, manifest = write_batch(s3, BUCKET, PREFIX, BATCH_ID, 5)
    from functions.contract import read_manifest

    repository.record_received(read_manifest(s3, BUCKET, manifest_key, PREFIX))
    monkeypatch.setattr(store_batch, "MAX_INSTANCES_PER_REQUEST", 2)

    def store(task_input: dict[str, Any]) -> dict[str, Any]:
        # Time for one answered request per run (503s aside): each run stops after it, so the workflow's loop
        # carries the batch on.
        sent_before = len(fake.requests)

        def remaining() -> float:
            answered = [r for r in fake.requests[sent_before:] if not r.behaviour.startswith("http:5")]
            return 60.0 if answered else 900.0

        return store_batch.store_batch(
            task_input,
            s3=s3,
            store=store_batch.HttpStoreDicom(fake.base_url, REGION),
            repository=repository,
            config=config,
            remaining=remaining,
            sleep=lambda seconds: None,
        )

    def give_up(task_input: dict[str, Any]) -> dict[str, Any]:
        return record_failure.record_failure(task_input, s3=s3, repository=repository, config=config)

    execution_input = {
        "batchId": BATCH_ID,
        "bucket": BUCKET,
        "manifestKey": manifest_key,
        "prefix": manifest["prefix"],
    }
    return repository, manifest, execution_input, store, give_up


def _states(repository: Tracking, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    items = [repository.get_instance(i["sopInstanceUID"]) or {} for i in manifest["instances"]]
    return [(item.get("state", ""), item.get("failureReason", "")) for item in items]


def test_the_workflow_stores_the_batch_by_stow_rs_until_every_instance_is_final(
    workflow, lambda_script, fake, pipeline
):
    repository, manifest, execution_input, store, _ = pipeline
    # The second request: HealthImaging refuses both of its instances; the third: unavailable for all the
    # step's own attempts, so the workflow's Retry runs it again.
    fake.script = ["store", "fail:C000", "http:503", "http:503", "http:503"]
    lambda_script.returns("StoreBatch", *[store] * 5)
    state_machine = workflow.create(ingest_mode="stow-batched")
    execution = workflow.run(state_machine, BATCH_ID, execution_input, timeout=30)
    assert execution["status"] == "SUCCEEDED", execution
    assert workflow.states_entered(execution["executionArn"]) == [
        "TriggerImport",
        "IngestMode",
        "ChooseIngest",
        *["StoreBatch", "IsStored"] * 2,
        "StoreBatch",  # HealthImagingUnavailable, retried by the state's Retry (one state entered)
        "IsStored",
        "Stored",
    ]
    refused = "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000"
    assert _states(repository, manifest) == [
        ("IMPORTED", ""),
        ("IMPORTED", ""),
        ("FAILED", refused),
        ("FAILED", refused),
        ("IMPORTED", ""),
    ]
    uids = [i["sopInstanceUID"] for i in manifest["instances"]]
    assert sorted(fake.held) == sorted(uids[:2] + uids[4:])
    # Each run continued from the cursor the run before returned, with the stack's mode in its input.
    calls = lambda_script.called("StoreBatch")
    assert [c.get("importJob", {}).get("cursor") for c in calls] == [None, 2, 4, 4]
    assert {c["ingestMode"] for c in calls} == {"stow-batched"}
    job = repository.get_job(stow_job_id(BATCH_ID))
    assert job["jobStatus"] == "COMPLETED" and (job["importedCount"], job["failedCount"]) == (3, 2)
    assert json.loads(execution["output"])["importJob"]["done"] is True


def test_a_refused_request_ends_in_record_failure_with_every_instance_failed(workflow, lambda_script, fake, pipeline):
    repository, manifest, execution_input, store, give_up = pipeline
    fake.default = "http:403"
    lambda_script.returns("StoreBatch", store)
    lambda_script.returns("RecordFailure", give_up)
    state_machine = workflow.create(ingest_mode="stow-batched")
    execution = workflow.run(state_machine, BATCH_ID, execution_input, timeout=30)
    assert execution["status"] == "FAILED" and execution["error"] == "ImportAbandoned"
    states = _states(repository, manifest)
    assert {state for state, _ in states} == {"FAILED"}
    # RecordFailure's reason: the error's name and Lambda's report of it (which quotes the step's message).
    assert all(reason.startswith("ImportJobRejected: ") and "HTTP 403" in reason for _, reason in states)
    assert fake.held == {}
    # The job item StoreBatch made on its first run is the batch's, failed with the same reason.
    job = repository.get_job(stow_job_id(BATCH_ID))
    assert job["jobStatus"] == "FAILED" and job["message"].startswith("ImportJobRejected")


def test_the_import_mode_never_enters_store_batch(workflow, lambda_script):
    lambda_script.returns("StartImportJob", {"jobId": "job1", "jobStatus": "SUBMITTED", "outputS3Uri": "s3://r/b/"})
    lambda_script.returns(
        "CheckStatus", lambda task_input: {**task_input["polling"], "jobStatus": "COMPLETED", "ended": True}
    )
    state_machine = workflow.create(ingest_mode="import")
    execution_input = {"batchId": BATCH_ID, "bucket": BUCKET, "manifestKey": "m", "prefix": "p"}
    execution = workflow.run(state_machine, BATCH_ID, execution_input)
    assert execution["status"] == "SUCCEEDED"
    assert lambda_script.called("StoreBatch") == []
