"""The template's Lambda functions, as deployed: each handler with exactly its template environment and role.

Every AWS::Lambda::Function of the rendered template runs its Handler against moto (S3, DynamoDB, Step
Functions), the HealthImaging fake and the StoreDICOM fake, with only the environment variables the template gives
it (values: the stand-in resources' names and ARNs). The API calls each makes are then checked against its role's
policy. The stack is deployed with IngestMode stow-batched, where StoreBatch's grants exist (the import functions'
grants do not depend on the mode).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from dicom_store_contract import layout
from moto import mock_aws
from support.cfn import REGION
from support.fake_stow import FakeStow
from support.iam import ApiCall, denied, permissions
from support.pipeline import Pipeline, load_event, manifest_created_event

from template_gen.pipeline import FUNCTIONS

from .conftest import DATASTORE_ID, DICOM_PREFIX, create_stack_resources, store_batch

BATCH_IMPORTED = "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
BATCH_TIMED_OUT = "20261123T190502Z-1f6c1d2e3a4b4c5d8e9f00112233aabb"
BATCH_ABANDONED = "20261123T190503Z-2f6c1d2e3a4b4c5d8e9f00112233aabb"
BATCH_STOWED = "20261123T190504Z-3f6c1d2e3a4b4c5d8e9f00112233aabb"
BATCH_FORBIDDEN = "20261123T190505Z-4f6c1d2e3a4b4c5d8e9f00112233aabb"


@pytest.fixture
def deployment(aws_credentials: None, template: dict[str, Any]) -> Any:
    with mock_aws():
        yield create_stack_resources(template, parameters={"IngestMode": "stow-batched"})


@pytest.fixture
def fake_stow() -> Any:
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


def instance_item(table: str, uid: str) -> dict[str, Any]:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    item = dynamodb.get_item(TableName=table, Key={"sopInstanceUID": {"S": uid}}, ConsistentRead=True)["Item"]
    return {name: next(iter(value.values())) for name, value in item.items()}


def job_item(table: str, job_id: str) -> dict[str, Any]:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    item = dynamodb.get_item(TableName=table, Key={"jobId": {"S": job_id}}, ConsistentRead=True)["Item"]
    return {name: next(iter(value.values())) for name, value in item.items()}


def trigger(pipeline: Pipeline, s3: Any, bucket: str, batch_id: str) -> dict[str, Any]:
    key = layout.manifest_key(DICOM_PREFIX, batch_id)
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    return pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, key, size))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def store_by_stow(pipeline: Pipeline, s3: Any, fake: FakeStow, batch_id: str, monkeypatch: Any) -> dict[str, Any]:
    """A batch triggered and stored by StoreBatch (stow-batched) into the StoreDICOM fake; its StoreDICOM requests
    recorded as the API calls they are (the data store the template's AHI_STOW_URL names)."""
    from functions import store_batch as step

    bucket = pipeline.deployment.output("DICOMBucketName")
    batch = store_batch(s3, bucket, batch_id, count=2)
    trigger(pipeline, s3, bucket, batch_id)

    def to_fake(config: Any) -> Any:
        datastore = config.ahi_stow_url.rsplit("/datastore/", 1)[1]
        store = step.HttpStoreDicom(fake.base_url, REGION)
        send = store.post

        def post(body: Any, timeout: float) -> Any:
            call = ApiCall("medical-imaging", "StoreDICOM", {"datastoreId": datastore})
            pipeline.calls.setdefault("StoreBatchFunction", []).append(call)
            return send(body, timeout)

        store.post = post  # type: ignore[method-assign]
        return store

    monkeypatch.setattr(step, "store_dicom", to_fake)
    execution = {
        "batchId": batch_id,
        "bucket": bucket,
        "manifestKey": layout.manifest_key(DICOM_PREFIX, batch_id),
        "prefix": batch["prefix"],
        "ingestMode": "stow-batched",
    }
    try:
        return {"result": pipeline.invoke("StoreBatchFunction", execution), "batch": batch, "execution": execution}
    except Exception as error:  # the workflow's Catch: RecordFailure with the error
        execution["error"] = {"Error": type(error).__name__, "Cause": str(error)}
        pipeline.invoke("RecordFailureFunction", execution)
        return {"error": type(error).__name__, "batch": batch, "execution": execution}


def run_every_function(pipeline: Pipeline, s3: Any, monkeypatch: pytest.MonkeyPatch, fake: FakeStow) -> dict[str, Any]:
    """One batch imported, one given up on by the polling bound, one abandoned and swept; one stored by StoreBatch,
    one StoreBatch was refused (RecordFailure)."""
    deployment = pipeline.deployment
    bucket = deployment.output("DICOMBucketName")
    instance_table = deployment.resources["DicomInstanceTable"]
    job_table = deployment.resources["DicomImportJobTable"]
    seen: dict[str, Any] = {"bucket": bucket}

    imported = store_batch(s3, bucket, BATCH_IMPORTED, count=3)
    seen["triggered"] = trigger(pipeline, s3, bucket, BATCH_IMPORTED)
    seen["received"] = [instance_item(instance_table, i["sopInstanceUID"])["state"] for i in imported["instances"]]
    sfn = boto3.client("stepfunctions", region_name=REGION)
    (execution,) = sfn.list_executions(stateMachineArn=deployment.resources["ImportWorkflow"])["executions"]
    seen["execution"] = sfn.describe_execution(executionArn=execution["executionArn"])
    final = pipeline.run_workflow(
        {
            "batchId": BATCH_IMPORTED,
            "bucket": bucket,
            "manifestKey": layout.manifest_key(DICOM_PREFIX, BATCH_IMPORTED),
            "prefix": imported["prefix"],
        }
    )
    seen["imported"] = [instance_item(instance_table, i["sopInstanceUID"]) for i in imported["instances"]]
    seen["imported_job"] = job_item(job_table, final["importJob"]["jobId"])

    # CheckStatus's event path, as WaitForCompletion and the stack's job event rule invoke it. moto never issued
    # this task token, so both wake-ups are refused (and logged): the calls are what the role checks below see.
    job_id = final["importJob"]["jobId"]
    seen["registered"] = pipeline.invoke(
        "CheckStatusFunction", {"waitForJobEvent": {"jobId": job_id, "taskToken": "token-of-the-wait"}}
    )
    seen["wait_token"] = job_item(job_table, job_id).get("waitToken")
    event = load_event("import_job_completed.json")
    event["detail"].update(jobId=job_id, datastoreId=pipeline.fake_healthimaging.datastore_id)
    seen["relayed"] = pipeline.invoke("CheckStatusFunction", event)
    seen["wake_ups"] = [
        (call.params["taskToken"], json.loads(call.params["output"]))
        for call in pipeline.calls["CheckStatusFunction"]
        if call.operation == "SendTaskSuccess"
    ]

    timed_out = store_batch(s3, bucket, BATCH_TIMED_OUT, count=2)
    trigger(pipeline, s3, bucket, BATCH_TIMED_OUT)
    execution_input = {
        "batchId": BATCH_TIMED_OUT,
        "bucket": bucket,
        "manifestKey": layout.manifest_key(DICOM_PREFIX, BATCH_TIMED_OUT),
        "prefix": timed_out["prefix"],
        "polling": {"waitSeconds": 0, "maxPolls": 1, "count": 0},
    }
    started = pipeline.invoke("StartImportJobFunction", execution_input)
    failure_input = copy.deepcopy(load_event("record_failure_input.json"))
    failure_input.update({key: execution_input[key] for key in ("batchId", "bucket", "manifestKey", "prefix")})
    failure_input["importJob"] = started
    pipeline.invoke("RecordFailureFunction", failure_input)
    seen["timed_out"] = [instance_item(instance_table, i["sopInstanceUID"])["state"] for i in timed_out["instances"]]
    seen["timed_out_job"] = job_item(job_table, started["jobId"])

    abandoned = store_batch(s3, bucket, BATCH_ABANDONED, count=2, write_manifest=False)

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return datetime.now(tz or UTC) + timedelta(days=1)  # the task died a day ago

    monkeypatch.setattr("functions.sweeper.datetime", Later)
    seen["swept"] = pipeline.invoke("SweeperFunction", load_event("scheduled_sweep.json"))
    seen["abandoned"] = abandoned

    seen["stowed"] = store_by_stow(pipeline, s3, fake, BATCH_STOWED, monkeypatch)
    seen["stowed_items"] = [
        instance_item(instance_table, i["sopInstanceUID"]) for i in seen["stowed"]["batch"]["instances"]
    ]
    fake.default = "http:403"
    seen["forbidden"] = store_by_stow(pipeline, s3, fake, BATCH_FORBIDDEN, monkeypatch)
    seen["forbidden_items"] = [
        instance_item(instance_table, i["sopInstanceUID"]) for i in seen["forbidden"]["batch"]["instances"]
    ]
    seen["forbidden_job"] = job_item(job_table, "stow-" + BATCH_FORBIDDEN)
    return seen


def test_every_function_does_its_job_with_only_the_template_environment(
    pipeline: Pipeline, s3: Any, monkeypatch: pytest.MonkeyPatch, fake_stow: FakeStow
) -> None:
    assert set(pipeline.functions()) == {fn.logical_id for fn in FUNCTIONS}
    seen = run_every_function(pipeline, s3, monkeypatch, fake_stow)

    # TriggerImport: instances recorded, the workflow started under the batch id.
    assert seen["triggered"]["batches"][0]["started"] is True
    assert seen["received"] == ["RECEIVED"] * 3
    assert seen["execution"]["name"] == BATCH_IMPORTED
    # StartImportJob and CheckStatus: every instance imported into its image set, the job item complete.
    assert [item["state"] for item in seen["imported"]] == ["IMPORTED"] * 3
    assert all(item["imageSetId"] for item in seen["imported"])
    job = seen["imported_job"]
    assert (job["jobStatus"], job["instanceCount"], job["importedCount"], job["failedCount"]) == (
        "COMPLETED",
        "3",
        "3",
        "0",
    )
    assert job["datastoreId"] == pipeline.fake_healthimaging.datastore_id
    assert job["dataAccessRoleArn"] == pipeline.deployment.resources["HealthImagingDataAccessRole.Arn"]
    # CheckStatus, woken by events: the token stored on the job, the ended job seen, the event matched to it.
    assert seen["registered"]["registered"] is True
    assert seen["registered"]["jobStatus"] == "COMPLETED"
    assert seen["wait_token"] == "token-of-the-wait"
    # Both paths tried to wake the wait with its own token: the registration (the job had ended) and the event.
    assert seen["wake_ups"] == [("token-of-the-wait", {"jobId": job["jobId"], "jobStatus": "COMPLETED"})] * 2
    # RecordFailure: the polling bound recorded on the job and every instance.
    assert seen["timed_out"] == ["TIMED_OUT"] * 2
    assert seen["timed_out_job"]["jobStatus"] == "TIMED_OUT"
    # Sweeper: the abandoned batch got its manifest.
    assert seen["swept"]["sealed"] == [BATCH_ABANDONED]
    manifest = s3.get_object(Bucket=seen["bucket"], Key=layout.manifest_key(DICOM_PREFIX, BATCH_ABANDONED))
    assert b'"swept"' in manifest["Body"].read()
    # StoreBatch: the batch stored by STOW-RS, each instance IMPORTED into the image set the response names.
    assert seen["stowed"]["result"]["done"] is True
    assert {(item["state"], item["jobId"]) for item in seen["stowed_items"]} == {("IMPORTED", "stow-" + BATCH_STOWED)}
    assert all(item["imageSetId"] for item in seen["stowed_items"])
    assert sorted(fake_stow.held) == sorted(item["sopInstanceUID"] for item in seen["stowed_items"])
    # Refused (403): RecordFailure records every instance and the step's job item FAILED.
    assert seen["forbidden"]["error"] == "ImportJobRejected"
    assert {item["state"] for item in seen["forbidden_items"]} == {"FAILED"}
    assert seen["forbidden_job"]["jobStatus"] == "FAILED"


def test_every_call_a_function_makes_is_allowed_by_its_role(
    pipeline: Pipeline, s3: Any, monkeypatch: pytest.MonkeyPatch, fake_stow: FakeStow
) -> None:
    run_every_function(pipeline, s3, monkeypatch, fake_stow)
    deployment = pipeline.deployment
    assert set(pipeline.calls) == set(pipeline.functions())
    problems = {}
    for function, calls in pipeline.calls.items():
        assert calls, function
        statements = deployment.role_statements(deployment.role_of(function))
        missing = denied(statements, calls)
        if missing:
            problems[function] = missing
    assert not problems, "\n".join(f"{fn}: {line}" for fn, lines in problems.items() for line in lines)


def test_each_function_is_granted_exactly_the_dynamodb_actions_it_calls(
    pipeline: Pipeline, s3: Any, monkeypatch: pytest.MonkeyPatch, fake_stow: FakeStow
) -> None:
    run_every_function(pipeline, s3, monkeypatch, fake_stow)
    deployment = pipeline.deployment
    for function in pipeline.functions():
        called = {
            (needed.action, needed.resource)
            for call in pipeline.calls.get(function, [])
            if call.service == "dynamodb"
            for needed in permissions(call)
        }
        granted = {
            (action, resource)
            for statement in deployment.role_statements(deployment.role_of(function))
            for action in _as_list(statement["Action"])
            if action.startswith("dynamodb:")
            for resource in _as_list(statement["Resource"])
        }
        assert granted == called, function
