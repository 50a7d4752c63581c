"""The sweeper seals abandoned batches (objects, no manifest, quiet for long enough), once."""

import json
import time
from datetime import UTC, datetime, timedelta

from dicom_store_contract import layout
from dicom_store_contract.layout import manifest_key
from dicom_store_contract.manifest import parse as parse_manifest
from support.batches import part10

from functions import sweeper, trigger_import
from functions.tracking import InstanceState

from .conftest import DICOM_BUCKET, DICOM_PREFIX, OTHER_BATCH_IDS, load_event, store_batch

LATER = datetime.now(UTC) + timedelta(hours=2)


def manifest_of(s3, batch_id):
    return json.loads(s3.get_object(Bucket=DICOM_BUCKET, Key=manifest_key(DICOM_PREFIX, batch_id))["Body"].read())


def test_an_abandoned_batch_gets_a_manifest_from_its_objects(environment, s3):
    abandoned = store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=2, write_manifest=False)

    assert sweeper.sweep(s3, environment, LATER) == [abandoned.batch_id]

    written = manifest_of(s3, abandoned.batch_id)
    assert written["endReason"] == "swept"
    assert written["instanceCount"] == 2
    by_uid = {i["sopInstanceUID"]: i for i in written["instances"]}
    for expected in abandoned.manifest["instances"]:
        found = by_uid[expected["sopInstanceUID"]]
        for name in ("key", "studyInstanceUID", "seriesInstanceUID", "size"):
            assert found[name] == expected[name]
        assert found["sopClassUID"] == "1.2.840.10008.5.1.4.1.1.2"  # read from the object's header
        assert found["transferSyntaxUID"] == "1.2.840.10008.1.2.1"
    # What the sweeper writes passes the same checks as an SCP manifest.
    parse_manifest(json.dumps(written), DICOM_PREFIX, manifest_key(DICOM_PREFIX, abandoned.batch_id))


def test_recent_and_sealed_batches_are_left_alone_and_a_second_run_does_nothing(environment, s3):
    sealed = store_batch(s3, batch_id=OTHER_BATCH_IDS[1], count=1)
    store_batch(s3, batch_id=OTHER_BATCH_IDS[2], count=1, write_manifest=False)

    assert sweeper.sweep(s3, environment, datetime.now(UTC)) == []  # the open batch is too recent
    assert manifest_of(s3, sealed.batch_id) == sealed.manifest
    assert sweeper.sweep(s3, environment, LATER) == [OTHER_BATCH_IDS[2]]
    assert sweeper.sweep(s3, environment, LATER) == []


def test_a_swept_manifest_triggers_an_import(environment, s3, sfn, tracking, context):
    abandoned = store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=2, write_manifest=False)
    sweeper.sweep(s3, environment, LATER)
    trigger_import.handler(abandoned.s3_event(), context)
    (execution,) = sfn.list_executions(stateMachineArn=environment.state_machine_arn)["executions"]
    assert execution["name"] == abandoned.batch_id
    assert tracking.get_instance(abandoned.sop_instance_uids[0])["state"] == InstanceState.RECEIVED


def test_an_unreadable_object_is_named_by_its_key(environment, s3):
    abandoned = store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=2, corrupt=1, write_manifest=False)
    sweeper.sweep(s3, environment, LATER)
    corrupt = abandoned.manifest["instances"][0]
    (found,) = [i for i in manifest_of(s3, abandoned.batch_id)["instances"] if i["key"] == corrupt["key"]]
    assert found["sopInstanceUID"] == corrupt["sopInstanceUID"]
    assert found["studyInstanceUID"] == corrupt["studyInstanceUID"]
    assert found["sopClassUID"] == ""


def test_handler_takes_the_scheduled_event(environment, s3, context):
    store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=1, write_manifest=False)
    # Objects were written just now, so the scheduled run (real clock) must not seal them yet.
    assert sweeper.handler(load_event("scheduled_sweep.json"), context) == {"sealed": []}


def test_a_swept_batch_holding_one_sop_instance_twice_tracks_the_copy_stored_first(
    environment, s3, sfn, tracking, context
):
    # An older SCP stored a second copy under another series; the first copy's key sorts after the second's, so
    # only the order by time puts it first.
    abandoned = store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=1, write_manifest=False)
    [first] = abandoned.manifest["instances"]
    time.sleep(1.1)  # S3 lists LastModified to the second
    copy_key = layout.instance_key(
        DICOM_PREFIX, abandoned.batch_id, first["studyInstanceUID"], "1.0", first["sopInstanceUID"]
    )
    assert copy_key < first["key"]
    s3.put_object(
        Bucket=DICOM_BUCKET, Key=copy_key, Body=part10(first["studyInstanceUID"], "1.0", first["sopInstanceUID"])
    )

    assert sweeper.sweep(s3, environment, LATER) == [abandoned.batch_id]
    written = manifest_of(s3, abandoned.batch_id)
    assert [i["key"] for i in written["instances"]] == [first["key"], copy_key]
    result = trigger_import.handler(abandoned.s3_event(), context)

    assert (result["batches"][0]["started"], result["batches"][0]["rejected"]) == (True, 1)
    item = tracking.get_instance(first["sopInstanceUID"])
    assert (item["s3Key"], item["duplicateKeys"]) == (first["key"], [copy_key])


def test_the_sealing_log_line_names_the_command_that_restarts_the_batch(environment, s3, caplog):
    abandoned = store_batch(s3, batch_id=OTHER_BATCH_IDS[0], count=1, write_manifest=False)

    sweeper.sweep(s3, environment, LATER)

    (sealed,) = [record for record in caplog.records if record.getMessage() == "sealed an abandoned batch"]
    assert sealed.ifNotImported == f"dicom-store-scp redrive --since {LATER:%Y-%m-%d} --batch {abandoned.batch_id}"
