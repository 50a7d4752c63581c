import json

import pytest
from dicom_store_contract.manifest import InvalidManifest

from functions import trigger_import
from functions.tracking import InstanceState

from .conftest import DICOM_BUCKET, store_batch


def executions(sfn, state_machine_arn):
    return sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]


def test_manifest_event_records_instances_and_starts_one_execution(environment, s3, sfn, tracking, context):
    batch = store_batch(s3, count=3)
    result = trigger_import.handler(batch.s3_event(), context)

    assert result["batches"][0]["started"] is True
    (execution,) = executions(sfn, environment.state_machine_arn)
    assert execution["name"] == batch.batch_id
    started = sfn.describe_execution(executionArn=execution["executionArn"])
    assert json.loads(started["input"]) == {
        "batchId": batch.batch_id,
        "bucket": DICOM_BUCKET,
        "manifestKey": batch.manifest_key,  # decoded: the event said "site+a/..."
        "prefix": batch.manifest["prefix"],
    }
    for instance in batch.manifest["instances"]:
        item = tracking.get_instance(instance["sopInstanceUID"])
        assert item["state"] == InstanceState.RECEIVED
        assert item["batchId"] == batch.batch_id
        assert item["s3Key"] == instance["key"]
        assert item["studyInstanceUID"] == instance["studyInstanceUID"]


def test_duplicate_event_is_a_no_op(environment, s3, sfn, tracking, context):
    batch = store_batch(s3)
    trigger_import.handler(batch.s3_event(), context)
    tracking.update_instance(batch.batch_id, batch.sop_instance_uids[0], state="IMPORTING")

    again = trigger_import.handler(batch.s3_event(), context)

    assert again["batches"][0]["started"] is False
    assert len(executions(sfn, environment.state_machine_arn)) == 1
    # The second delivery must not drag an instance the workflow already moved back to InstanceState.RECEIVED.
    assert tracking.get_instance(batch.sop_instance_uids[0])["state"] == "IMPORTING"


def test_execution_already_exists_race_is_success(environment, s3, sfn, tracking):
    batch = store_batch(s3)
    sfn.start_execution(stateMachineArn=environment.state_machine_arn, name=batch.batch_id, input="{}")
    # Both deliveries passed the existence check before either started the execution.
    triggered = trigger_import.trigger_import(
        DICOM_BUCKET,
        batch.manifest_key,
        s3=s3,
        sfn=_SfnWithoutDescribe(sfn),
        repository=tracking,
        config=environment,
    )
    assert triggered.started is False
    assert len(executions(sfn, environment.state_machine_arn)) == 1


class _SfnWithoutDescribe:
    def __init__(self, sfn):
        self.sfn = sfn

    def describe_execution(self, executionArn):
        raise self.sfn.exceptions.ExecutionDoesNotExist(
            {"Error": {"Code": "ExecutionDoesNotExist", "Message": ""}}, "DescribeExecution"
        )

    def start_execution(self, **kwargs):
        return self.sfn.start_execution(**kwargs)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (
            lambda s3, batch: s3.delete_object(Bucket=DICOM_BUCKET, Key=batch.manifest["instances"][1]["key"]),
            "not stored",
        ),
        (lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(manifestVersion=3)), "manifestVersion"),
        (
            lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(instances=m["instances"] * 16700)),
            "at most 50000",
        ),
        (
            lambda s3, batch: _rewrite(s3, batch, lambda m: m["instances"][0].update(size=11 * 1024**3)),
            "bytes",
        ),
        (lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(prefix="incoming/x/")), "prefix"),
        (
            lambda s3, batch: s3.put_object(Bucket=DICOM_BUCKET, Key=batch.manifest_key, Body=b"{oops"),
            "not JSON",
        ),
    ],
)
def test_bad_manifest_is_rejected_without_starting_anything(environment, s3, sfn, tracking, context, spoil, reason):
    batch = store_batch(s3)
    spoil(s3, batch)
    with pytest.raises(InvalidManifest, match=reason):
        trigger_import.handler(batch.s3_event(), context)
    assert executions(sfn, environment.state_machine_arn) == []
    assert tracking.get_instance(batch.sop_instance_uids[0]) is None


def _rewrite(s3, batch, change):
    manifest = json.loads(json.dumps(batch.manifest))
    change(manifest)
    s3.put_object(Bucket=DICOM_BUCKET, Key=batch.manifest_key, Body=json.dumps(manifest).encode())
