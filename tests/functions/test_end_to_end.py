"""One batch through TriggerImport, StartImportJob and CheckStatus in workflow order, on one process."""

import json

from dicom_store_contract import layout
from support.batches import as_version_1, part10

from functions import check_status, start_import_job, trigger_import
from functions.tracking import InstanceState

from .conftest import BATCH_ID, DICOM_BUCKET, DICOM_PREFIX, store_batch


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


def _rewrite_manifest(s3, batch, change):
    document = json.loads(json.dumps(batch.manifest))
    change(document)
    s3.put_object(Bucket=DICOM_BUCKET, Key=batch.manifest_key, Body=json.dumps(document).encode())


def test_a_batch_with_bad_entries_imports_the_rest_and_keeps_each_reason(
    environment, s3, sfn, tracking, fake_ahi, context, clock
):
    # Issue 23: one bad entry used to make TriggerImport refuse the whole batch, acknowledged instances and all.
    batch = store_batch(s3, count=4)
    good, malformed, not_stored, also_good = batch.manifest["instances"]
    _rewrite_manifest(s3, batch, lambda m: m["instances"][1].pop("studyInstanceUID"))
    s3.delete_object(Bucket=DICOM_BUCKET, Key=not_stored["key"])

    assert trigger_import.handler(batch.s3_event(), context)["batches"][0]["started"] is True
    final = run_workflow(sfn, environment.state_machine_arn, fake_ahi, context, clock)

    assert final["polling"]["jobStatus"] == "COMPLETED"
    for instance in (good, also_good):
        item = tracking.get_instance(instance["sopInstanceUID"])
        assert (item["state"], item["jobId"]) == (InstanceState.IMPORTED, final["importJob"]["jobId"])
    # Each rejected entry ends FAILED with the reason it was rejected for, through StartImportJob and CheckStatus.
    item = tracking.get_instance(malformed["sopInstanceUID"])
    assert (item["state"], item["failureReason"]) == (
        InstanceState.FAILED,
        "manifest entry rejected: instances[1]: studyInstanceUID is missing",
    )
    item = tracking.get_instance(not_stored["sopInstanceUID"])
    assert (item["state"], item["failureReason"]) == (
        InstanceState.FAILED,
        f"manifest entry rejected: {not_stored['key']}: {trigger_import.NOT_STORED}",
    )
    job = tracking.get_job(final["importJob"]["jobId"])
    # Listed and kept: 3 (one not stored, so not imported); set apart by the manifest check: 1.
    assert (job["instanceCount"], job["rejectedCount"], job["importedCount"], job["failedCount"]) == (3, 1, 2, 1)


def test_a_sop_instance_stored_twice_in_a_batch_is_tracked_by_the_copy_listed_first(
    environment, s3, sfn, tracking, fake_ahi, context, clock
):
    batch = store_batch(s3, count=2)
    first = batch.manifest["instances"][0]
    other_series = "1.2.826.0.1.3680043.8.498.9"
    copy_key = layout.instance_key(
        DICOM_PREFIX, batch.batch_id, first["studyInstanceUID"], other_series, first["sopInstanceUID"]
    )
    body = part10(first["studyInstanceUID"], other_series, first["sopInstanceUID"])
    s3.put_object(Bucket=DICOM_BUCKET, Key=copy_key, Body=body)
    copy = {**first, "key": copy_key, "seriesInstanceUID": other_series, "size": len(body)}
    _rewrite_manifest(s3, batch, lambda m: (m["instances"].append(copy), m.update(instanceCount=3)))

    trigger_import.handler(batch.s3_event(), context)
    final = run_workflow(sfn, environment.state_machine_arn, fake_ahi, context, clock)

    # AHI imported both objects (it imports the prefix); the item reports the first copy's outcome and names the
    # other copy instead of being overwritten by it.
    output = read_success_records(s3, environment.results_bucket, fake_ahi, final)
    assert {record["inputFile"] for record in output} >= {first["key"], copy_key}
    item = tracking.get_instance(first["sopInstanceUID"])
    first_outcome = next(record for record in output if record["inputFile"] == first["key"])
    assert (item["state"], item["s3Key"], item["imageSetId"]) == (
        InstanceState.IMPORTED,
        first["key"],
        first_outcome["importResponse"]["imageSetId"],
    )
    assert item["duplicateKeys"] == [copy_key]
    job = tracking.get_job(final["importJob"]["jobId"])
    assert (job["instanceCount"], job["rejectedCount"], job["importedCount"], job["failedCount"]) == (2, 1, 2, 0)


def read_success_records(s3, results_bucket, fake_ahi, final):
    folder = f"{BATCH_ID}/{fake_ahi.datastore_id}-DicomImport-{final['importJob']['jobId']}/"
    body = s3.get_object(Bucket=results_bucket, Key=f"{folder}SUCCESS/success.ndjson")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines() if line]
