"""One SOP Instance UID, one stored object per batch: a copy under the same key replaces the earlier one, a copy
under another Study or Series Instance UID is refused (0xC007, with an Error Comment) and the first copy stays.

Real senders (DCMTK storescu, pynetdicom as an SCU) against a running SCP, in local mode and in S3 mode.
"""

from __future__ import annotations

from pathlib import Path

from dicom_store_contract import layout, manifest
from dicom_store_scp import statuses
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from support.crc import s3_crc64nvme
from support.moto import bucket_objects
from support.scp import changed_sample, sample_file, storescu

from .test_s3_storage import manifests_in, start_s3_scp

OTHER_SERIES = "1.2.826.0.1.3680043.8.498.23.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.23"
ANOTHER_INSTANCE = "1.2.826.0.1.3680043.8.498.23.2.1"


def _leftovers(root: Path) -> list[Path]:
    """Files in the local store that are neither a stored instance, a manifest nor a refusal's record (spool files,
    partial writes)."""
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and "manifests" not in path.parts
        and not (path.suffix == ".dcm" and "incoming" in path.parts)
        and not (path.suffix == ".json" and "refused" in path.parts)
    ]


def test_storescu_a_copy_under_another_series_is_refused_and_the_first_copy_imports(scp, tmp_path):
    first = sample_file("CT_small.dcm")
    other_series = changed_sample(tmp_path, "other-series.dcm", SeriesInstanceUID=OTHER_SERIES)
    another = changed_sample(
        tmp_path, "another.dcm", SOPInstanceUID=ANOTHER_INSTANCE, meta_MediaStorageSOPInstanceUID=ANOTHER_INSTANCE
    )
    sent = dcmread(first, stop_before_pixels=True)

    # -nh: storescu stops at the first failure status otherwise.
    result = storescu(scp.port, first, other_series, another, args=("-nh",))

    # The association goes on after the refusal; the sender's log says why without ours.
    assert result.statuses == [statuses.SUCCESS, statuses.DUPLICATE_SOP_INSTANCE, statuses.SUCCESS], result.output
    assert f"(0000,0902) LO [{statuses.REASONS[statuses.DUPLICATE_SOP_INSTANCE]}]" in result.output
    [ended] = scp.wait_for_event("association")
    # One object per SOP Instance UID: the first copy's bytes, under the first copy's key.
    [batch] = scp.manifests()
    first_key = layout.instance_key(
        "", batch["batchId"], sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID
    )
    stored = {path.relative_to(scp.storage).as_posix(): path for path in scp.stored_files()}
    [another_key] = [i["key"] for i in batch["instances"] if i["sopInstanceUID"] == ANOTHER_INSTANCE]
    assert set(stored) == {first_key, another_key}
    assert s3_crc64nvme(stored[first_key].read_bytes()) == next(
        i["checksum"] for i in batch["instances"] if i["key"] == first_key
    )
    # The manifest agrees with the store, and the pipeline reads it whole.
    assert batch["instanceCount"] == 2
    assert {i["sopInstanceUID"] for i in batch["instances"]} == {sent.SOPInstanceUID, ANOTHER_INSTANCE}
    parsed = manifest.parse(
        (scp.storage / layout.manifest_key("", batch["batchId"])).read_bytes(),
        "",
        layout.manifest_key("", batch["batchId"]),
    )
    assert (len(parsed.instances), parsed.rejected) == (2, ())
    # One line for the refusal; the association's line counts what was stored and the refusal once each.
    [refused] = scp.events("c-store-failed")
    assert refused["status"] == "0xC007"
    assert refused["sopInstanceUID"] == sent.SOPInstanceUID
    assert (refused["batchId"], refused["differs"]) == (batch["batchId"], "Series Instance UID")
    assert (ended["instances"], ended["replaced"], ended["failures"]) == (2, 0, 1)
    assert ended["bytes"] == batch["totalBytes"] == sum(path.stat().st_size for path in stored.values())
    # The refused copy's spool file is gone and nothing else was left behind.
    assert _leftovers(scp.storage) == []


def _send(port: int, *datasets) -> list:
    sender = AE(ae_title="PYNETDICOM")
    sender.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = sender.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(dataset) for dataset in datasets]
    finally:
        assoc.release()


def _copies():
    first = dcmread(sample_file("CT_small.dcm"))
    again = dcmread(sample_file("CT_small.dcm"))
    again.ImageComments = "sent again"  # the same key, other bytes: this copy replaces the first
    other_study = dcmread(sample_file("CT_small.dcm"))
    other_study.StudyInstanceUID = OTHER_STUDY
    return first, again, other_study


def test_pynetdicom_a_copy_under_the_same_key_replaces_one_under_another_study_is_refused(scp):
    first, again, other_study = _copies()

    responses = _send(scp.port, first, again, other_study)

    assert [r.Status for r in responses] == [statuses.SUCCESS, statuses.SUCCESS, statuses.DUPLICATE_SOP_INSTANCE]
    assert "ErrorComment" not in responses[1]
    assert responses[2].ErrorComment == statuses.REASONS[statuses.DUPLICATE_SOP_INSTANCE]
    [ended] = scp.wait_for_event("association")
    [stored] = scp.stored_files()
    assert dcmread(stored).ImageComments == "sent again"
    assert dcmread(stored, stop_before_pixels=True).StudyInstanceUID == first.StudyInstanceUID
    [batch] = scp.manifests()
    [item] = batch["instances"]
    assert (item["size"], item["checksum"]) == (stored.stat().st_size, s3_crc64nvme(stored.read_bytes()))
    # Counted once, the replacement as such; bytes are the copy kept.
    assert (ended["instances"], ended["replaced"], ended["failures"]) == (1, 1, 1)
    assert ended["bytes"] == stored.stat().st_size == batch["totalBytes"]
    [refused] = scp.events("c-store-failed")
    assert refused["differs"] == "Study Instance UID"
    assert _leftovers(scp.storage) == []


def test_s3_mode_holds_one_object_per_sop_instance_and_a_manifest_that_agrees(
    start_scp, s3_bucket, moto_server, tmp_path
):
    client, bucket = s3_bucket
    scp = start_s3_scp(start_scp, moto_server.endpoint, bucket, "--dicom-prefix", "site-a")
    first, again, other_study = _copies()
    other_series = dcmread(sample_file("CT_small.dcm"))
    other_series.SeriesInstanceUID = OTHER_SERIES

    responses = _send(scp.port, first, other_series, again, other_study)

    assert [r.Status for r in responses] == [
        statuses.SUCCESS,
        statuses.DUPLICATE_SOP_INSTANCE,
        statuses.SUCCESS,
        statuses.DUPLICATE_SOP_INSTANCE,
    ]
    [ended] = scp.wait_for_event("association")
    objects = bucket_objects(client, bucket)
    [batch] = manifests_in(objects, "site-a/")
    instance_keys = [key for key in objects if key.startswith(batch["prefix"])]
    assert instance_keys == [
        layout.instance_key(
            "site-a/", batch["batchId"], first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
        )
    ]
    [item] = batch["instances"]
    body = objects[item["key"]]
    assert b"sent again" in body
    assert (item["size"], item["checksum"]) == (len(body), s3_crc64nvme(body))
    assert (ended["instances"], ended["replaced"], ended["failures"]) == (1, 1, 2)
    assert [line["status"] for line in scp.events("c-store-failed")] == ["0xC007", "0xC007"]
