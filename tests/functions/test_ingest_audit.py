"""CheckStatus writes the ingest outcome of an ended import job to the audit log group (moto's CloudWatch Logs):
one DICOM audit message per study of the batch, valid against the schema; throttling is retried, and an audit log
group that cannot be written never fails or repeats the import step."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from dicom_store_contract import audit_ingest
from support.audit import validated

from functions import check_status, trigger_import
from functions import settings as runtime
from functions.tracking import InstanceState

from .conftest import BATCH_ID, DATASTORE_ID, DICOM_BUCKET, REGION, store_batch
from .test_import_job import check, start

AUDIT_GROUP = "stack-AuditLogGroup-0123"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def open_audit_group(monkeypatch: pytest.MonkeyPatch, function_name: str) -> Any:
    """The stack's audit log group in moto, named to the step as the template names it (AUDIT_LOG_GROUP), the
    step running as ``function_name``; its client."""
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName=AUDIT_GROUP)
    monkeypatch.setenv("AUDIT_LOG_GROUP", AUDIT_GROUP)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function_name)
    monkeypatch.setenv("AWS_LAMBDA_LOG_STREAM_NAME", "2026/12/07/[$LATEST]0123456789abcdef")
    monkeypatch.setattr(audit_ingest, "PAUSE_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(audit_ingest, "_ready_streams", set())  # each test has a fresh moto
    runtime.reset()
    return logs


@pytest.fixture
def audit_group(environment, monkeypatch):
    return open_audit_group(monkeypatch, "stack-CheckStatusFunction-abc")


def _messages(logs) -> list[Any]:
    streams = logs.describe_log_streams(logGroupName=AUDIT_GROUP)["logStreams"]
    found = []
    for stream in streams:
        events = logs.get_log_events(
            logGroupName=AUDIT_GROUP, logStreamName=stream["logStreamName"], startFromHead=True
        )
        found += [validated(event["message"]) for event in events["events"]]
    return found


def _objects(message, type_code: str) -> list[Any]:
    return [
        element
        for element in message.iterfind("ParticipantObjectIdentification")
        if element.find("ParticipantObjectIDTypeCode").get("csd-code") == type_code
    ]


def _run_to_the_end(batch, context) -> tuple[dict[str, Any], dict[str, Any]]:
    trigger_import.handler(batch.s3_event(), context)
    started = start(batch, context)
    check(batch, started, context)
    return started, check(batch, started, context, count=2)


def test_a_completed_job_is_one_message_per_study_with_counts_image_sets_and_failures(
    environment, s3, fake_ahi, tracking, context, audit_group
):
    batch = store_batch(s3, count=3, corrupt=1)
    started, result = _run_to_the_end(batch, context)
    assert (result["importedCount"], result["failedCount"]) == (2, 1)

    (message,) = _messages(audit_group)
    event = message.find("EventIdentification")
    assert event.find("EventID").get("csd-code") == "110104"
    assert event.get("EventActionCode") == "C"
    assert event.get("EventOutcomeIndicator") == "4"  # some imported, one refused
    road = event.find("EventTypeCode")
    assert (road.get("csd-code"), road.get("codeSystemName")) == ("AHI-IMPORT", "99AHISTORESCP")
    description = event.find("EventOutcomeDescription").text
    refused = tracking.get_instance(batch.sop_instance_uids[0])["failureReason"]
    assert description.startswith("2 instance(s) imported into AWS HealthImaging")
    assert f"1 failed: {refused} x1" in description

    instance = batch.manifest["instances"][0]
    (study,) = _objects(message, "110180")
    assert study.get("ParticipantObjectID") == instance["studyInstanceUID"]
    (sop_class,) = study.iterfind("ParticipantObjectDescription/SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CT_IMAGE, "2")
    image_sets = {tracking.get_instance(uid)["imageSetId"] for uid in batch.sop_instance_uids[1:]}
    assert {o.get("ParticipantObjectID") for o in _objects(message, "AHI-IMAGE-SET-ID")} == image_sets
    (job,) = _objects(message, "AHI-IMPORT-JOB-ID")
    assert (job.get("ParticipantObjectID"), job.get("ParticipantObjectTypeCodeRole")) == (started["jobId"], "20")
    # The manifest holds no patient identifiers: no patient here (the SCP's 110104 names it, by the same study).
    assert [o.get("ParticipantObjectTypeCode") for o in message.iterfind("ParticipantObjectIdentification")].count(
        "1"
    ) == 0

    source, destination = message.iterfind("ActiveParticipant")
    assert source.get("UserIsRequestor") == "true" and source.find("RoleIDCode").get("csd-code") == "110153"
    assert source.get("UserID") == f"s3://{DICOM_BUCKET}/site a/incoming/{BATCH_ID}/"
    assert destination.get("UserID") == DATASTORE_ID
    assert destination.get("NetworkAccessPointID") == f"medical-imaging.{REGION}.amazonaws.com"
    assert destination.find("RoleIDCode").get("csd-code") == "110152"
    assert message.find("AuditSourceIdentification").get("AuditSourceID") == "stack-CheckStatusFunction-abc"


def test_a_failed_job_is_a_serious_failure_with_its_message(environment, s3, fake_ahi, tracking, context, audit_group):
    fake_ahi.fail_with = "Access denied to the input bucket"
    batch = store_batch(s3, count=3)
    _run_to_the_end(batch, context)

    (message,) = _messages(audit_group)
    event = message.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "8"
    assert event.find("EventOutcomeDescription").text == (
        "0 instance(s) imported into AWS HealthImaging; 3 failed: Access denied to the input bucket x3"
    )
    assert _objects(message, "AHI-IMAGE-SET-ID") == []
    (study,) = _objects(message, "110180")
    assert list(study.iterfind("ParticipantObjectDescription/SOPClass")) == []


class Throttled:
    """The audit log group's client, throttled on its first ``times`` PutLogEvents."""

    def __init__(self, client: Any, times: int) -> None:
        self.client, self.times, self.calls = client, times, 0

    def create_log_stream(self, **kwargs: Any) -> Any:
        return self.client.create_log_stream(**kwargs)

    def put_log_events(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}, "ResponseMetadata": {}},
                "PutLogEvents",
            )
        return self.client.put_log_events(**kwargs)


def test_a_throttled_put_log_events_is_retried(environment, s3, fake_ahi, context, audit_group, monkeypatch):
    throttled = Throttled(audit_group, times=2)
    monkeypatch.setattr(check_status, "audit_logs", lambda: throttled)
    batch = store_batch(s3, count=2)
    _run_to_the_end(batch, context)

    assert throttled.calls == 3
    (message,) = _messages(audit_group)
    assert message.find("EventIdentification").get("EventOutcomeIndicator") == "0"


def test_an_audit_group_that_stays_throttled_neither_fails_nor_repeats_the_step(
    environment, s3, fake_ahi, tracking, context, audit_group, monkeypatch, caplog
):
    throttled = Throttled(audit_group, times=1000)
    monkeypatch.setattr(check_status, "audit_logs", lambda: throttled)
    batch = store_batch(s3, count=2)
    _, result = _run_to_the_end(batch, context)

    assert (result["jobStatus"], result["succeeded"], result["importedCount"]) == ("COMPLETED", True, 2)
    assert throttled.calls == audit_ingest.ATTEMPTS
    assert all(tracking.get_instance(uid)["state"] == InstanceState.IMPORTED for uid in batch.sop_instance_uids)
    assert _messages(audit_group) == []
    (said,) = [record for record in caplog.records if record.getMessage() == "ingest audit messages not written"]
    assert (said.levelname, said.notWritten, said.written) == ("ERROR", 1, 0)
    assert said.error.startswith("ThrottlingException") and "ParticipantObject" not in said.error


def test_without_an_audit_group_nothing_is_written(environment, s3, fake_ahi, context, monkeypatch):
    def no_client() -> Any:
        raise AssertionError("no audit log group: no client")

    monkeypatch.setattr(check_status, "audit_logs", no_client)
    batch = store_batch(s3, count=1)
    _, result = _run_to_the_end(batch, context)
    assert result["succeeded"] is True


def test_one_message_per_study_of_the_batch():
    outcomes = [
        audit_ingest.InstanceOutcome("1.2.3", CT_IMAGE, True, image_set_id="a" * 32),
        audit_ingest.InstanceOutcome("1.2.4", CT_IMAGE, False, failure_reason="ValidationException: bad"),
        audit_ingest.InstanceOutcome("1.2.3", "1.2.840.10008.5.1.4.1.1.4", True, image_set_id="a" * 32, warnings=True),
    ]
    origin = audit_ingest.Node("STORESCP", "", process="s3://bucket/incoming/batch/")
    messages = [
        validated(line)
        for line in audit_ingest.messages_for(outcomes, origin, audit_ingest.data_store_node("d" * 32, "host"))
    ]
    assert [_objects(m, "110180")[0].get("ParticipantObjectID") for m in messages] == ["1.2.3", "1.2.4"]
    assert [m.find("EventIdentification").get("EventOutcomeIndicator") for m in messages] == ["0", "8"]
    counts = {c.get("UID"): c.get("NumberOfInstances") for c in messages[0].iterfind(".//SOPClass")}
    assert counts == {CT_IMAGE: "1", "1.2.840.10008.5.1.4.1.1.4": "1"}
    assert "(1 with warnings)" in messages[0].find("EventIdentification/EventOutcomeDescription").text
    assert messages[0].find("ActiveParticipant").get("AlternativeUserID") == "AETITLES=STORESCP"
