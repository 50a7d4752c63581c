"""StoreBatch (INGEST_MODE=stow-batched) writes the batch's ingest outcome to the audit log group (moto's CloudWatch
Logs) as CheckStatus does for an import job: one DICOM audit message per study, valid against the schema, once the
whole batch has its outcomes (all runs of the workflow's loop), road AHI-STOW-RS; an audit log group that cannot be
written never fails or changes the step. The batch is stored into the StoreDICOM fake over loopback."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError
from dicom_store_contract import audit_ingest
from support.batches import write_batch
from support.fake_stow import FakeStow

from functions import settings as runtime
from functions import store_batch as step
from functions.contract import read_manifest
from functions.tracking import stow_job_id

from .conftest import BATCH_ID, DATASTORE_ID, DICOM_BUCKET, DICOM_PREFIX, REGION, Batch
from .test_ingest_audit import AUDIT_GROUP, CT_IMAGE, Throttled, _messages, _objects, open_audit_group

FUNCTION_NAME = "stack-StoreBatchFunction-abc"


@pytest.fixture
def fake():
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


@pytest.fixture
def logs(environment, monkeypatch):
    return open_audit_group(monkeypatch, FUNCTION_NAME)


def received(s3, tracking, count: int, studies: int = 1) -> Batch:
    """A batch as TriggerImport leaves it: objects and manifest in S3, its instances RECEIVED."""
    key, manifest = write_batch(s3, DICOM_BUCKET, DICOM_PREFIX, BATCH_ID, count, studies=studies)
    tracking.record_received(read_manifest(s3, DICOM_BUCKET, key, DICOM_PREFIX))
    return Batch(BATCH_ID, key, manifest)


def run(batch, s3, tracking, config, fake, audit, *, previous=None, remaining=lambda: 900.0) -> dict[str, Any]:
    execution: dict[str, Any] = dict(batch.execution_input(), ingestMode="stow-batched")
    if previous is not None:
        execution["importJob"] = previous
    return step.store_batch(
        execution,
        s3=s3,
        store=step.HttpStoreDicom(fake.base_url, REGION),
        repository=tracking,
        config=dataclasses.replace(config, audit_log_group=AUDIT_GROUP, ahi_stow_url=fake.base_url),
        remaining=remaining,
        sleep=lambda seconds: None,
        logs=audit,
    )


def image_set_of(study: str) -> str:
    # The fake names the image set after the study, in each stored instance's Retrieve URL.
    return hashlib.md5(study.encode()).hexdigest()  # noqa: S324


def test_a_batch_over_two_runs_is_one_message_per_study_with_every_runs_outcomes(
    s3, tracking, environment, fake, logs, monkeypatch
):
    monkeypatch.setattr(step, "MAX_INSTANCES_PER_REQUEST", 2)
    batch = received(s3, tracking, 6, studies=2)
    records = batch.manifest["instances"]
    uids = batch.sop_instance_uids
    first_study, second_study = records[0]["studyInstanceUID"], records[3]["studyInstanceUID"]
    assert {r["studyInstanceUID"] for r in records[:3]} == {first_study} != {r["studyInstanceUID"] for r in records[3:]}

    # Run 1: time for one request ([0 1], stored), then the loop carries on: nothing is reported yet.
    first = run(batch, s3, tracking, environment, fake, logs, remaining=lambda: 900.0 if not fake.requests else 60.0)
    assert first["done"] is False and first["storedNow"] == 2
    assert _messages(logs) == []

    # Run 2: [2 3] refused by HealthImaging, 5's object gone, [4] stored.
    s3.delete_object(Bucket=DICOM_BUCKET, Key=records[5]["key"])
    fake.script = ["fail:C000"]
    second = run(batch, s3, tracking, environment, fake, logs, previous=first)
    assert second["done"] is True and (second["importedCount"], second["failedCount"]) == (3, 3)
    assert [r.sop_instance_uids for r in fake.requests] == [uids[0:2], uids[2:4], uids[4:5]]

    messages = _messages(logs)
    assert [_objects(m, "110180")[0].get("ParticipantObjectID") for m in messages] == [first_study, second_study]
    reason = {uid: tracking.get_instance(uid)["failureReason"] for uid in (uids[2], uids[3], uids[5])}
    assert "Failure Reason 0xC000" in reason[uids[2]] and "not stored under the batch prefix" in reason[uids[5]]
    expected = {
        # The first study: two instances stored by the first run, one refused in the second.
        first_study: (2, f"1 failed: {reason[uids[2]]} x1"),
        second_study: (1, "2 failed: " + "; ".join(f"{r} x1" for r in sorted([reason[uids[3]], reason[uids[5]]]))),
    }
    for message in messages:
        (study,) = _objects(message, "110180")
        imported, failures = expected[study.get("ParticipantObjectID")]
        event = message.find("EventIdentification")
        assert (event.find("EventID").get("csd-code"), event.get("EventActionCode")) == ("110104", "C")
        assert event.get("EventOutcomeIndicator") == "4"  # some stored, some refused
        road = event.find("EventTypeCode")
        assert (road.get("csd-code"), road.get("codeSystemName")) == ("AHI-STOW-RS", "99AHISTORESCP")
        assert event.find("EventOutcomeDescription").text == (
            f"{imported} instance(s) imported into AWS HealthImaging, "
            f"image set(s) {image_set_of(study.get('ParticipantObjectID'))}; {failures}"
        )
        (sop_class,) = study.iterfind("ParticipantObjectDescription/SOPClass")
        assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CT_IMAGE, str(imported))
        image_sets = [o.get("ParticipantObjectID") for o in _objects(message, "AHI-IMAGE-SET-ID")]
        assert image_sets == [image_set_of(study.get("ParticipantObjectID"))]
        # No import job: the STOW-RS road names none (the job item's stow-<batch> id is ours, not HealthImaging's).
        assert _objects(message, "AHI-IMPORT-JOB-ID") == []

        source, destination = message.iterfind("ActiveParticipant")
        assert source.get("UserIsRequestor") == "true" and source.find("RoleIDCode").get("csd-code") == "110153"
        assert source.get("UserID") == f"s3://{DICOM_BUCKET}/site a/incoming/{BATCH_ID}/"
        assert source.get("AlternativeUserID") == "AETITLES=STORESCP"
        assert destination.get("UserID") == DATASTORE_ID
        assert destination.get("NetworkAccessPointID") == "127.0.0.1"  # the StoreDICOM endpoint the step posted to
        assert destination.find("RoleIDCode").get("csd-code") == "110152"
        assert message.find("AuditSourceIdentification").get("AuditSourceID") == FUNCTION_NAME


def _denied(client: Any) -> Any:
    class Denied(Throttled):
        def put_log_events(self, **kwargs: Any) -> Any:
            self.calls += 1
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}, "ResponseMetadata": {}},
                "PutLogEvents",
            )

    return Denied(client, times=0)


@pytest.mark.parametrize(
    ("failing", "calls"),
    [
        (lambda client: Throttled(client, times=1000), audit_ingest.ATTEMPTS),  # retried, then given up
        (_denied, 1),  # not retried: retrying changes nothing
    ],
    ids=["throttled", "denied"],
)
def test_an_audit_group_that_cannot_be_written_leaves_the_steps_result_as_it_is(
    s3, tracking, environment, fake, logs, caplog, failing, calls
):
    batch = received(s3, tracking, 2)
    audit = failing(logs)
    result = run(batch, s3, tracking, environment, fake, audit)

    assert result == {
        "jobId": stow_job_id(BATCH_ID),
        "done": True,
        "cursor": 0,
        "storedNow": 2,
        "failedNow": 0,
        "stalled": 0,
        "importedCount": 2,
        "failedCount": 0,
    }
    assert audit.calls == calls
    assert tracking.get_job(stow_job_id(BATCH_ID))["jobStatus"] == "COMPLETED"
    assert {tracking.get_instance(uid)["state"] for uid in batch.sop_instance_uids} == {"IMPORTED"}
    assert _messages(logs) == []
    (said,) = [record for record in caplog.records if record.getMessage() == "ingest audit messages not written"]
    assert (said.levelname, said.notWritten, said.written, said.batchId) == ("ERROR", 1, 0, BATCH_ID)
    assert "ParticipantObject" not in said.error and "AuditMessage" not in said.error


@dataclass
class LambdaContext:
    function_name: str = FUNCTION_NAME
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def test_the_handler_writes_to_the_group_the_template_names_and_not_without_one(s3, tracking, fake, logs, monkeypatch):
    monkeypatch.setenv("INGEST_MODE", "stow-batched")
    monkeypatch.setenv("AHI_STOW_URL", fake.base_url)
    runtime.reset()
    batch = received(s3, tracking, 2)
    execution = dict(batch.execution_input(), ingestMode="stow-batched")

    result = step.handler(execution, LambdaContext())
    assert result["done"] is True and result["importedCount"] == 2
    (message,) = _messages(logs)
    assert message.find("EventIdentification").get("EventOutcomeIndicator") == "0"

    # Without AUDIT_LOG_GROUP no client is made and nothing is written (a run again stores nothing again).
    def no_client() -> Any:
        raise AssertionError("no audit log group: no client")

    monkeypatch.delenv("AUDIT_LOG_GROUP")
    monkeypatch.setattr(step, "audit_logs", no_client)
    runtime.reset()
    assert step.handler(execution, LambdaContext())["done"] is True
    assert len(_messages(logs)) == 1
