"""What AWS HealthImaging's import would reject is refused at C-STORE, with its own status and a log line that says why.

The sender is DCMTK's storescu; each refused instance leaves nothing stored and no manifest entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import limits
from dicom_store_scp import statuses
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from support.scp import changed_sample, sample_file, storescu


def _ct(tmp_path: Path, name: str, pixel_bytes: int | None = None, **changes: Any) -> Path:
    if pixel_bytes is not None:
        changes["PixelData"] = bytes(pixel_bytes)
    return changed_sample(tmp_path, name, **changes)


def _limit(keyword: str) -> int:
    [limit] = [limit for limit in limits.ELEMENT_CONSTRAINTS if limit.keyword == keyword]
    return limit.whole


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "A" * (_limit("PatientName") + 1)),
        ("PatientID", "7" * (_limit("PatientID") + 1)),
        ("AccessionNumber", "X" * (_limit("AccessionNumber") + 1)),
        ("StudyDescription", "D" * (_limit("StudyDescription") + 1)),
        ("StudyID", "S" * (_limit("StudyID") + 1)),
        ("PatientSex", "O" * (_limit("PatientSex") + 1)),
    ],
)
def test_element_longer_than_ahi_imports_is_refused(scp, tmp_path, keyword, value):
    result = storescu(scp.port, _ct(tmp_path, "long.dcm", **{keyword: value}))

    assert result.statuses == [statuses.ELEMENT_TOO_LONG], result.output
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == "0xC004"
    assert (line["element"], line["length"], line["limit"]) == (keyword, len(value), _limit(keyword))
    assert keyword in line["detail"]


def test_element_at_ahis_limit_is_stored(scp, tmp_path):
    at_limit = _ct(tmp_path, "at-limit.dcm", PatientName="A" * _limit("PatientName"), StudyDescription="D" * 64)

    assert storescu(scp.port, at_limit).statuses == [statuses.SUCCESS]
    assert len(scp.stored_files()) == 1


def test_count_outside_ahis_range_is_refused(scp, tmp_path):
    too_many = str(_limit("NumberOfStudyRelatedInstances") + 1)
    result = storescu(scp.port, _ct(tmp_path, "count.dcm", NumberOfStudyRelatedInstances=too_many))

    assert result.statuses == [statuses.ELEMENT_OUT_OF_RANGE], result.output
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("c-store-failed")
    assert (line["element"], line["value"], line["limit"]) == ("NumberOfStudyRelatedInstances", int(too_many), 10_000)


@pytest.mark.parametrize("study_date", ["20241301", "2024-01-05", "yesterday"])
def test_study_date_that_is_not_a_date_is_refused(scp, tmp_path, study_date):
    result = storescu(scp.port, _ct(tmp_path, "date.dcm", StudyDate=study_date))

    assert result.statuses == [statuses.BAD_STUDY_DATE], result.output
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("c-store-failed")
    assert line["element"] == "StudyDate"


def test_uid_longer_than_dicom_allows_is_refused_with_its_length(scp, tmp_path):
    # 65-256 characters: AHI would import it, DICOM forbids it. The SCP keeps to DICOM (docs/conformance.md 3.1).
    long_uid = "1.2.826.0.1.3680043.8.498." + "1" * 60
    result = storescu(scp.port, _ct(tmp_path, "uid.dcm", StudyInstanceUID=long_uid))

    assert result.statuses == [statuses.BAD_STUDY_INSTANCE_UID], result.output
    [line] = scp.wait_for_event("c-store-failed")
    assert f"{len(long_uid)} characters, DICOM allows 64 (AHI 256)" in line["detail"]


def test_instance_larger_than_allowed_is_refused_while_it_arrives(start_scp, tmp_path):
    scp = start_scp("--maximum-instance-bytes", "20000")
    large = _ct(tmp_path, "large.dcm", pixel_bytes=200_000)
    small = _ct(tmp_path, "small.dcm", pixel_bytes=1_000, SOPInstanceUID="1.2.826.0.1.3680043.8.498.4242")

    result = storescu(scp.port, large, small, args=("-nh",))

    # The association goes on: the next instance is stored.
    assert result.statuses == [statuses.INSTANCE_TOO_LARGE, statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    assert stored.name == "1.2.826.0.1.3680043.8.498.4242.dcm"
    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == "0xC012"
    assert line["droppedBytes"] > 200_000
    # Nothing of the refused data set is left in the spool (refused/ holds the refusal's record for status).
    assert not [
        path
        for path in scp.storage.rglob("*")
        if path.is_file() and path.suffix != ".dcm" and not {"manifests", "refused"} & set(path.parts)
    ]


def test_sop_instance_uid_longer_than_dicom_allows_is_refused_with_its_length(scp, tmp_path):
    long_uid = "1.2.826.0.1.3680043.8.498." + "7" * 60
    dataset = dcmread(sample_file("CT_small.dcm"))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = long_uid
    path = tmp_path / "long-sop.dcm"
    dcmwrite(path, dataset, enforce_file_format=False)

    result = storescu(scp.port, path)

    assert result.statuses == [statuses.BAD_SOP_INSTANCE_UID], result.output
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("c-store-failed")
    assert f"{len(long_uid)} characters, DICOM allows 64 (AHI 256)" in line["detail"]


def test_content_ahi_supports_only_partly_is_stored_and_logged(scp, tmp_path):
    # AHI's DICOM support page: no Binary Segmentation Images or Icon Image Sequence pixel data (its import takes
    # them): the SCP stores them and names what AHI may not serve.
    from pydicom.dataset import Dataset

    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.PixelData = bytes(4)
    with_icon = _ct(tmp_path, "icon.dcm", IconImageSequence=[icon])

    assert storescu(scp.port, with_icon).statuses == [statuses.SUCCESS]
    assert len(scp.stored_files()) == 1
    [line] = scp.wait_for_event("ahi-limited-support")
    assert line["content"] == ["icon image sequence pixel data"]
    assert line["source"].endswith("reference-dicom.html")


def test_the_sender_learns_the_reason_and_the_element_never_the_value(scp, tmp_path):
    """Issue 24 item 4 and item 7: a refusal answered with only 0xC006 told the sender nothing, while the log line
    showed the Study Date itself. Now the C-STORE-RSP carries Error Comment (0000,0902, LO) and Offending Element
    (0000,0901), and neither it nor the log holds the value."""
    result = storescu(scp.port, _ct(tmp_path, "date.dcm", StudyDate="20241345"))

    assert result.statuses == [statuses.BAD_STUDY_DATE], result.output
    # storescu -d prints the response's command set.
    assert f"(0000,0902) LO [{statuses.REASONS[statuses.BAD_STUDY_DATE]}" in result.output
    assert "(0000,0901) AT (0008,0020)" in result.output
    [line] = scp.wait_for_event("c-store-failed")
    assert "20241345" not in json.dumps(line) and "20241345" not in result.output.split("C-STORE-RSP")[-1]
    assert (line["element"], line["length"]) == ("StudyDate", 8)


def test_a_too_long_element_is_named_in_the_response(scp, tmp_path):
    result = storescu(scp.port, _ct(tmp_path, "long.dcm", PatientName="A" * (_limit("PatientName") + 1)))

    assert result.statuses == [statuses.ELEMENT_TOO_LONG], result.output
    assert "(0000,0901) AT (0010,0010)" in result.output
    assert f"(0000,0902) LO [{statuses.REASONS[statuses.ELEMENT_TOO_LONG]}" in result.output


def test_every_reason_fits_an_error_comment():
    """LO: at most 64 characters, no backslash (PS3.5 6.2); ASCII, as the command set is encoded."""
    for status, reason in statuses.REASONS.items():
        assert len(reason) <= 64 and "\\" not in reason and reason.isascii(), hex(status)
