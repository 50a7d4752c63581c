"""Storage commitment in the stack's mode, end to end: a pynetdicom requester stores and asks for commitment; the
SCP (S3 backend, moto_server) seals the batch, the pipeline (moto + the HealthImaging fake) imports it, and the
report the requester receives on its association lists exactly the imported instances; the status command
shows the same instances as imported.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
from dicom_store_contract import layout, tables
from dicom_store_scp import status
from dicom_store_scp.commitment import dynamo, model
from dicom_store_scp.storage import StorageError
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from support.cfn import REGION, Deployment
from support.iam import denied
from support.moto import MotoServer, aws_env, recorded_calls
from support.pipeline import Pipeline
from support.scp import launch_scp

from .conftest import DICOM_PREFIX
from .test_end_to_end import import_manifest, write_series

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(stack: Deployment) -> Deployment:
    """The stack on moto_server (conftest): s3, the AHI fake and the pipeline reach it over HTTP."""
    return stack


PUSH_MODEL = model.STORAGE_COMMITMENT_PUSH_MODEL
SCP_APP_ID = "dicom-store-scp-under-test"  # botocore puts app/<this> in the SCP's user agent


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto_server.log", recording=tmp_path / "moto-recording.ndjson")
    yield server
    server.stop()


def test_a_pynetdicom_requester_gets_its_report_after_the_import(
    tmp_path: Path,
    stack: Deployment,
    moto_server: MotoServer,
    s3: Any,
    pipeline: Pipeline,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = stack.output("DICOMBucketName")
    instance_table = stack.output("InstanceTableName")
    commitment_table = stack.output("CommitmentTableName")
    scp = launch_scp(
        tmp_path,
        *("--dicom-bucket", bucket, "--dicom-prefix", DICOM_PREFIX),
        *("--instance-table-name", instance_table, "--commitment-table-name", commitment_table),
        env=aws_env(
            moto_server.endpoint,
            AWS_DEFAULT_REGION=REGION,
            COMMITMENT_MISSING_SECONDS="5",
            AWS_SDK_UA_APP_ID=SCP_APP_ID,
        ),
    )
    reports: queue.Queue[Any] = queue.Queue()

    def take(event: Any) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    paths, uids = write_series(tmp_path / "series", count=3)
    datasets = [pydicom.dcmread(path) for path in paths]
    never_sent = generate_uid()
    ae = AE(ae_title="REQUESTER")
    ae.add_requested_context(datasets[0].SOPClassUID, ExplicitVRLittleEndian)
    ae.add_requested_context(PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="STORESCP", evt_handlers=[(evt.EVT_N_EVENT_REPORT, take)])
    try:
        assert assoc.is_established
        assert [assoc.send_c_store(dataset).Status for dataset in datasets] == [0x0000] * 3
        transaction_uid = generate_uid()
        information = Dataset()
        information.TransactionUID = transaction_uid
        information.ReferencedSOPSequence = []
        for sop_class, sop_instance in [(ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets] + [
            (datasets[0].SOPClassUID, never_sent)
        ]:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            information.ReferencedSOPSequence.append(item)
        action_status, _ = assoc.send_n_action(information, 1, PUSH_MODEL, model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE)
        assert action_status.Status == model.SUCCESS

        # The request sealed the association's batch: its manifest is there while the association is still open.
        deadline = time.monotonic() + 20
        while not (
            listed := s3.list_objects_v2(Bucket=bucket, Prefix=layout.manifests_prefix(DICOM_PREFIX)).get("Contents")
        ):
            assert time.monotonic() < deadline, "no manifest after the N-ACTION"
            time.sleep(0.2)
        (manifest_object,) = listed
        with pytest.raises(queue.Empty):  # nothing is final before the import
            reports.get(timeout=1)
        final = import_manifest(pipeline, s3, bucket, manifest_object["Key"])
        assert final["polling"]["jobStatus"] == "COMPLETED"

        event_type, report = reports.get(timeout=60)
    finally:
        assoc.release()
        scp.stop()

    assert event_type == model.EVENT_FAILURES_EXIST
    assert str(report.TransactionUID) == transaction_uid
    assert {str(item.ReferencedSOPInstanceUID) for item in report.ReferencedSOPSequence} == uids
    assert [(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in report.FailedSOPSequence] == [
        (never_sent, model.NO_SUCH_OBJECT_INSTANCE)
    ]
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server.endpoint)
    item = dynamodb.get_item(TableName=commitment_table, Key={tables.RECORD_ID: {"S": transaction_uid}})["Item"]
    recorded = json.loads(item["document"]["S"])
    assert (recorded["state"], recorded["deliveredVia"], recorded["callingAETitle"]) == (
        "reported",
        "same-association",
        "REQUESTER",
    )
    assert tables.PENDING not in item and int(item[tables.EXPIRES_AT]["N"]) > time.time()

    # Every S3 and DynamoDB call the SCP made (moto's recording of its requests) is one its task role allows.
    assert moto_server.recording is not None
    calls = recorded_calls(moto_server.recording, SCP_APP_ID)
    made = {(call.service, call.operation) for call in calls}
    assert {("s3", "PutObject"), ("dynamodb", "PutItem"), ("dynamodb", "BatchGetItem")} <= made, made
    assert denied(stack.role_statements(stack.role_of("ScpTaskDefinition", "TaskRoleArn")), calls) == []

    # And the status command says the same of those instances.
    capsys.readouterr()
    study = str(datasets[0].StudyInstanceUID)
    flags = ["--instance-table", instance_table, "--endpoint-url", moto_server.endpoint, "--region", REGION]
    assert status.main(["--study", study, "--json", *flags], environ={}) == status.EXIT_FOUND
    shown = json.loads(capsys.readouterr().out)
    assert {i["sopInstanceUID"]: i["state"] for i in shown["instances"]} == dict.fromkeys(uids, "IMPORTED")


def test_two_tasks_never_both_own_a_transaction(deployment: Deployment) -> None:
    # The commitment table as the template defines it, in moto (conftest's deployment).
    table = deployment.resources["CommitmentTable"]
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    first = dynamo.DynamoTransactions(dynamodb, table, owner="task-a")
    second = dynamo.DynamoTransactions(dynamodb, table, owner="task-b")
    transaction = model.Transaction(
        transaction_uid="1.2.3.4",
        references=[model.Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")],
        calling_ae="REQUESTER",
        called_ae="STORESCP",
        peer_address="10.0.0.5",
        peer_port=50000,
        received_at="2026-12-04T12:00:00.000Z",
        deadline="2999-01-01T00:00:00.000Z",
    )

    assert first.create(transaction)
    assert not second.create(transaction)  # the Transaction UID is taken: a duplicate
    assert not second.claim("1.2.3.4")  # task-a's lease holds
    assert second.record_ids() == ["1.2.3.4"]  # pending, for whoever takes over
    with pytest.raises(StorageError, match="another task"):
        second.update(transaction)

    # task-a stops without releasing; once its lease runs out task-b takes over, and task-a cannot write.
    dynamodb.update_item(
        TableName=table,
        Key={tables.RECORD_ID: {"S": "1.2.3.4"}},
        UpdateExpression="SET leaseUntil = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    assert second.claim("1.2.3.4")
    with pytest.raises(StorageError):
        first.update(transaction)
    transaction.state, transaction.finished_at = "reported", "2026-12-04T12:00:05.000Z"
    second.update(transaction)
    assert second.record_ids() == []
    assert second.load("1.2.3.4") is not None and second.load("1.2.3.4").state == "reported"  # type: ignore[union-attr]
