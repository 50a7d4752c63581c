"""StartImportJob, CheckStatus and RecordFailure handlers against moto and the HealthImaging fake."""

import pytest
from dicom_store_contract.executions import FOLLOWED_JOB

from functions import check_status, record_failure, start_import_job, trigger_import
from functions.healthimaging import ImportJobRejected, ImportJobThrottled
from functions.tracking import InstanceState, JobStatus

from .conftest import (
    BATCH_ID,
    DATASTORE_ID,
    DICOM_BUCKET,
    OTHER_BATCH_IDS,
    RESULTS_BUCKET,
    ROLE_ARN,
    load_event,
    store_batch,
)

OTHER_BATCHES = OTHER_BATCH_IDS


@pytest.fixture
def triggered(environment, s3, context):
    batch = store_batch(s3, count=3)
    trigger_import.handler(batch.s3_event(), context)
    return batch


def start(batch, context):
    return start_import_job.handler(batch.execution_input(), context)


def check(batch, started, context, count=1):
    task_input = {
        **batch.execution_input(),
        "jobId": started["jobId"],
        "outputS3Uri": started["outputS3Uri"],
        "polling": {"waitSeconds": 0, "maxPolls": 10, "count": count},
    }
    return check_status.handler(task_input, context)


def test_start_writes_the_job_item_and_marks_instances_importing(triggered, fake_ahi, tracking, context):
    started = start(triggered, context)

    assert started["inputS3Uri"] == f"s3://{DICOM_BUCKET}/site a/incoming/{BATCH_ID}/"
    assert started["outputS3Uri"] == f"s3://{RESULTS_BUCKET}/{BATCH_ID}/"
    job = tracking.get_job(started["jobId"])
    instance = triggered.manifest["instances"][0]
    assert job == {
        "jobId": started["jobId"],
        "jobStatus": "SUBMITTED",
        "submittedAt": job["submittedAt"],
        "inputS3Uri": started["inputS3Uri"],
        "outputS3Uri": started["outputS3Uri"],
        "datastoreId": DATASTORE_ID,
        "dataAccessRoleArn": ROLE_ARN,
        "studyDate": instance["studyDate"],
        "studyInstanceUID": instance["studyInstanceUID"],
        "seriesInstanceUID": instance["seriesInstanceUID"],
        "message": "",
        "batchId": BATCH_ID,
        "instanceCount": 3,
        "rejectedCount": 0,
        "importedCount": 0,
        "failedCount": 0,
    }
    for uid in triggered.sop_instance_uids:
        item = tracking.get_instance(uid)
        assert (item["state"], item["jobId"]) == (InstanceState.IMPORTING, started["jobId"])


def test_start_twice_gives_one_import_job(triggered, fake_ahi, tracking, context, clock):
    first = start(triggered, context)
    clock.now += 1
    second = start(triggered, context)
    assert first["jobId"] == second["jobId"]
    assert len(fake_ahi.jobs) == 1
    assert [job["jobId"] for job in tracking.jobs_for_batch(BATCH_ID)] == [first["jobId"]]


def test_a_re_drive_follows_the_job_it_names_without_starting_one(triggered, fake_ahi, tracking, context, clock):
    first = start(triggered, context)
    fake_ahi.by_client_token.clear()  # HealthImaging no longer answers the batch's clientToken with its job
    clock.now += 1
    followed = start_import_job.handler({**triggered.execution_input(), FOLLOWED_JOB: first["jobId"]}, context)
    assert followed["jobId"] == first["jobId"]
    assert fake_ahi.start_calls == 1
    assert [len(jobs) for jobs in fake_ahi.jobs_by_input.values()] == [1]
    for uid in triggered.sop_instance_uids:
        assert tracking.get_instance(uid)["jobId"] == first["jobId"]


def test_a_re_drive_never_follows_another_batchs_job(triggered, environment, s3, fake_ahi, context, clock):
    other = store_batch(s3, batch_id=OTHER_BATCHES[0], count=1)
    others_job = start(other, context)["jobId"]
    with pytest.raises(ImportJobRejected, match="not this batch"):
        start_import_job.handler({**triggered.execution_input(), FOLLOWED_JOB: others_job}, context)
    assert fake_ahi.start_calls == 1


def test_start_faster_than_the_quota_raises_the_retryable_error(environment, s3, fake_ahi, context, clock):
    # An account throttled at 1 request/s, burst 2 (AHI's first edition; limits has today's 40/80).
    fake_ahi.rate, fake_ahi.burst, fake_ahi.tokens = 1.0, 2, 2.0
    batches = [store_batch(s3, batch_id=batch_id, count=1) for batch_id in OTHER_BATCHES]
    start(batches[0], context)
    start(batches[1], context)  # the burst of 2
    with pytest.raises(ImportJobThrottled):
        start(batches[2], context)
    clock.now += 1.0
    assert start(batches[2], context)["jobStatus"] == "SUBMITTED"
    assert len(fake_ahi.jobs) == 3


def test_check_status_tracks_a_running_job(triggered, fake_ahi, tracking, context):
    started = start(triggered, context)
    result = check(triggered, started, context)
    assert (result["jobStatus"], result["ended"], result["count"]) == ("IN_PROGRESS", False, 1)
    assert tracking.get_job(started["jobId"])["jobStatus"] == "IN_PROGRESS"
    assert tracking.get_instance(triggered.sop_instance_uids[0])["state"] == InstanceState.IMPORTING


def test_completed_job_with_a_refused_file_fails_only_that_instance(environment, s3, fake_ahi, tracking, context):
    batch = store_batch(s3, count=3, corrupt=1)
    trigger_import.handler(batch.s3_event(), context)
    started = start(batch, context)
    check(batch, started, context)
    result = check(batch, started, context, count=2)

    assert result["jobStatus"] == "COMPLETED"
    assert (result["importedCount"], result["failedCount"], result["succeeded"]) == (2, 1, False)
    refused, *imported = batch.sop_instance_uids
    item = tracking.get_instance(refused)
    assert item["state"] == InstanceState.FAILED
    assert item["failureReason"].startswith("ValidationException")
    image_sets = {tracking.get_instance(uid)["imageSetId"] for uid in imported}
    assert len(image_sets) == 1 and image_sets != {""}
    assert all(tracking.get_instance(uid)["isPrimary"] is True for uid in imported)
    job = tracking.get_job(started["jobId"])
    assert (job["jobStatus"], job["importedCount"], job["failedCount"]) == ("COMPLETED", 2, 1)
    assert job["endedAt"]


def test_failed_job_fails_every_instance_with_its_message(triggered, fake_ahi, tracking, context):
    fake_ahi.fail_with = "Access denied to the input bucket"
    started = start(triggered, context)
    check(triggered, started, context)
    result = check(triggered, started, context, count=2)

    assert (result["jobStatus"], result["ended"], result["failedCount"]) == ("FAILED", True, 3)
    for uid in triggered.sop_instance_uids:
        item = tracking.get_instance(uid)
        assert (item["state"], item["failureReason"]) == (InstanceState.FAILED, "Access denied to the input bucket")
    job = tracking.get_job(started["jobId"])
    assert (job["jobStatus"], job["message"]) == ("FAILED", "Access denied to the input bucket")


def test_polling_bound_times_out_the_batch_but_keeps_settled_instances(triggered, fake_ahi, tracking, context):
    started = start(triggered, context)
    settled = triggered.sop_instance_uids[0]
    tracking.update_instance(BATCH_ID, settled, state=InstanceState.IMPORTED, imageSetId="set1")
    event = load_event("record_failure_input.json")
    event["manifestKey"], event["importJob"]["jobId"] = triggered.manifest_key, started["jobId"]

    result = record_failure.handler(event, context)

    assert (result["state"], result["instances"]) == (InstanceState.TIMED_OUT, 2)
    assert tracking.get_instance(settled)["state"] == InstanceState.IMPORTED
    for uid in triggered.sop_instance_uids[1:]:
        item = tracking.get_instance(uid)
        assert item["state"] == InstanceState.TIMED_OUT
        assert item["failureReason"].startswith("PollingBoundReached")
    assert tracking.get_job(started["jobId"])["jobStatus"] == JobStatus.TIMED_OUT


def test_caught_error_before_a_job_exists_fails_the_instances(triggered, tracking, context):
    event = {
        **triggered.execution_input(),
        "error": {"Error": "ImportJobRejected", "Cause": "ValidationException: role cannot be assumed"},
    }
    result = record_failure.handler(event, context)
    assert (result["state"], result["jobId"], result["instances"]) == (InstanceState.FAILED, None, 3)
    item = tracking.get_instance(triggered.sop_instance_uids[0])
    assert item["state"] == InstanceState.FAILED
    assert "role cannot be assumed" in item["failureReason"]


def test_a_newer_batch_owns_a_resent_instance(triggered, fake_ahi, tracking, context):
    started = start(triggered, context)
    resent = triggered.sop_instance_uids[0]
    tracking.dynamodb.update_item(
        TableName=tracking.instance_table,
        Key={"sopInstanceUID": {"S": resent}},
        UpdateExpression="SET batchId = :b, #s = :s",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":b": {"S": OTHER_BATCHES[0]}, ":s": {"S": "RECEIVED"}},
    )
    check(triggered, started, context)
    check(triggered, started, context, count=2)
    assert tracking.get_instance(resent)["state"] == "RECEIVED"
    assert tracking.get_instance(triggered.sop_instance_uids[1])["state"] == InstanceState.IMPORTED


def test_the_fake_refuses_a_client_token_outside_the_apis_pattern(fake_ahi):
    from functions.healthimaging import ImportJobRejected

    with pytest.raises(ImportJobRejected, match=r"\[A-Za-z0-9._-\]\+"):
        fake_ahi.start_import_job(
            job_name="x", client_token="batch/1", input_s3_uri="s3://b/i/", output_s3_uri="s3://b/o/"
        )


def test_a_file_breaking_an_element_constraint_fails_in_the_import(environment, s3, fake_ahi, tracking, context):
    # Replaced in S3 behind the SCP's back (it would have refused it at C-STORE): the import job refuses that file.
    from io import BytesIO

    import pydicom

    batch = store_batch(s3, count=2)
    key = batch.manifest["instances"][0]["key"]
    dataset = pydicom.dcmread(BytesIO(s3.get_object(Bucket=DICOM_BUCKET, Key=key)["Body"].read()))
    dataset.StudyDescription = "D" * 65
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    trigger_import.handler(batch.s3_event(), context)
    s3.put_object(Bucket=DICOM_BUCKET, Key=key, Body=buffer.getvalue())
    started = start(batch, context)
    check(batch, started, context)
    result = check(batch, started, context, count=2)

    assert (result["importedCount"], result["failedCount"]) == (1, 1)
    item = tracking.get_instance(batch.sop_instance_uids[0])
    assert item["state"] == InstanceState.FAILED
    assert item["failureReason"] == "ValidationException: DICOM attribute StudyDescription length 65 exceeds 64"


def test_the_fakes_concurrent_job_quota_follows_the_region(s3):
    from dicom_store_contract import limits

    from .fake_healthimaging import FakeHealthImaging

    assert FakeHealthImaging(s3).concurrent_jobs == limits.CONCURRENT_IMPORT_JOBS.value
    assert FakeHealthImaging(s3, region="ap-southeast-2").concurrent_jobs == 20
