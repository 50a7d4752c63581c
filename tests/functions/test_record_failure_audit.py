"""RecordFailure writes the ingest outcome of a batch the workflow gave up on to the audit log group (moto's
CloudWatch Logs), as CheckStatus and StoreBatch write theirs: one DICOM audit message per study, valid against the
schema, outcome 8 (serious failure) with the reason it recorded, covering only the instances this batch holds; an
audit log group that cannot be written never fails or changes the step."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from dicom_store_contract import audit_ingest

from functions import record_failure, trigger_import
from functions import settings as runtime
from functions.tracking import InstanceState, JobStatus, Tracking

from .conftest import BATCH_ID, DATASTORE_ID, DICOM_BUCKET, OTHER_BATCH_IDS, REGION, load_event, store_batch
from .test_import_job import start
from .test_ingest_audit import CT_IMAGE, Throttled, _messages, _objects, open_audit_group

REJECTED = {"Error": "ImportJobRejected", "Cause": "ValidationException: role cannot be assumed"}
REASON = "ImportJobRejected: ValidationException: role cannot be assumed"
STOW_URL = f"https://dicom-medical-imaging.{REGION}.amazonaws.com/datastore/{DATASTORE_ID}"


@pytest.fixture
def audit_group(environment, monkeypatch):
    return open_audit_group(monkeypatch, "stack-RecordFailureFunction-abc")


@pytest.fixture
def triggered(environment, s3, context):
    """A batch of three instances of one study, recorded RECEIVED by TriggerImport."""
    batch = store_batch(s3, count=3)
    trigger_import.handler(batch.s3_event(), context)
    return batch


def _rejected(batch) -> dict[str, Any]:
    return {**batch.execution_input(), "ingestMode": "import", "error": dict(REJECTED)}


def _event(message) -> Any:
    return message.find("EventIdentification")


def test_a_rejected_batch_is_one_serious_failure_per_study_with_the_reason_recorded(
    triggered, tracking, context, audit_group
):
    result = record_failure.handler(_rejected(triggered), context)
    assert (result["state"], result["instances"]) == (InstanceState.FAILED, 3)

    (message,) = _messages(audit_group)
    event = _event(message)
    assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110104", "C")
    assert event.get("EventOutcomeIndicator") == "8"
    assert event.find("EventOutcomeDescription").text == (
        f"0 instance(s) imported into AWS HealthImaging; 3 failed: {REASON} x3"
    )
    assert tracking.get_instance(triggered.sop_instance_uids[0])["failureReason"] == REASON
    road = event.find("EventTypeCode")
    assert (road.get("csd-code"), road.get("codeSystemName")) == ("AHI-IMPORT", "99AHISTORESCP")
    (study,) = _objects(message, "110180")
    assert study.get("ParticipantObjectID") == triggered.manifest["instances"][0]["studyInstanceUID"]
    assert list(study.iterfind("ParticipantObjectDescription/SOPClass")) == []
    assert _objects(message, "AHI-IMAGE-SET-ID") == [] and _objects(message, "AHI-IMPORT-JOB-ID") == []

    source, destination = message.iterfind("ActiveParticipant")
    assert source.get("UserIsRequestor") == "true" and source.find("RoleIDCode").get("csd-code") == "110153"
    assert source.get("UserID") == f"s3://{DICOM_BUCKET}/site a/incoming/{BATCH_ID}/"
    assert (destination.get("UserID"), destination.get("NetworkAccessPointID")) == (
        DATASTORE_ID,
        f"medical-imaging.{REGION}.amazonaws.com",
    )
    assert destination.find("RoleIDCode").get("csd-code") == "110152"
    assert message.find("AuditSourceIdentification").get("AuditSourceID") == "stack-RecordFailureFunction-abc"


def test_the_polling_bound_names_the_job_and_leaves_out_instances_a_later_batch_holds(
    triggered, fake_ahi, tracking, context, audit_group
):
    started = start(triggered, context)
    resent = triggered.sop_instance_uids[0]
    tracking.dynamodb.update_item(
        TableName=tracking.instance_table,
        Key={"sopInstanceUID": {"S": resent}},
        UpdateExpression="SET batchId = :b, #s = :s",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":b": {"S": OTHER_BATCH_IDS[0]}, ":s": {"S": "IMPORTED"}},
    )
    event = load_event("record_failure_input.json")
    event["manifestKey"], event["importJob"]["jobId"] = triggered.manifest_key, started["jobId"]
    event["ingestMode"] = "import"

    result = record_failure.handler(event, context)
    assert (result["state"], result["instances"]) == (InstanceState.TIMED_OUT, 2)

    (message,) = _messages(audit_group)
    reason = tracking.get_instance(triggered.sop_instance_uids[1])["failureReason"]
    assert reason.startswith("PollingBoundReached: ")
    assert _event(message).get("EventOutcomeIndicator") == "8"
    assert _event(message).find("EventOutcomeDescription").text == (
        f"0 instance(s) imported into AWS HealthImaging; 2 failed: {reason} x2"
    )
    (job,) = _objects(message, "AHI-IMPORT-JOB-ID")
    assert (job.get("ParticipantObjectID"), job.get("ParticipantObjectTypeCodeRole")) == (started["jobId"], "20")


def test_a_stow_batched_batch_reports_what_earlier_runs_stored_on_the_stow_road(
    triggered, tracking, context, audit_group, monkeypatch
):
    monkeypatch.setenv("AHI_STOW_URL", STOW_URL)
    runtime.reset()
    stored = triggered.sop_instance_uids[0]
    tracking.update_instance(BATCH_ID, stored, InstanceState.IMPORTED, imageSetId="a" * 32)
    execution = {**_rejected(triggered), "ingestMode": "stow-batched"}
    execution["error"] = {"Error": "ImportJobRejected", "Cause": "StoreDICOM refused the request: HTTP 403"}

    result = record_failure.handler(execution, context)
    assert result["instances"] == 2

    (message,) = _messages(audit_group)
    assert _event(message).get("EventOutcomeIndicator") == "4"  # one stored by an earlier run, two given up
    assert _event(message).find("EventOutcomeDescription").text == (
        f"1 instance(s) imported into AWS HealthImaging, image set(s) {'a' * 32}; "
        "2 failed: ImportJobRejected: StoreDICOM refused the request: HTTP 403 x2"
    )
    road = _event(message).find("EventTypeCode")
    assert road.get("csd-code") == "AHI-STOW-RS"
    (sop_class,) = _objects(message, "110180")[0].iterfind("ParticipantObjectDescription/SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CT_IMAGE, "1")
    assert _objects(message, "AHI-IMPORT-JOB-ID") == []
    destination = list(message.iterfind("ActiveParticipant"))[1]
    assert destination.get("NetworkAccessPointID") == f"dicom-medical-imaging.{REGION}.amazonaws.com"


@pytest.mark.parametrize("audited", [True, False], ids=["throttled", "no-group"])
def test_an_audit_group_that_cannot_be_written_leaves_the_steps_result_as_it_is(
    triggered, fake_ahi, tracking, context, audit_group, monkeypatch, caplog, audited
):
    throttled = Throttled(audit_group, times=1000)
    if audited:
        monkeypatch.setattr(record_failure, "audit_logs", lambda: throttled)
    else:
        monkeypatch.delenv("AUDIT_LOG_GROUP")
        runtime.reset()

        def no_client() -> Any:
            raise AssertionError("no audit log group: no client")

        monkeypatch.setattr(record_failure, "audit_logs", no_client)
    started = start(triggered, context)
    execution = {**_rejected(triggered), "importJob": {"jobId": started["jobId"]}}

    result = record_failure.handler(execution, context)
    assert result == {
        "batchId": BATCH_ID,
        "jobId": started["jobId"],
        "state": InstanceState.FAILED,
        "instances": 3,
        "message": REASON,
    }
    assert tracking.get_job(started["jobId"])["jobStatus"] == JobStatus.FAILED
    assert {tracking.get_instance(uid)["state"] for uid in triggered.sop_instance_uids} == {"FAILED"}
    assert _messages(audit_group) == []
    said = [record for record in caplog.records if record.getMessage() == "ingest audit messages not written"]
    if audited:
        assert throttled.calls == audit_ingest.ATTEMPTS
        (said_once,) = said
        assert (said_once.levelname, said_once.notWritten, said_once.written) == ("ERROR", 1, 0)
        assert said_once.error.startswith("ThrottlingException") and "ParticipantObject" not in said_once.error
    else:
        assert said == []


@pytest.mark.parametrize("refusal", ["ProvisionedThroughputExceededException", "InstanceTableThrottled"])
def test_a_table_read_that_fails_loses_only_the_messages_and_says_so(
    triggered, tracking, context, audit_group, monkeypatch, caplog, refusal
):
    def throttled(self, *args: Any, **kwargs: Any) -> Any:
        if refusal == "InstanceTableThrottled":  # the table left keys unread past tracking's bounded passes
            from functions.tracking import InstanceTableThrottled

            raise InstanceTableThrottled("keys left unread")
        raise ClientError({"Error": {"Code": refusal, "Message": "slow down"}}, "BatchGetItem")

    monkeypatch.setattr(Tracking, "instance_records", throttled)
    result = record_failure.handler(_rejected(triggered), context)

    assert (result["state"], result["instances"], result["message"]) == (InstanceState.FAILED, 3, REASON)
    assert {tracking.get_instance(uid)["state"] for uid in triggered.sop_instance_uids} == {"FAILED"}
    assert _messages(audit_group) == []
    (said,) = [record for record in caplog.records if record.getMessage() == "ingest audit messages not written"]
    assert (said.levelname, said.notWritten, said.written) == ("ERROR", 1, 0)  # one study: one message lost
    assert said.error.startswith(refusal)
