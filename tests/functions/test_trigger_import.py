import json

import pytest
from dicom_store_contract import layout
from dicom_store_contract.manifest import InvalidManifest
from support.batches import part10

from functions import trigger_import
from functions.tracking import InstanceState

from .conftest import DICOM_BUCKET, DICOM_PREFIX, store_batch


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
        (lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(manifestVersion=3)), "manifestVersion"),
        (
            lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(instances=m["instances"] * 16700)),
            "at most 50000",
        ),
        (
            lambda s3, batch: _rewrite(
                s3, batch, lambda m: [m["instances"][n].update(size=6 * 1024**3) for n in (0, 1)]
            ),
            "an import job takes at most",
        ),
        (lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(instanceCount=4)), "instanceCount 4"),
        (lambda s3, batch: _rewrite(s3, batch, lambda m: m.update(prefix="incoming/x/")), "prefix"),
        (
            lambda s3, batch: s3.put_object(Bucket=DICOM_BUCKET, Key=batch.manifest_key, Body=b"{oops"),
            "not JSON",
        ),
    ],
)
def test_a_manifest_wrong_as_a_whole_is_rejected_without_starting_anything(
    environment, s3, sfn, tracking, context, spoil, reason
):
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


def test_one_bad_entry_is_recorded_failed_with_its_reason_and_the_rest_starts(environment, s3, sfn, tracking, context):
    batch = store_batch(s3, count=4)
    good, malformed, not_stored, also_good = batch.manifest["instances"]
    _rewrite(s3, batch, lambda m: m["instances"][1].update(size=-1))
    s3.delete_object(Bucket=DICOM_BUCKET, Key=not_stored["key"])

    result = trigger_import.handler(batch.s3_event(), context)

    assert (result["batches"][0]["started"], result["batches"][0]["rejected"]) == (True, 2)
    (execution,) = executions(sfn, environment.state_machine_arn)
    assert execution["name"] == batch.batch_id
    for instance in (good, also_good):
        assert tracking.get_instance(instance["sopInstanceUID"])["state"] == InstanceState.RECEIVED
    item = tracking.get_instance(malformed["sopInstanceUID"])
    assert (item["state"], item["batchId"], item["s3Key"]) == (InstanceState.FAILED, batch.batch_id, malformed["key"])
    assert item["failureReason"] == "manifest entry rejected: instances[1]: size must be a non-negative integer"
    assert (item["studyInstanceUID"], item["seriesInstanceUID"]) == (
        malformed["studyInstanceUID"],
        malformed["seriesInstanceUID"],
    )
    item = tracking.get_instance(not_stored["sopInstanceUID"])
    assert item["state"] == InstanceState.FAILED
    assert item["failureReason"] == f"manifest entry rejected: {not_stored['key']}: {trigger_import.NOT_STORED}"


def test_an_entry_that_names_no_instance_costs_only_itself(environment, s3, sfn, tracking, context):
    batch = store_batch(s3, count=2)
    _rewrite(s3, batch, lambda m: m["instances"].__setitem__(0, {"nothing": "useful"}))

    result = trigger_import.handler(batch.s3_event(), context)

    assert (result["batches"][0]["started"], result["batches"][0]["rejected"]) == (True, 1)
    assert tracking.get_instance(batch.sop_instance_uids[1])["state"] == InstanceState.RECEIVED
    # Nothing to key an item by: the entry is in the log line and the metric only (the object is imported unlisted).
    assert tracking.get_instance(batch.sop_instance_uids[0]) is None


def test_a_batch_with_no_importable_entry_records_each_failed_and_starts_nothing(
    environment, s3, sfn, tracking, context
):
    batch = store_batch(s3, count=2)
    for instance in batch.manifest["instances"]:
        s3.delete_object(Bucket=DICOM_BUCKET, Key=instance["key"])

    result = trigger_import.handler(batch.s3_event(), context)

    assert (result["batches"][0]["started"], result["batches"][0]["rejected"]) == (False, 2)
    assert executions(sfn, environment.state_machine_arn) == []
    assert [tracking.get_instance(uid)["state"] for uid in batch.sop_instance_uids] == [InstanceState.FAILED] * 2


def test_a_sop_instance_listed_twice_is_tracked_once_with_its_other_copy_named(environment, s3, sfn, tracking, context):
    # Issue 23: an older SCP stored one SOP Instance UID under two series and listed both; both objects are under
    # the batch prefix, so AHI imports both. The first listed (acknowledged first) is tracked, the other named.
    batch = store_batch(s3, count=2)
    first = batch.manifest["instances"][0]
    copy_key = layout.instance_key(
        DICOM_PREFIX, batch.batch_id, first["studyInstanceUID"], "1.2.826.0.1.3680043.8.498.9", first["sopInstanceUID"]
    )
    body = part10(first["studyInstanceUID"], "1.2.826.0.1.3680043.8.498.9", first["sopInstanceUID"])
    s3.put_object(Bucket=DICOM_BUCKET, Key=copy_key, Body=body)
    copy = {**first, "key": copy_key, "seriesInstanceUID": "1.2.826.0.1.3680043.8.498.9", "size": len(body)}
    _rewrite(s3, batch, lambda m: (m["instances"].append(copy), m.update(instanceCount=3)))

    result = trigger_import.handler(batch.s3_event(), context)

    assert (result["batches"][0]["started"], result["batches"][0]["rejected"]) == (True, 1)
    item = tracking.get_instance(first["sopInstanceUID"])
    assert (item["state"], item["s3Key"], item["seriesInstanceUID"]) == (
        InstanceState.RECEIVED,
        first["key"],
        first["seriesInstanceUID"],
    )
    assert item["duplicateKeys"] == [copy_key]
    assert tracking.get_instance(batch.sop_instance_uids[1])["state"] == InstanceState.RECEIVED
