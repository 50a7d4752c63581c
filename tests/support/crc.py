"""CRC-64/NVME for test assertions, apart from the SCP's checksum module: the value S3 reports for given bytes."""

from __future__ import annotations

import base64

from awscrt import checksums

# CRC-64/NVME's check value (the CRC of b"123456789") in the CRC catalogue and S3's checksum documentation.
CHECK_INPUT = b"123456789"
CHECK_VALUE = 0xAE8B14860A799888
# The polynomial reflected, as a bitwise implementation uses it.
_POLY_REFLECTED = 0x9A6C9329AC4BC9B5
_MASK = (1 << 64) - 1


def crc64nvme_reference(data: bytes) -> int:
    """Bit by bit from the definition (reflected, init and final XOR all ones): slow, for small inputs only."""
    crc = _MASK
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
    return crc ^ _MASK


def s3_crc64nvme(data: bytes) -> str:
    """S3's ChecksumCRC64NVME of ``data``: base64 of the big-endian 8 bytes (awscrt, checked against the above)."""
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode("ascii")
