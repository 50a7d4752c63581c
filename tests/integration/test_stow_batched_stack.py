"""INGEST_MODE=stow-batched end to end (issue 25, third slice): DCMTK sends a study to the SCP, which lands it in S3
(moto_server over HTTP) and answers as in import mode; the manifest's event starts TriggerImport, and the workflow's
stow-batched path (StoreBatch until done, each function with exactly its template environment) stores the batch into
the StoreDICOM fake (support/fake_stow.py) over loopback. The instance table, `dicom-store-scp status` (its own
process, as an operator runs it), a Storage Commitment report the SCP sends afterwards, and what the fake holds then
agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from dicom_store_contract import layout
from dicom_store_scp import statuses
from dicom_store_scp.commitment import model
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.cfn import REGION, Deployment
from support.commitment import Requester
from support.fake_stow import FakeStow
from support.moto import MotoServer, aws_env
from support.pipeline import Pipeline, manifest_created_event
from support.scp import changed_sample, launch_scp, storescu
from support.status_cli import status_json

from .conftest import DATASTORE_ID, DICOM_PREFIX

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(stack: Deployment) -> Deployment:
    """The stack on moto_server (conftest): the functions reach it over HTTP, as the SCP does."""
    return stack


@pytest.fixture
def fake() -> Any:
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


def test_a_study_sent_in_stow_batched_mode_ends_in_healthimaging_by_stow_rs(
    tmp_path: Path,
    stack: Deployment,
    moto_server: MotoServer,
    fake: FakeStow,
    template: dict[str, Any],
    fake_healthimaging: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions import store_batch as step

    batched = Deployment(
        template,
        {"DICOMPrefix": DICOM_PREFIX, "IngestMode": "stow-batched", "ExistingDatastoreID": DATASTORE_ID},
        resources=stack.resources,
    )
    bucket, table = batched.output("DICOMBucketName"), batched.output("InstanceTableName")
    env = batched.container_environment("ScpTaskDefinition")
    assert env["INGEST_MODE"] == "stow-batched"

    study = "1.2.826.0.1.3680043.8.498.2500"
    uids = [f"1.2.826.0.1.3680043.8.498.250{n}" for n in range(1, 5)]
    sources = [
        changed_sample(
            tmp_path, f"{n}.dcm", StudyInstanceUID=study, SOPInstanceUID=uid, meta_MediaStorageSOPInstanceUID=uid
        )
        for n, uid in enumerate(uids)
    ]
    scp = launch_scp(
        tmp_path,
        *("--ingest-mode", env["INGEST_MODE"], "--dicom-bucket", bucket, "--dicom-prefix", DICOM_PREFIX),
        *("--instance-table-name", table, "--workers", "1"),
        env=aws_env(moto_server.endpoint, AWS_DEFAULT_REGION=REGION),
    )
    try:
        # Answered as in import mode: success once in S3, before anything reached HealthImaging.
        result = storescu(scp.port, *sources)
        assert result.statuses == [statuses.SUCCESS] * 4, result.output
        assert fake.requests == []
    finally:
        scp.stop()

    s3 = boto3.client("s3", region_name=REGION)  # AWS_ENDPOINT_URL: moto_server
    [manifest_key] = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=DICOM_PREFIX + "manifests/").get("Contents", [])
    ]
    size = s3.head_object(Bucket=bucket, Key=manifest_key)["ContentLength"]
    pipeline = Pipeline(batched, fake_healthimaging, monkeypatch)
    [batch] = pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, manifest_key, size))["batches"]
    assert batch["started"] is True

    # The function's AHI_STOW_URL names the stack's data store; the test sends its requests to the fake instead.
    urls = []

    def to_fake(config: Any) -> step.StoreDicom:
        urls.append(config.ahi_stow_url)
        return step.HttpStoreDicom(fake.base_url, REGION)

    monkeypatch.setattr(step, "store_dicom", to_fake)
    monkeypatch.setattr(step, "MAX_INSTANCES_PER_REQUEST", 2)
    fake.script = ["store", "fail:C000"]  # the second request's two instances: refused by HealthImaging
    sfn = boto3.client("stepfunctions", region_name=REGION)
    final = pipeline.run_stow_workflow(json.loads(sfn.describe_execution(executionArn=batch["executionArn"])["input"]))
    assert final["importJob"]["done"] is True
    assert set(urls) == {f"https://dicom-medical-imaging.{REGION}.amazonaws.com/datastore/{DATASTORE_ID}"}
    assert [r.sop_instance_uids for r in fake.requests] == [uids[:2], uids[2:]]

    # What the fake holds: the first two instances, byte for byte what the SCP landed in S3.
    landed = {
        layout.uids_of_instance_key(o["Key"])[2]: o["Key"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=DICOM_PREFIX + "incoming/")["Contents"]
    }
    assert sorted(fake.held) == uids[:2]
    for uid in uids[:2]:
        assert fake.held[uid] == s3.get_object(Bucket=bucket, Key=landed[uid])["Body"].read()

    # The instance table and the status command say the same.
    image_set = hashlib.md5(study.encode()).hexdigest()  # noqa: S324 (the fake's image set id)
    refused = "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000"
    code, shown = status_json(moto_server.endpoint, table, "--study", study)
    assert code == 0
    by_uid = {item["sopInstanceUID"]: item for item in shown["instances"]}
    assert {uid: by_uid[uid]["state"] for uid in uids} == {
        uids[0]: "IMPORTED",
        uids[1]: "IMPORTED",
        uids[2]: "FAILED",
        uids[3]: "FAILED",
    }
    assert [by_uid[uid]["imageSetId"] for uid in uids[:2]] == [image_set] * 2
    assert [by_uid[uid]["reason"] for uid in uids[2:]] == [refused] * 2
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    items = {
        item["sopInstanceUID"]["S"]: item
        for item in dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
        if item["sopInstanceUID"]["S"] in uids
    }
    assert {uid: items[uid]["state"]["S"] for uid in uids} == {uid: by_uid[uid]["state"] for uid in uids}
    assert {items[uid]["jobId"]["S"] for uid in uids} == {"stow-" + batch["batchId"]}
    job = dynamodb.get_item(
        TableName=batched.resources["DicomImportJobTable"], Key={"jobId": {"S": "stow-" + batch["batchId"]}}
    )["Item"]
    assert (job["jobStatus"]["S"], job["importedCount"]["N"], job["failedCount"]["N"]) == ("COMPLETED", "2", "2")

    # Storage Commitment, asked of the SCP (stow-batched, both tables) afterwards, commits what the fake holds and
    # fails what HealthImaging refused and what was never sent.
    assert commitment_report(
        tmp_path, batched, moto_server, [*uids, NEVER_SENT], str(dcmread(sources[0]).SOPClassUID)
    ) == (
        {uids[0], uids[1]},
        {
            (uids[2], model.PROCESSING_FAILURE),
            (uids[3], model.PROCESSING_FAILURE),
            (NEVER_SENT, model.NO_SUCH_OBJECT_INSTANCE),
        },
    )


NEVER_SENT = "1.2.826.0.1.3680043.8.498.2599"


def commitment_report(
    tmp_path: Path, batched: Deployment, moto_server: MotoServer, references: list[str], sop_class: str
) -> tuple[set[str], set[tuple[str, int]]]:
    """Ask a stow-batched SCP for commitment of ``references`` and take its N-EVENT-REPORT on the same
    association: (the committed UIDs, the failed ones with their Failure Reasons)."""
    scp = launch_scp(
        tmp_path,
        *("--ingest-mode", "stow-batched", "--dicom-bucket", batched.output("DICOMBucketName")),
        *("--dicom-prefix", DICOM_PREFIX, "--instance-table-name", batched.output("InstanceTableName")),
        *("--commitment-table-name", batched.output("CommitmentTableName")),
        env=aws_env(moto_server.endpoint, AWS_DEFAULT_REGION=REGION, COMMITMENT_MISSING_SECONDS="3"),
    )
    requester = Requester()
    try:
        assoc = requester.associate(scp)
        try:
            assert requester.request(assoc, generate_uid(), [(sop_class, uid) for uid in references]) == model.SUCCESS
            report = requester.next_report(timeout=30)
        finally:
            assoc.release()
    finally:
        scp.stop()
    assert report.on_requesting_association
    return {uid for _, uid in report.committed}, set(report.failed.items())
