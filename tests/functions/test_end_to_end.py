"""One batch through TriggerImport, StartImportJob and CheckStatus in workflow order, on one process."""

import json

from support.batches import as_version_1

from functions import check_status, start_import_job, trigger_import
from functions.tracking import InstanceState

from .conftest import BATCH_ID, DICOM_BUCKET, store_batch


def run_workflow(sfn, state_machine_arn, fake_ahi, context, clock, max_polls=10):
    """Drives the handlers the way the state machine does, from the execution TriggerImport started."""
    (execution,) = sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
    state = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    state["polling"] = {"waitSeconds": 0, "maxPolls": max_polls, "count": 0}  # the TriggerImport Pass state
    state["importJob"] = start_import_job.handler(state, context)
    while True:
        clock.now += 60  # WaitForCompletion
        polling = {**state["polling"], "count": state["polling"]["count"] + 1}
        task_input = {key: state[key] for key in ("batchId", "bucket", "manifestKey")} | {
            "jobId": state["importJob"]["jobId"],
            "outputS3Uri": state["importJob"]["outputS3Uri"],
            "polling": polling,
        }
        state["polling"] = check_status.handler(task_input, context)
        if state["polling"]["ended"] or state["polling"]["count"] >= max_polls:
            return state


def test_every_instance_of_a_stored_batch_ends_imported(environment, s3, sfn, tracking, fake_ahi, context, clock):
    batch = store_batch(s3, count=5)
    trigger_import.handler(batch.s3_event(), context)

    final = run_workflow(sfn, environment.state_machine_arn, fake_ahi, context, clock)

    assert final["polling"]["jobStatus"] == "COMPLETED"
    assert final["polling"]["succeeded"] is True
    summary = json.loads(
        s3.get_object(
            Bucket=environment.results_bucket,
            Key=f"{BATCH_ID}/{fake_ahi.datastore_id}-DicomImport-{final['importJob']['jobId']}/job-output-manifest.json",
        )["Body"].read()
    )["jobSummary"]
    (image_set,) = summary["imageSetsSummary"]
    for uid in batch.sop_instance_uids:
        item = tracking.get_instance(uid)
        assert item["state"] == InstanceState.IMPORTED
        assert item["imageSetId"] == image_set["imageSetId"]
        assert item["jobId"] == final["importJob"]["jobId"]
    job = tracking.get_job(final["importJob"]["jobId"])
    assert (job["jobStatus"], job["instanceCount"], job["importedCount"], job["failedCount"]) == (
        "COMPLETED",
        5,
        5,
        0,
    )


def test_a_batch_sealed_before_the_checksum_change_still_imports(
    environment, s3, sfn, tracking, fake_ahi, context, clock
):
    # Written by an SCP of the version before CRC64NVME (manifest version 1, `sha256`), read after the upgrade.
    batch = store_batch(s3, count=3)
    keys = [instance["key"] for instance in batch.manifest["instances"]]
    bodies = {key: s3.get_object(Bucket=DICOM_BUCKET, Key=key)["Body"].read() for key in keys}
    s3.put_object(Bucket=DICOM_BUCKET, Key=batch.manifest_key, Body=as_version_1(batch.manifest, bodies))

    assert trigger_import.handler(batch.s3_event(), context)["batches"][0]["started"] is True
    final = run_workflow(sfn, environment.state_machine_arn, fake_ahi, context, clock)

    assert (final["polling"]["jobStatus"], final["polling"]["succeeded"]) == ("COMPLETED", True)
    assert [tracking.get_instance(uid)["state"] for uid in batch.sop_instance_uids] == [InstanceState.IMPORTED] * 3
    job = tracking.get_job(final["importJob"]["jobId"])
    assert (job["instanceCount"], job["importedCount"], job["failedCount"]) == (3, 3, 0)


def test_the_same_manifest_event_twice_gives_one_execution_and_one_import_job(
    environment, s3, sfn, tracking, fake_ahi, context, clock
):
    batch = store_batch(s3, count=2)
    event = batch.s3_event()
    trigger_import.handler(event, context)
    trigger_import.handler(event, context)

    run_workflow(sfn, environment.state_machine_arn, fake_ahi, context, clock)
    # A re-driven StartImportJob (Lambda retry) after the first succeeded.
    clock.now += 1
    start_import_job.handler({**batch.execution_input()}, context)

    assert len(sfn.list_executions(stateMachineArn=environment.state_machine_arn)["executions"]) == 1
    assert len(fake_ahi.jobs) == 1
    assert len(tracking.jobs_for_batch(BATCH_ID)) == 1
