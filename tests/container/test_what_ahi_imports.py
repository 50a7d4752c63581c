"""The SCP accepts what AWS HealthImaging imports: any storage SOP class, every transfer syntax in AHI's table.

DCMTK's storescu is the sender. With a negotiation profile (``-xf``) it proposes exactly the SOP classes and
transfer syntaxes the profile lists, private ones included, and sends each file as it is encoded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_store_scp import statuses
from dicom_store_scp.transfer_syntaxes import STORED_AS_RECEIVED, TABLE
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from support.scp import negotiation_profile, sample_file, storescu

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.77.1"
SHIPPED_PROFILE = Path(__file__).parents[2] / "docs" / "scu.cfg"
README = Path(__file__).parents[2] / "README.md"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
JPIP_REFERENCED = "1.2.840.10008.1.2.4.94"  # a DICOM transfer syntax AHI does not import


def _ct(tmp_path: Path, name: str, sop_class: str = CT_IMAGE_STORAGE, transfer_syntax: str = "") -> Path:
    dataset = dcmread(sample_file("CT_small.dcm"))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
    if transfer_syntax:
        # A stand-in for a compressed stream: storescu sends encapsulated pixel data as it is, undecoded.
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
        dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(range(60))])
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
    path = tmp_path / name
    dcmwrite(path, dataset, enforce_file_format=False)
    return path


def test_private_sop_class_is_accepted_and_stored_as_received(scp, tmp_path):
    private = _ct(tmp_path, "private.dcm", PRIVATE_SOP_CLASS)
    profile = negotiation_profile(tmp_path, [(PRIVATE_SOP_CLASS, ["1.2.840.10008.1.2.1"])])

    result = storescu(scp.port, private, profile=profile)

    assert result.statuses == [statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    assert dcmread(stored).PixelData == dcmread(private).PixelData
    assert dcmread(stored, stop_before_pixels=True).SOPClassUID == PRIVATE_SOP_CLASS
    [line] = scp.wait_for_event("unlisted-sop-classes")
    assert line["sopClassUIDs"] == [PRIVATE_SOP_CLASS]
    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    assert manifest["instances"][0]["sopClassUID"] == PRIVATE_SOP_CLASS


def test_the_shipped_scu_profile_sends_a_private_class_as_the_readme_says(scp, tmp_path):
    """README: `storescu -xf docs/scu.cfg Private <host> 11112 private/*.dcm`, with the profile the project ships."""
    siemens_csa_non_image = "1.3.12.2.1107.5.9.1"
    private = _ct(tmp_path, "private.dcm", siemens_csa_non_image)
    ct = _ct(tmp_path, "ct.dcm")
    dataset = dcmread(ct)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID + ".2"
    dcmwrite(ct, dataset, enforce_file_format=False)

    result = storescu(scp.port, private, ct, profile=SHIPPED_PROFILE, profile_name="Private")

    assert result.statuses == [statuses.SUCCESS] * 2, result.output
    stored = sorted(dcmread(path, stop_before_pixels=True).SOPClassUID for path in scp.stored_files())
    assert stored == sorted([siemens_csa_non_image, CT_IMAGE_STORAGE])
    assert "storescu -xf docs/scu.cfg Private" in README.read_text()


def test_supported_sop_class_uids_narrows_private_classes_out(start_scp, tmp_path):
    scp = start_scp("--supported-sop-class-uids", CT_IMAGE_STORAGE)
    private = _ct(tmp_path, "private.dcm", PRIVATE_SOP_CLASS)

    result = storescu(
        scp.port, private, profile=negotiation_profile(tmp_path, [(PRIVATE_SOP_CLASS, ["1.2.840.10008.1.2.1"])])
    )

    assert result.statuses == []
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("contexts-declined")
    assert [ctx["abstractSyntax"] for ctx in line["declined"]] == [PRIVATE_SOP_CLASS]


def test_private_sop_class_listed_in_supported_sop_class_uids_is_stored(start_scp, tmp_path):
    scp = start_scp("--supported-sop-class-uids", PRIVATE_SOP_CLASS)
    private = _ct(tmp_path, "private.dcm", PRIVATE_SOP_CLASS)

    result = storescu(
        scp.port, private, profile=negotiation_profile(tmp_path, [(PRIVATE_SOP_CLASS, ["1.2.840.10008.1.2.1"])])
    )

    assert result.statuses == [statuses.SUCCESS], result.output
    assert len(scp.stored_files()) == 1


def test_a_service_other_than_storage_is_declined(scp, tmp_path):
    ct = _ct(tmp_path, "ct.dcm")
    profile = negotiation_profile(
        tmp_path, [(STUDY_ROOT_FIND, ["1.2.840.10008.1.2"]), (CT_IMAGE_STORAGE, ["1.2.840.10008.1.2"])]
    )

    result = storescu(scp.port, ct, profile=profile)

    assert result.statuses == [statuses.SUCCESS], result.output
    [line] = scp.wait_for_event("contexts-declined")
    assert [ctx["abstractSyntax"] for ctx in line["declined"]] == [STUDY_ROOT_FIND]
    assert scp.events("unlisted-sop-classes") == []


def test_transfer_syntax_ahi_does_not_import_is_declined(scp, tmp_path):
    ct = _ct(tmp_path, "ct.dcm", transfer_syntax=JPIP_REFERENCED)

    result = storescu(scp.port, ct, profile=negotiation_profile(tmp_path, [(CT_IMAGE_STORAGE, [JPIP_REFERENCED])]))

    assert result.statuses == []
    assert scp.stored_files() == []
    [line] = scp.wait_for_event("contexts-declined")
    assert line["declined"][0]["transferSyntaxes"] == [JPIP_REFERENCED]


# DCMTK 3.6.7 (Debian's) negotiates but cannot send HTJ2K (.201-.203) or the fragmentable MPEG syntaxes
# (.100.1-.106.1): "Unsupported transfer syntax" on the store. pynetdicom, the other sender users have, sends those
# below. RLE needs real RLE segments.
UNKNOWN_TO_DCMTK = [
    row for row in TABLE if str(row.uid).startswith("1.2.840.10008.1.2.4.20") or str(row.uid).endswith(".1")
]
ENCAPSULATED = [
    row for row in TABLE if row.uid.is_compressed and row.uid != "1.2.840.10008.1.2.5" and row not in UNKNOWN_TO_DCMTK
]


@pytest.mark.parametrize("syntax", ENCAPSULATED, ids=lambda row: str(row.uid))
def test_every_encapsulated_syntax_in_ahis_table_is_accepted_and_stored_as_received(scp, tmp_path, syntax):
    # Video (MPEG-2, MPEG-4, HEVC) and JPEG 2000 Part 2 included: AHI imports them, the SCP must not decline them.
    instance = _ct(tmp_path, "encapsulated.dcm", transfer_syntax=str(syntax.uid))

    result = storescu(
        scp.port, instance, profile=negotiation_profile(tmp_path, [(CT_IMAGE_STORAGE, [str(syntax.uid)])])
    )

    assert result.statuses == [statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax.uid
    assert dcmread(stored).PixelData == dcmread(instance).PixelData
    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    assert manifest["instances"][0]["transferSyntaxUID"] == str(syntax.uid)


def test_video_syntaxes_are_stored_as_received_by_ahi():
    video = [row for row in TABLE if "MPEG" in row.name or "HEVC" in row.name]
    # AHI's table: .100-.108, and the fragmentable .100.1-.106.1, all marked "retains original transfer syntax".
    expected = {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)} | {
        f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)
    }
    assert {str(row.uid) for row in video} == expected
    assert {row.at_import for row in video} == {STORED_AS_RECEIVED}


def test_what_ahi_transcodes_and_what_it_keeps_follow_its_table():
    # The rows the guide marks with an asterisk (kept as received) besides video; JPEG 2000 Part 2 and lossless
    # HTJ2K are transcoded to the data store's storage format.
    kept = {str(row.uid) for row in TABLE if row.at_import == STORED_AS_RECEIVED and "MPEG" not in row.name}
    kept -= {str(row.uid) for row in TABLE if "HEVC" in row.name}
    assert kept == {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}


@pytest.mark.parametrize("syntax", UNKNOWN_TO_DCMTK, ids=lambda row: str(row.uid))
def test_syntaxes_dcmtk_cannot_send_are_accepted_from_pynetdicom_and_stored_as_received(scp, tmp_path, syntax):
    from pynetdicom import AE

    instance = _ct(tmp_path, "encapsulated.dcm", transfer_syntax=str(syntax.uid))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CT_IMAGE_STORAGE, [str(syntax.uid)])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ANY-SCP")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(instance)  # a path: the data set is sent as encoded in the file
    finally:
        assoc.release()

    assert status.Status == statuses.SUCCESS
    [stored] = scp.stored_files()
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax.uid
    assert dcmread(stored).PixelData == dcmread(instance).PixelData
