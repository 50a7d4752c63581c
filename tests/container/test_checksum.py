"""The checksum the SCP computes while receiving is CRC-64/NVME in S3's form, however the bytes arrive."""

from __future__ import annotations

import base64
import os
import random

from dicom_store_contract.manifest import ChecksumAlgorithm
from dicom_store_scp import checksum
from support.crc import CHECK_INPUT, CHECK_VALUE, crc64nvme_reference, s3_crc64nvme


def test_the_catalogue_check_value_in_s3s_form():
    running = checksum.Crc64Nvme(CHECK_INPUT)
    assert running.crc == CHECK_VALUE
    # S3 writes the 8 bytes most significant first, in base64.
    assert running.value() == base64.b64encode(bytes.fromhex("AE8B14860A799888")).decode() == "rosUhgp5mIg="
    assert checksum.of_bytes(CHECK_INPUT) == "rosUhgp5mIg="
    assert checksum.ALGORITHM == ChecksumAlgorithm.CRC64NVME == "CRC64NVME"


def test_nothing_received_is_the_crc_of_no_bytes():
    assert checksum.Crc64Nvme().value() == base64.b64encode(crc64nvme_reference(b"").to_bytes(8, "big")).decode()


def test_fragments_of_any_size_and_kind_give_the_whole_datas_value():
    data = os.urandom(4099)
    expected = base64.b64encode(crc64nvme_reference(data).to_bytes(8, "big")).decode()
    cuts = sorted(random.Random(7).sample(range(1, len(data)), 40))
    # As the receive loop feeds it: the File Meta Information first, then memoryview slices of PDV payloads.
    running = checksum.Crc64Nvme(data[: cuts[0]])
    view = memoryview(bytearray(data))
    for start, end in zip(cuts, [*cuts[1:], len(data)], strict=True):
        running.update(view[start:end])
    assert running.value() == expected
    assert checksum.of_bytes(bytearray(data)) == expected


def test_a_whole_file_is_read_in_chunks_to_the_same_value(tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 12345)  # past two read chunks
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    assert checksum.of_file(path) == s3_crc64nvme(data) == checksum.of_bytes(data)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert checksum.of_file(empty) == "AAAAAAAAAAA="
