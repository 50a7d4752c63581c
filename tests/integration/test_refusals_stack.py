"""Refused C-STOREs in the stack's mode (issue 24 item 4, second part): the SCP (S3 backend on moto_server, the
instance table made from the template) records each refusal in the instance table, and `dicom-store-scp status`
(its own process, as an operator runs it) shows it with its reason. TriggerImport's item for a later good copy
replaces the refusal; a refusal never replaces the item of a received instance. Every DynamoDB call the SCP made is
one its task role allows, condition keys included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import layout, refusals, tables
from dicom_store_scp import statuses
from pydicom import dcmread
from support.cfn import REGION, Deployment
from support.iam import ApiCall, denied
from support.moto import MotoServer, aws_env, recorded_calls
from support.pipeline import Pipeline, manifest_created_event
from support.scp import RunningScp, changed_sample, launch_scp, storescu
from support.status_cli import status_json

from .conftest import DICOM_PREFIX

pytestmark = pytest.mark.slow

SCP_APP_ID = "dicom-store-scp-refusals"
BAD_DATE = "20241345"


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto_server.log", recording=tmp_path / "moto-recording.ndjson")
    yield server
    server.stop()


@pytest.fixture
def deployment(stack: Deployment) -> Deployment:
    return stack


def status(moto_server: MotoServer, stack: Deployment, *lookup: str) -> tuple[int, dict[str, Any]]:
    """`dicom-store-scp status ... --json` in its own process, against the stack's instance table."""
    return status_json(moto_server.endpoint, stack.output("InstanceTableName"), *lookup)


def state_of(moto_server: MotoServer, stack: Deployment, sop: str) -> dict[str, Any] | None:
    _, shown = status(moto_server, stack, "--sop", sop)
    return shown["instances"][0] if shown["instances"] else None


def wait_for_state(moto_server: MotoServer, stack: Deployment, sop: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        item = state_of(moto_server, stack, sop)
        if item is not None and item["state"] == state:
            return item
        assert time.monotonic() < deadline, f"{sop} never {state}: {item}"
        time.sleep(0.2)


def sent_association(scp: RunningScp, count: int, *files: Path) -> list[int]:
    result = storescu(scp.port, *files, args=("--no-halt",))
    scp.wait_for_event("association", count=count)
    return result.statuses


def test_refusals_in_the_instance_table(
    tmp_path: Path, stack: Deployment, moto_server: MotoServer, s3: Any, pipeline: Pipeline
) -> None:
    bucket, table = stack.output("DICOMBucketName"), stack.output("InstanceTableName")
    scp = launch_scp(
        tmp_path,
        *("--dicom-bucket", bucket, "--dicom-prefix", DICOM_PREFIX, "--instance-table-name", table),
        env=aws_env(moto_server.endpoint, AWS_DEFAULT_REGION=REGION, AWS_SDK_UA_APP_ID=SCP_APP_ID),
    )
    uids = [f"1.2.826.0.1.3680043.8.498.24{n}" for n in range(3)]
    first, second, marker = uids
    good = {uid: changed_sample(tmp_path, f"good-{n}.dcm", SOPInstanceUID=uid, meta_MediaStorageSOPInstanceUID=uid)
            for n, uid in enumerate(uids)}  # fmt: skip
    bad = {uid: changed_sample(tmp_path, f"bad-{n}.dcm", SOPInstanceUID=uid, meta_MediaStorageSOPInstanceUID=uid,
                               StudyDate=BAD_DATE) for n, uid in enumerate(uids)}  # fmt: skip
    study = str(dcmread(good[first]).StudyInstanceUID)
    try:
        # Refused: the table has it, with its reason, who sent it, and when it expires.
        assert sent_association(scp, 1, bad[first]) == [statuses.BAD_STUDY_DATE]
        refused = wait_for_state(moto_server, stack, first, refusals.REFUSED)
        assert refused[refusals.STATUS] == "0xC006" and refused[refusals.CALLING_AE] == "STORESCU"
        assert refused["reason"].startswith("refused 0xC006: Study Date is not a DICOM date (StudyDate), at ")
        assert refused["studyInstanceUID"] == study and tables.BATCH_ID not in refused
        assert time.time() + 29 * 86400 < refused[tables.EXPIRES_AT] < time.time() + 31 * 86400
        assert BAD_DATE not in json.dumps(refused)
        code, by_study = status(moto_server, stack, "--study", study)  # through the study index
        assert code == 0 and [i["sopInstanceUID"] for i in by_study["instances"]] == [first]

        # Good copies of the first and second instance: TriggerImport's items replace the refusal.
        assert sent_association(scp, 2, good[first], good[second]) == [statuses.SUCCESS] * 2
        (manifest,) = s3.list_objects_v2(Bucket=bucket, Prefix=layout.manifests_prefix(DICOM_PREFIX))["Contents"]
        pipeline.invoke("TriggerImportFunction", manifest_created_event(bucket, manifest["Key"], manifest["Size"]))
        for uid in (first, second):
            item = state_of(moto_server, stack, uid)
            assert item is not None and item["state"] == "RECEIVED" and not item.get(refusals.STATUS), item

        # A bad copy of a received instance is refused and leaves its item; the marker, refused after it on the
        # same writer, shows the refusal was handled.
        assert sent_association(scp, 3, bad[second], bad[marker]) == [statuses.BAD_STUDY_DATE] * 2
        wait_for_state(moto_server, stack, marker, refusals.REFUSED)
        item = state_of(moto_server, stack, second)
        assert item is not None and item["state"] == "RECEIVED" and item[tables.BATCH_ID], item
    finally:
        scp.stop()

    # Every DynamoDB call the SCP made is one its task role allows (dynamodb:Attributes included).
    assert moto_server.recording is not None
    calls = recorded_calls(moto_server.recording, SCP_APP_ID)
    puts = [call for call in calls if (call.service, call.operation) == ("dynamodb", "PutItem")]
    # The first's refusal, the second's (its condition failed: a call all the same) and the marker's.
    assert len(puts) == 3, calls
    role = stack.role_statements(stack.role_of("ScpTaskDefinition", "TaskRoleArn"))
    assert denied(role, calls) == []
    # And the role's condition is what holds them to a refusal's attributes: a batch or a state of the pipeline's
    # own (anything but a refusal's attributes) is denied.
    forged = ApiCall("dynamodb", "PutItem", {"TableName": table, "Item": {**puts[0].params["Item"], "batchId": {}}})
    assert denied(role, [forged])
