"""A data set that disagrees with its request, or lacks the UIDs it is stored by, gets its own failure status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dicom_store_scp import statuses
from pydicom import dcmread
from support.scp import changed_sample, sample_file, send_file_as_is, storescu

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _ct(tmp_path: Path, name: str, **changes: Any) -> Path:
    return changed_sample(tmp_path, name, **changes)


def test_sop_instance_uid_mismatch_is_refused(scp, tmp_path):
    crafted = _ct(tmp_path, "mismatch.dcm", meta_MediaStorageSOPInstanceUID="1.2.826.0.1.3680043.8.498.999")

    assert send_file_as_is(scp.port, crafted) == statuses.SOP_INSTANCE_MISMATCH
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == "0xA901"
    assert line["sopInstanceUID"] == "1.2.826.0.1.3680043.8.498.999"
    assert line["callingAE"] == "CRAFTED"
    assert line["peer"].startswith("127.0.0.1:")


def test_data_set_of_another_sop_class_is_refused(scp, tmp_path):
    crafted = _ct(tmp_path, "ct-as-mr.dcm", meta_MediaStorageSOPClassUID=MR_IMAGE_STORAGE)

    assert send_file_as_is(scp.port, crafted) == statuses.SOP_CLASS_MISMATCH
    assert scp.stored_files() == []


def test_unparseable_data_set_is_refused(scp, tmp_path):
    good = _ct(tmp_path, "good.dcm")
    raw = good.read_bytes()
    header_end = raw.index(b"\x08\x00\x05\x00")  # first data set element of CT_small: (0008,0005)
    # A sequence of undefined length that never ends: no parser can find the elements after it.
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[:header_end] + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00")

    assert send_file_as_is(scp.port, broken) == statuses.CANNOT_PARSE_DATASET
    assert scp.stored_files() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"StudyInstanceUID": None}, statuses.BAD_STUDY_INSTANCE_UID),
        ({"StudyInstanceUID": "1.2.840.x.1"}, statuses.BAD_STUDY_INSTANCE_UID),
        ({"SeriesInstanceUID": None}, statuses.BAD_SERIES_INSTANCE_UID),
        ({"SeriesInstanceUID": "1..2"}, statuses.BAD_SERIES_INSTANCE_UID),
    ],
    ids=["missing-study", "malformed-study", "missing-series", "malformed-series"],
)
def test_missing_or_malformed_uids_are_refused_and_others_still_stored(scp, tmp_path, changes, expected):
    bad = _ct(tmp_path, "bad.dcm", **changes)
    good = sample_file("MR_small.dcm")

    result = storescu(scp.port, bad, good, args=("--no-halt",))

    assert result.statuses == [expected, statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    assert stored.name == f"{dcmread(good).SOPInstanceUID}.dcm"
    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    assert [item["sopInstanceUID"] for item in manifest["instances"]] == [dcmread(good).SOPInstanceUID]
