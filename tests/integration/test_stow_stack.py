"""INGEST_MODE=stow in the stack's setting (issue 25, second slice): DCMTK sends, the SCP stores each instance into
the fake StoreDICOM (support/fake_stow.py) and records what it answered in the instance table the template makes
(moto_server over HTTP); `dicom-store-scp status`, in its own process as an operator runs it, shows IMPORTED with
the image set for what the fake holds and FAILED with HealthImaging's reason for what it refused; Storage
Commitment, reading the same table, commits the one and not the other. Every DynamoDB call the SCP made is one its
task role allows in stow mode, condition keys included.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import ingest, refusals, tables
from dicom_store_scp import statuses
from dicom_store_scp.commitment import dynamo, model
from pydicom import dcmread
from support.cfn import REGION, Deployment
from support.commitment import Requester
from support.fake_stow import FakeStow
from support.iam import ApiCall, denied
from support.moto import MotoServer, aws_env, recorded_calls
from support.scp import changed_sample, launch_scp, storescu
from support.status_cli import status_json

from .conftest import DATASTORE_ID

pytestmark = pytest.mark.slow

SCP_APP_ID = "dicom-store-scp-stow"


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto_server.log", recording=tmp_path / "moto-recording.ndjson")
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


def status(moto_server: MotoServer, table: str, *lookup: str) -> tuple[int, dict[str, Any]]:
    return status_json(moto_server.endpoint, table, *lookup)


def wait_for_states(moto_server: MotoServer, table: str, study: str, expected: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        _, shown = status(moto_server, table, "--study", study)
        items = {item[tables.SOP_INSTANCE_UID]: item for item in shown["instances"]}
        if {uid: item["state"] for uid, item in items.items()} == expected:
            return items
        assert time.monotonic() < deadline, f"never {expected}: {shown}"
        time.sleep(0.2)


def puts_of(moto_server: MotoServer) -> list[Any]:
    assert moto_server.recording is not None
    calls = recorded_calls(moto_server.recording, SCP_APP_ID)
    return [call for call in calls if (call.service, call.operation) == ("dynamodb", "PutItem")]


def committed(client: Any, table: str, sop_class: str, *uids: str) -> dict[str, int | None]:
    references = [model.Reference(sop_class, uid) for uid in uids]
    transaction = model.Transaction(
        transaction_uid="1.2.3.9",
        references=references,
        calling_ae="STORESCU",
        called_ae="STORESCP",
        peer_address="127.0.0.1",
        peer_port=50000,
        received_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        deadline="2999-01-01T00:00:00.000Z",
    )
    reasons = dynamo.DynamoOutcomes(client, table, missing_seconds=60).evaluate(transaction).reasons
    return {reference.sop_instance_uid: reasons[reference] for reference in references}


def test_stow_outcomes_in_the_instance_table(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, fake: FakeStow, template: dict[str, Any]
) -> None:
    import boto3

    table = stack.output("InstanceTableName")
    stow = Deployment(
        template,
        {"DICOMPrefix": "site-a/", "IngestMode": "stow", "ExistingDatastoreID": DATASTORE_ID},
        resources=stack.resources,
    )
    env = stow.container_environment("ScpTaskDefinition")
    assert env["INGEST_MODE"] == "stow" and env["INSTANCE_TABLE_NAME"] == table
    uids = [f"1.2.826.0.1.3680043.8.498.25{n}" for n in range(3)]
    stored, refused, busy = uids
    sources = [
        changed_sample(tmp_path, f"{n}.dcm", SOPInstanceUID=uid, meta_MediaStorageSOPInstanceUID=uid)
        for n, uid in enumerate(uids)
    ]
    study = str(dcmread(sources[0]).StudyInstanceUID)
    sop_class = str(dcmread(sources[0]).SOPClassUID)
    # The first is stored; the second refused by HealthImaging (a Failure Reason it will never take); the third
    # throttled past the budget (the sender retries: no outcome yet, only the refusal record saying "retry").
    fake.script = ["store", "fail:C000", *["http:429"] * 50]
    scp = launch_scp(
        tmp_path,
        *("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, "--dimse-timeout", "4"),
        *("--instance-table-name", table, "--dicom-bucket", stack.output("DICOMBucketName")),
        env=aws_env(moto_server.endpoint, AWS_DEFAULT_REGION=REGION, AWS_SDK_UA_APP_ID=SCP_APP_ID),
    )
    try:
        result = storescu(scp.port, *sources, args=("--no-halt",))
        assert result.statuses == [statuses.SUCCESS, statuses.STOW_REFUSED, statuses.STOW_BUSY], result.output
        assert set(fake.held) == {stored}

        items = wait_for_states(
            moto_server, table, study, {stored: "IMPORTED", refused: "FAILED", busy: refusals.REFUSED}
        )
        # The fake names the image set in its Retrieve URL, one per study.
        assert items[stored]["imageSetId"] == hashlib.md5(study.encode()).hexdigest()  # noqa: S324
        assert items[stored][ingest.SOP_CLASS_UID] == sop_class and items[stored][tables.BATCH_ID]
        assert items[refused]["reason"] == "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000"
        assert items[busy][refusals.STATUS] == f"0x{statuses.STOW_BUSY:04X}"

        # Storage Commitment reads the same table: committed once AHI stored it, failed where AHI refused it,
        # pending where the sender was told to retry.
        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server.endpoint)
        assert committed(client, table, sop_class, *uids) == {stored: 0, refused: model.PROCESSING_FAILURE, busy: None}

        # A later refusal of another copy of the stored instance leaves the stored instance's item: both records
        # (HealthImaging's FAILED, the SCP's REFUSED) are tried, and their conditions keep it.
        written = len(puts_of(moto_server))
        fake.script = ["fail:C000"]
        again = storescu(scp.port, sources[0])
        assert again.statuses == [statuses.STOW_REFUSED], again.output
        deadline = time.monotonic() + 20
        while len(puts_of(moto_server)) < written + 2:
            assert time.monotonic() < deadline, puts_of(moto_server)
            time.sleep(0.1)
        _, shown = status(moto_server, table, "--sop", stored)
        assert [(item["state"], item["imageSetId"]) for item in shown["instances"]] == [
            ("IMPORTED", items[stored]["imageSetId"])
        ]
    finally:
        scp.stop()

    # Every DynamoDB call the SCP made is one its stow-mode task role allows (dynamodb:Attributes included) ...
    assert moto_server.recording is not None
    calls = recorded_calls(moto_server.recording, SCP_APP_ID)
    puts = puts_of(moto_server)
    # IMPORTED, FAILED and REFUSED for the refused one, REFUSED for the busy one; FAILED and REFUSED for the copy.
    assert len(puts) == 6, calls
    role = stow.role_statements(stow.role_of("ScpTaskDefinition", "TaskRoleArn"))
    assert denied(role, calls) == []
    # ... and only in stow mode: the import mode's role may not write an outcome.
    imported = next(call for call in puts if call.params["Item"]["state"] == {"S": "IMPORTED"})
    import_role = stack.role_statements(stack.role_of("ScpTaskDefinition", "TaskRoleArn"))
    assert denied(import_role, [imported])
    forged = ApiCall("dynamodb", "PutItem", {"TableName": table, "Item": {**imported.params["Item"], "jobId": {}}})
    assert denied(role, [forged])


def test_storage_commitment_in_stow_mode_commits_what_healthimaging_stored(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, fake: FakeStow, template: dict[str, Any]
) -> None:
    """A pynetdicom requester stores three instances (HealthImaging stores two, refuses one) and asks for
    commitment of them and one never sent: the report, on its association, commits the two and fails the others."""
    import pydicom
    from pydicom.uid import generate_uid

    table, commitment_table = stack.output("InstanceTableName"), stack.output("CommitmentTableName")
    stow = Deployment(
        template,
        {"DICOMPrefix": "site-a/", "IngestMode": "stow", "ExistingDatastoreID": DATASTORE_ID},
        resources=stack.resources,
    )
    fake.script = ["store", "fail:C000", "store"]
    scp = launch_scp(
        tmp_path,
        *("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url),
        *("--instance-table-name", table, "--commitment-table-name", commitment_table),
        *("--dicom-bucket", stack.output("DICOMBucketName")),
        env=aws_env(
            moto_server.endpoint,
            AWS_DEFAULT_REGION=REGION,
            AWS_SDK_UA_APP_ID=SCP_APP_ID,
            COMMITMENT_MISSING_SECONDS="3",
        ),
    )
    uids = [f"1.2.826.0.1.3680043.8.498.26{n}" for n in range(3)]
    datasets = [
        pydicom.dcmread(changed_sample(tmp_path, f"{n}.dcm", SOPInstanceUID=uid, meta_MediaStorageSOPInstanceUID=uid))
        for n, uid in enumerate(uids)
    ]
    never_sent = generate_uid()
    sop_class = str(datasets[0].SOPClassUID)
    requester = Requester()
    try:
        assoc = requester.associate(scp, True, sop_class)
        try:
            answered = [assoc.send_c_store(dataset).Status for dataset in datasets]
            assert answered == [statuses.SUCCESS, statuses.STOW_REFUSED, statuses.SUCCESS]
            references = [(sop_class, uid) for uid in [*uids, never_sent]]
            assert requester.request(assoc, generate_uid(), references) == model.SUCCESS
            report = requester.next_report(timeout=30)
        finally:
            assoc.release()
    finally:
        scp.stop()

    assert report.event_type == model.EVENT_FAILURES_EXIST and report.on_requesting_association
    assert report.committed == {(sop_class, uids[0]), (sop_class, uids[2])}
    assert report.failed == {uids[1]: model.PROCESSING_FAILURE, never_sent: model.NO_SUCH_OBJECT_INSTANCE}
    # The commitment's calls, and the outcomes' writes, are all the stow-mode task role allows.
    calls = recorded_calls(moto_server.recording, SCP_APP_ID) if moto_server.recording else []
    assert {("dynamodb", "PutItem"), ("dynamodb", "BatchGetItem")} <= {(c.service, c.operation) for c in calls}
    assert denied(stow.role_statements(stow.role_of("ScpTaskDefinition", "TaskRoleArn")), calls) == []
