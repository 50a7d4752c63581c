"""A stow-batched batch the workflow gave up on is stored by a re-drive (review of issues 25/26, finding 1).

StoreBatch's Catch sends the batch to RecordFailure, which records every instance still pending FAILED: the sender
already had success for each (the SCP answered once the object was in S3), so a re-drive of the batch must store
them. The step runs against the StoreDICOM fake over loopback, moto's S3 and DynamoDB, as in test_store_batch.py;
RecordFailure is the real function with the input the workflow's Catch gives it.
"""

from __future__ import annotations

from typing import Any

import pytest
from dicom_store_contract import tables
from support.fake_stow import FakeStow

from functions import record_failure
from functions import store_batch as step
from functions.contract import read_manifest
from functions.healthimaging import HealthImagingUnavailable
from functions.tracking import InstanceState, stow_job_id

from .conftest import DATASTORE_ID, DICOM_BUCKET, DICOM_PREFIX, store_batch

REFUSED = "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000"


@pytest.fixture
def fake():
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


def _execution(batch) -> dict[str, Any]:
    return dict(batch.execution_input(), ingestMode="stow-batched")


def _store(batch, s3, tracking, environment, fake) -> dict[str, Any]:
    return step.store_batch(
        _execution(batch),
        s3=s3,
        store=step.HttpStoreDicom(fake.base_url, "us-east-1"),
        repository=tracking,
        config=environment,
        remaining=lambda: 900.0,
        sleep=lambda seconds: None,
    )


def _items(tracking, batch) -> dict[str, dict[str, Any]]:
    return {uid: tracking.get_instance(uid) or {} for uid in batch.sop_instance_uids}


def test_a_re_drive_stores_what_the_workflow_gave_up_on_and_leaves_healthimagings_refusals(
    s3, tracking, environment, fake, monkeypatch
):
    monkeypatch.setattr(step, "MAX_INSTANCES_PER_REQUEST", 1)
    batch = store_batch(s3, count=3)
    tracking.record_received(read_manifest(s3, DICOM_BUCKET, batch.manifest_key, DICOM_PREFIX))
    refused, *acknowledged = batch.sop_instance_uids
    # HealthImaging refuses the first instance, then is unavailable past the step's attempts and the workflow's.
    fake.script, fake.default = ["fail:C000"], "http:503"
    with pytest.raises(HealthImagingUnavailable) as raised:
        _store(batch, s3, tracking, environment, fake)
    caught = {"Error": "HealthImagingUnavailable", "Cause": str(raised.value)}
    gave_up = record_failure.record_failure(
        {**_execution(batch), "error": caught}, s3=s3, repository=tracking, config=environment
    )
    assert (gave_up["state"], gave_up["instances"]) == (InstanceState.FAILED, 2)
    items = _items(tracking, batch)
    assert items[refused]["failureReason"] == REFUSED and tables.WORKFLOW_GAVE_UP not in items[refused]
    assert {items[uid]["state"] for uid in acknowledged} == {"FAILED"}
    assert tracking.get_job(stow_job_id(batch.batch_id))["jobStatus"] == "FAILED"

    # HealthImaging is back; the operator re-drives the batch: a new execution, StoreBatch with the same input.
    fake.default = "store"
    sent_before = len(fake.requests)
    result = _store(batch, s3, tracking, environment, fake)

    assert [r.sop_instance_uids for r in fake.requests[sent_before:]] == [[uid] for uid in acknowledged]
    assert sorted(fake.held) == sorted(acknowledged)
    assert (result["done"], result["importedCount"], result["failedCount"]) == (True, 2, 1)
    items = _items(tracking, batch)
    for uid in acknowledged:
        assert items[uid]["state"] == "IMPORTED" and items[uid]["imageSetId"], items[uid]
        # Neither the give-up's mark nor its reason stays on an instance HealthImaging stored.
        assert "failureReason" not in items[uid] and tables.WORKFLOW_GAVE_UP not in items[uid]
    assert (items[refused]["state"], items[refused]["failureReason"]) == ("FAILED", REFUSED)
    job = tracking.get_job(stow_job_id(batch.batch_id))
    assert (job["jobStatus"], job["importedCount"], job["failedCount"]) == ("COMPLETED", 2, 1)

    # Re-driven again (an operator twice): nothing is sent twice.
    sent_before = len(fake.requests)
    again = _store(batch, s3, tracking, environment, fake)
    assert len(fake.requests) == sent_before and again["storedNow"] == 0 and again["importedCount"] == 2


def test_only_the_workflows_give_up_opens_a_failed_instance_to_a_later_outcome(s3, tracking, environment):
    batch = store_batch(s3, count=3)
    tracking.record_received(read_manifest(s3, DICOM_BUCKET, batch.manifest_key, DICOM_PREFIX))
    given_up, refused, other = batch.sop_instance_uids
    tracking.update_instance(
        batch.batch_id,
        given_up,
        InstanceState.FAILED,
        failureReason="Lambda.Unknown",
        **{tables.WORKFLOW_GAVE_UP: True},
    )
    tracking.update_instance(batch.batch_id, refused, InstanceState.FAILED, failureReason=REFUSED)

    assert tracking.update_instance(batch.batch_id, given_up, InstanceState.IMPORTED, pending_only=True) is True
    assert tracking.update_instance(batch.batch_id, refused, InstanceState.IMPORTED, pending_only=True) is False
    # Another batch's give-up never opens this batch's item.
    assert tracking.update_instance("20261123T200000Z-" + "1" * 32, other, "FAILED", pending_only=True) is False
    items = _items(tracking, batch)
    assert items[given_up]["state"] == "IMPORTED" and "failureReason" not in items[given_up]
    assert (items[refused]["state"], items[refused]["failureReason"]) == ("FAILED", REFUSED)
    # Once stored, the mark is gone: a second give-up of the batch leaves the instance IMPORTED.
    assert tracking.update_instance(batch.batch_id, given_up, InstanceState.FAILED, pending_only=True) is False
