"""DCMTK sends real DICOM of many transfer syntaxes; every instance is stored as received and sealed in a batch."""

from __future__ import annotations

import json

import pytest
from dicom_store_contract import layout
from dicom_store_scp import statuses
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from support.crc import s3_crc64nvme
from support.scp import STORESCU_PROPOSAL, dataset_bytes, echoscu, sample_file, storescu

# One pydicom-bundled file per transfer syntax this SCP accepts and pydicom ships.
SAMPLES = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",
    "1.2.840.10008.1.2.1": "CT_small.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",
    "1.2.840.10008.1.2.4.50": "SC_rgb_jpeg_dcmtk.dcm",
    "1.2.840.10008.1.2.4.51": "JPGExtended.dcm",
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",
    "1.2.840.10008.1.2.5": "SC_rgb_rle.dcm",
}


def test_echo_succeeds(scp):
    result = echoscu(scp.port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


@pytest.mark.parametrize("transfer_syntax", sorted(SAMPLES))
def test_instance_is_stored_byte_for_byte_in_its_transfer_syntax(scp, wire_witness, transfer_syntax):
    source = sample_file(SAMPLES[transfer_syntax])
    assert dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    proposal = (STORESCU_PROPOSAL[transfer_syntax],)

    result = storescu(scp.port, source, args=proposal)

    assert result.statuses == [statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    stored_meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert stored_meta.TransferSyntaxUID == transfer_syntax
    assert dataset_bytes(stored) == wire_witness.sent_dataset(source, proposal)


def test_a_study_is_one_batch_with_a_complete_manifest(scp):
    sources = [sample_file(name) for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm")]

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    assert layout.BATCH_ID_PATTERN.match(manifest["batchId"])
    assert manifest["prefix"] == f"incoming/{manifest['batchId']}/"
    assert manifest["callingAETitle"] == "STORESCU"
    assert manifest["calledAETitle"] == "ANY-SCP"
    assert manifest["peerAddress"] == "127.0.0.1"
    assert manifest["endReason"] == "released"
    assert manifest["instanceCount"] == 3
    listed = {item["sopInstanceUID"]: item for item in manifest["instances"]}
    for source in sources:
        dataset = dcmread(source, stop_before_pixels=True)
        item = listed[dataset.SOPInstanceUID]
        stored = scp.storage / item["key"]
        body = stored.read_bytes()
        assert item["key"] == layout.instance_key(
            "", manifest["batchId"], dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
        )
        assert item["sopClassUID"] == dataset.SOPClassUID
        assert item["studyDate"] == dataset.get("StudyDate", "")
        assert item["size"] == len(body)
        assert (item["checksum"], item["checksumAlgorithm"]) == (s3_crc64nvme(body), "CRC64NVME")
    assert manifest["totalBytes"] == sum(item["size"] for item in manifest["instances"])


def test_an_association_that_negotiated_storage_commitment_stores_with_the_same_checksum(scp):
    # Every association takes the one receive path: the checksum is the one computed while the file was written.
    requester = AE(ae_title="COMMITTER")
    requester.add_requested_context("1.2.840.10008.1.20.1", ImplicitVRLittleEndian)
    requester.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = requester.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dcmread(sample_file("CT_small.dcm"))).Status == statuses.SUCCESS
    finally:
        assoc.release()

    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    [item] = manifest["instances"]
    [stored] = scp.stored_files()
    assert (item["checksum"], item["checksumAlgorithm"]) == (s3_crc64nvme(stored.read_bytes()), "CRC64NVME")


def test_an_instance_sent_twice_is_stored_once_and_listed_once(scp):
    # Two encodings of one SOP Instance: the later copy replaces the earlier one under the same key.
    first, second = sample_file("MR_small_implicit.dcm"), sample_file("MR_small_bigendian.dcm")
    assert dcmread(first).SOPInstanceUID == dcmread(second).SOPInstanceUID

    result = storescu(scp.port, first, second)

    assert result.statuses == [statuses.SUCCESS] * 2, result.output
    scp.wait_for_event("association")
    [manifest] = scp.manifests()
    [item] = manifest["instances"]
    [stored] = scp.stored_files()
    assert (item["checksum"], item["checksumAlgorithm"]) == (s3_crc64nvme(stored.read_bytes()), "CRC64NVME")
    assert manifest["totalBytes"] == stored.stat().st_size


def test_each_association_gets_its_own_batch_and_empty_ones_none(scp):
    storescu(scp.port, sample_file("CT_small.dcm"))
    storescu(scp.port, sample_file("MR_small_implicit.dcm"), args=("-xi",))
    echoscu(scp.port)
    scp.wait_for_event("association", count=3)

    manifests = scp.manifests()
    assert len(manifests) == 2
    assert len({m["batchId"] for m in manifests}) == 2
    assert all(m["instanceCount"] == 1 for m in manifests)


def test_batches_are_cut_at_the_instance_limit(start_scp, tmp_path):
    scp = start_scp("--batch-max-instances", "2")
    sources = []
    for number in range(5):
        dataset = dcmread(sample_file("CT_small.dcm"))
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number + 1}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = tmp_path / f"ct{number}.dcm"
        dataset.save_as(path)
        sources.append(path)

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 5, result.output
    scp.wait_for_event("association")
    manifests = scp.manifests()
    assert sorted(m["instanceCount"] for m in manifests) == [1, 2, 2]
    assert sorted(m["endReason"] for m in manifests) == ["chunk-limit", "chunk-limit", "released"]
    listed = [item["sopInstanceUID"] for m in manifests for item in m["instances"]]
    assert sorted(listed) == sorted(dcmread(p).SOPInstanceUID for p in sources)
    # Each batch prefix holds exactly the instances its manifest lists (AHI imports the whole prefix).
    for manifest in manifests:
        on_disk = sorted(p.name for p in (scp.storage / manifest["prefix"]).rglob("*.dcm"))
        assert on_disk == sorted(f"{item['sopInstanceUID']}.dcm" for item in manifest["instances"])


def test_batches_are_cut_before_the_byte_limit_would_be_passed(start_scp):
    sources = [sample_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    unlimited = start_scp()
    assert storescu(unlimited.port, *sources).statuses == [statuses.SUCCESS] * 3
    sizes = sorted(path.stat().st_size for path in unlimited.stored_files())
    # Room for the two smallest stored instances, never for all three.
    limit = sizes[0] + sizes[1]
    scp = start_scp("--batch-max-bytes", str(limit))

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    scp.wait_for_event("association")
    manifests = scp.manifests()
    assert len(manifests) == 2
    assert sorted(m["instanceCount"] for m in manifests) == [1, 2]
    # An instance larger than the limit on its own still travels, alone.
    assert all(m["totalBytes"] <= limit or m["instanceCount"] == 1 for m in manifests)
    assert sum(m["instanceCount"] for m in manifests) == len(scp.stored_files()) == 3


def test_association_log_line_says_what_happened(scp):
    storescu(scp.port, sample_file("CT_small.dcm"), args=("-aet", "MODALITY1", "-aec", "STORESCP"))

    [line] = scp.wait_for_event("association")
    assert line["callingAE"] == "MODALITY1"
    assert line["calledAE"] == "STORESCP"
    assert line["peer"].startswith("127.0.0.1:")
    assert line["instances"] == 1
    assert line["bytes"] == (scp.stored_files()[0]).stat().st_size
    assert line["outcome"] == "released"
    assert line["durationSeconds"] >= 0
    json.dumps(line)


@pytest.mark.parametrize(
    "proposed",
    [
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        ["1.2.840.10008.1.2.4.70", ExplicitVRLittleEndian, ImplicitVRLittleEndian],  # JPEG Lossless first
    ],
    ids=["explicit-first", "implicit-first", "jpeg-lossless-first"],
)
def test_the_transfer_syntax_the_sender_proposed_first_is_accepted(scp, proposed):
    """The sender knows what its data is in: of the syntaxes AHI imports, its first choice, not this SCP's table's."""
    requester = AE(ae_title="CHOOSER")
    requester.add_requested_context(CTImageStorage, proposed)
    assoc = requester.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        [accepted] = assoc.accepted_contexts
        assert str(accepted.transfer_syntax[0]) == proposed[0]
    finally:
        assoc.release()


def test_storescu_sending_explicit_vr_data_has_it_stored_as_explicit_vr(scp):
    # storescu's default proposal lists Explicit VR Little Endian first; private elements keep their VRs.
    result = storescu(scp.port, sample_file("CT_small.dcm"))
    assert result.statuses == [statuses.SUCCESS], result.output
    [stored] = scp.stored_files()
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
