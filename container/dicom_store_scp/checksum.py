"""The integrity checksum of every stored object: CRC-64/NVME, in the form S3 verifies and reports.

The receive loop feeds each fragment into a :class:`Crc64Nvme` as it writes the spool file (engine.py), the
storage backend hands the value to S3 with the upload (``ChecksumCRC64NVME``, which S3 checks against the bytes it
received and refuses on a mismatch), and the manifest records it with its algorithm. CRC64NVME rather than
SHA-256: it is S3's default full-object checksum, so a multipart upload is checked against the same whole-object
value as a single PUT, and awscrt computes it in C tens of times faster than SHA-256. It guards against
corruption, not tampering; SHA-256 stays where a protocol asks for it (the SigV4 payload hash).

S3's form is the base64 of the 8-byte big-endian value (``x-amz-checksum-crc64nvme``, ``ChecksumCRC64NVME``).
"""

from __future__ import annotations

import base64
from pathlib import Path

from awscrt import checksums
from dicom_store_contract.manifest import ChecksumAlgorithm

ALGORITHM = ChecksumAlgorithm.CRC64NVME

# Read size of the whole-file fallback: large enough that the C loop, not Python, dominates.
_FILE_CHUNK = 1024 * 1024


class Crc64Nvme:
    """A running CRC-64/NVME over the bytes given so far, in order."""

    __slots__ = ("crc",)

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self.crc = checksums.crc64nvme(data) if data else 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.crc = checksums.crc64nvme(data, self.crc)

    def value(self) -> str:
        """The checksum so far in S3's form."""
        return encode(self.crc)


def encode(crc: int) -> str:
    """A CRC-64/NVME as S3 writes it: base64 of the 8 bytes, most significant first."""
    return base64.b64encode(crc.to_bytes(8, "big")).decode("ascii")


def of_bytes(data: bytes | bytearray | memoryview) -> str:
    return Crc64Nvme(data).value()


def of_file(path: Path) -> str:
    """The checksum of a whole file, read in chunks (for a file whose bytes were not seen as they arrived)."""
    running = Crc64Nvme()
    with path.open("rb") as handle:
        while chunk := handle.read(_FILE_CHUNK):
            running.update(chunk)
    return running.value()
