"""Issue 23 item 4: File Meta Information elements (group 0002) at the start of a C-STORE data set.

Real senders send them: pynetdicom sends the group 0002 elements a Dataset holds, in the negotiated syntax; DCMTK's
storescu sends those a file's data set holds. Stored as received, the file had two meta groups (``dcmdump`` warned)
and pydicom took the sender's group for the file meta, so an inner Transfer Syntax UID that differs from the
negotiated one misdescribed the stored file. The SCP drops them; the rest of the data set is stored byte for byte,
under the File Meta Information it writes itself.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from dicom_store_scp import inner_meta, statuses
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from support import wire
from support.crc import s3_crc64nvme
from support.scp import DCMTK_ENV, RunningScp, dataset_bytes, sample_file, storescu

_META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def _with_inner_meta(inner_transfer_syntax: str, negotiated: str) -> tuple[object, bytes]:
    """A sample in the negotiated syntax with group 0002 elements in its data set (as a Dataset holds them), and
    the data set without them as pynetdicom encodes it: what the SCP must store after its own File Meta
    Information."""
    sample = "MR_small_implicit.dcm" if negotiated == ImplicitVRLittleEndian else "CT_small.dcm"
    dataset = dcmread(sample_file(sample))
    assert dataset.file_meta.TransferSyntaxUID == negotiated
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = negotiated
    plain = encode(dataset, negotiated == ImplicitVRLittleEndian, negotiated != ExplicitVRBigEndian)
    dataset.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.TransferSyntaxUID = inner_transfer_syntax
    return dataset, plain


def _dcmdump(path: Path) -> str:
    done = subprocess.run(["dcmdump", str(path)], env=DCMTK_ENV, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _assert_stored_with_one_meta_group(scp: RunningScp, negotiated: str, expected_data_set: bytes) -> Path:
    scp.wait_for_event("association")
    [stored] = scp.stored_files()
    dump = _dcmdump(stored)
    assert "Invalid Element" not in dump, dump
    assert dump.count("(0002,0010)") == 1, dump
    read = dcmread(stored)
    assert read.file_meta.TransferSyntaxUID == negotiated
    assert all(keyword not in read for keyword in _META_KEYWORDS)
    assert dataset_bytes(stored) == expected_data_set  # everything after the sender's group, byte for byte
    [manifest] = scp.manifests()
    [item] = manifest["instances"]
    assert item["checksum"] == s3_crc64nvme(stored.read_bytes())
    assert item["size"] == stored.stat().st_size
    return stored


@pytest.mark.parametrize(
    ("negotiated", "inner"),
    [
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        (ImplicitVRLittleEndian, ExplicitVRLittleEndian),
        (ExplicitVRLittleEndian, ExplicitVRLittleEndian),
    ],
    ids=["explicit-says-implicit", "implicit-says-explicit", "explicit-says-explicit"],
)
def test_pynetdicom_sending_group_0002_in_the_data_set_is_stored_with_our_file_meta_only(scp, negotiated, inner):
    dataset, plain = _with_inner_meta(inner, negotiated)
    sender = AE(ae_title="PACS")
    sender.add_requested_context(dataset.SOPClassUID, negotiated)
    assoc = sender.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(dataset).Status == statuses.SUCCESS
    finally:
        assoc.release()
    _assert_stored_with_one_meta_group(scp, negotiated, plain)
    [line] = scp.events("file-meta-dropped")
    assert line["elements"] == ["(0002,0002)", "(0002,0003)", "(0002,0010)"]
    assert line["innerTransferSyntaxUID"] == inner and line["transferSyntaxUID"] == negotiated
    assert line["level"] == ("WARNING" if inner != negotiated else "INFO")
    assert line["sopInstanceUID"] == dataset.SOPInstanceUID and line["callingAE"] == "PACS"


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    value += b"\0" * (len(value) % 2)
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def test_storescu_sending_a_file_whose_data_set_holds_group_0002_is_stored_with_one_meta_group(
    scp, tmp_path, wire_witness
):
    """storescu sends the data set as the file has it, inner group 0002 and all (checked: it does not strip it).
    What it sends of the rest is what it sends of the file without them (DCMTK's own SCP, bit-preserving, says)."""
    original = Path(get_testdata_file("CT_small.dcm", download=False))
    data = original.read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")
    inner = _explicit(2, 0x0010, b"UI", ImplicitVRLittleEndian.encode()) + _explicit(2, 0x0013, b"SH", b"INNER")
    crafted = tmp_path / "crafted.dcm"
    crafted.write_bytes(data[:start] + inner + data[start:])
    assert "Invalid Element (0002,0010) found in data set" in _dcmdump(crafted)

    result = storescu(scp.port, crafted, args=("-xe",))  # explicit VR little endian proposed first, as the file
    assert result.statuses == [statuses.SUCCESS], result.output
    sent_without = wire_witness.sent_dataset(original, ("-xe",))
    _assert_stored_with_one_meta_group(scp, ExplicitVRLittleEndian, sent_without)
    [line] = scp.events("file-meta-dropped")
    assert line["elements"] == ["(0002,0010)", "(0002,0013)"]
    assert line["innerTransferSyntaxUID"] == ImplicitVRLittleEndian


# -- the stripper itself: every split of the fragments, both encodings, both byte orders ---------------------------


def _implicit(element: int, value: bytes, order: str = "<") -> bytes:
    value += b"\0" * (len(value) % 2)
    return struct.pack(order + "HHL", 2, element, len(value)) + value


_REST = b"\x08\x00\x16\x00UI\x04\x001.2\x00" + bytes(range(40))


@pytest.mark.parametrize(
    ("transfer_syntax", "meta"),
    [
        (
            ExplicitVRLittleEndian,
            struct.pack("<HH2sHL", 2, 0x01, b"OB", 0, 2) + b"\0\1" + _explicit(2, 0x10, b"UI", b"1.2.840.10008.1.2"),
        ),
        (ImplicitVRLittleEndian, _implicit(0x10, b"1.2.840.10008.1.2.1") + _implicit(0x16, b"AE")),
        (
            ExplicitVRBigEndian,
            struct.pack(">HH2sH", 2, 0x10, b"UI", 20) + b"1.2.840.10008.1.2.1\0" + _explicit(2, 0x02, b"UI", b"1.2"),
        ),
        (ImplicitVRLittleEndian, struct.pack("<HH2sHL", 2, 0x0102, b"OB", 0, 3000) + bytes(3000)),
    ],
    ids=["explicit", "implicit", "big-endian", "long-ob-value"],
)
@pytest.mark.parametrize("piece", [1, 3, 7, 12, 13, 4096])
def test_the_stripper_drops_exactly_the_leading_group_whatever_the_fragments(transfer_syntax, meta, piece):
    stripper = inner_meta.MetaStripper.for_transfer_syntax(transfer_syntax)
    assert stripper is not None
    data = meta + _REST
    kept = b""
    for start in range(0, len(data), piece):
        kept += b"".join(bytes(part) for part in stripper.feed(memoryview(data[start : start + piece])))
    kept += b"".join(stripper.finish())
    assert kept == _REST
    assert stripper.dropped_bytes == len(meta)
    assert stripper.transfer_syntax in (None, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def test_a_data_set_without_group_0002_passes_untouched_and_a_short_one_is_kept():
    stripper = inner_meta.MetaStripper()
    assert [bytes(p) for p in stripper.feed(memoryview(_REST))] == [_REST] and stripper.dropped_count == 0
    short = inner_meta.MetaStripper()
    assert short.feed(memoryview(b"\x02\x00\x10")) == []
    assert short.finish() == [b"\x02\x00\x10"]


def test_a_group_0002_element_of_undefined_length_is_unreadable_and_many_are_named_within_a_bound():
    with pytest.raises(inner_meta.Unreadable, match=r"\(0002,0001\)"):
        inner_meta.MetaStripper().feed(memoryview(struct.pack("<HH2sHL", 2, 1, b"OB", 0, 0xFFFFFFFF)))
    stripper = inner_meta.MetaStripper()
    many = _explicit(2, 0x0100, b"UI", b"") * 100_000 + _REST
    assert [bytes(p) for p in stripper.feed(memoryview(many))] == [_REST]
    assert stripper.dropped_count == 100_000 and len(stripper.tags) == inner_meta.TAGS_NAMED


def test_deflated_data_sets_are_not_looked_into():
    assert inner_meta.MetaStripper.for_transfer_syntax("1.2.840.10008.1.2.1.99") is None


def test_a_group_0002_element_whose_end_cannot_be_found_is_refused_as_unparseable(scp):
    """No sender makes one (hand-made PDUs): an undefined length in group 0002 hides where the data set starts.
    0xC000, nothing stored, the rest read and dropped, the association goes on."""
    data_set = struct.pack("<HH2sHL", 2, 0x0001, b"OB", 0, 0xFFFFFFFF) + bytes(64)
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command("1.2.3.4"))))
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, data_set[:10])))
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, data_set[10:])))
        answer = peer.receive(10)
        assert answer is not None and answer.statuses() == [statuses.CANNOT_PARSE_DATASET], answer
        peer.send(wire.release_rq())
        answer = peer.receive(10)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP
    [line] = scp.wait_for_event("c-store-failed")
    assert "(0002,0001) has an undefined length" in line["detail"] and line["droppedBytes"] == len(data_set)
    assert scp.stored_files() == []
    assert list((scp.storage / ".spool").iterdir()) == []
