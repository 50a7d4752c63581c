"""Batches as the SCP stores them (docs/contracts.md), written straight to S3 for pipeline tests."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pydicom
from dicom_store_contract import layout
from dicom_store_contract.manifest import ChecksumAlgorithm, EndReason, Instance, Manifest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from .crc import s3_crc64nvme


def part10(study: str, series: str, sop: str) -> bytes:
    """A real CT Part 10 file under the given UIDs."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_batch(
    s3: Any,
    bucket: str,
    prefix: str,
    batch_id: str,
    count: int,
    corrupt: int = 0,
    write_manifest: bool = True,
    studies: int = 1,
) -> tuple[str, dict[str, Any]]:
    """Objects first, then (unless told not to) the manifest; the first ``corrupt`` objects are not DICOM.

    ``studies``: the instances split in that many studies (a series each), in consecutive runs of the manifest.
    Returns the manifest's key and its content.
    """
    uids = [(generate_uid(), generate_uid()) for _ in range(max(studies, 1))]
    instances = []
    for number in range(count):
        study, series = uids[number * len(uids) // count]
        sop = generate_uid()
        body = part10(study, series, sop) if number >= corrupt else b"not a DICOM file" * 10
        key = layout.instance_key(prefix, batch_id, study, series, sop)
        checksum = s3_crc64nvme(body)
        s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC64NVME", ChecksumCRC64NVME=checksum)
        instances.append(
            Instance(
                key=key,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=sop,
                study_instance_uid=study,
                series_instance_uid=series,
                study_date="20040119",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                size=len(body),
                checksum=checksum,
                checksum_algorithm=ChecksumAlgorithm.CRC64NVME,
            )
        )
    manifest = Manifest.build(
        prefix,
        batch_id,
        tuple(instances),
        started_at=datetime(2026, 11, 23, 19, 5, 1, 123456, tzinfo=UTC),
        ended_at=datetime(2026, 11, 23, 19, 5, 9, 654321, tzinfo=UTC),
        end_reason=EndReason.RELEASED,
        calling_ae="MODALITY1",
        called_ae="STORESCP",
        peer_address="10.0.1.23",
        peer_port=50123,
    )
    manifest_key = layout.manifest_key(prefix, batch_id)
    if write_manifest:
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=manifest.encode())
    return manifest_key, manifest.to_json()


def as_version_1(document: dict[str, Any], bodies: dict[str, bytes]) -> bytes:
    """``document`` as the SCP wrote it before CRC64NVME (manifest version 1): each checksum a hex SHA-256 in
    ``sha256``, computed from ``bodies`` (key -> stored bytes)."""
    old = json.loads(json.dumps(document))
    old["manifestVersion"] = 1
    for record in old["instances"]:
        del record["checksum"], record["checksumAlgorithm"]
        record["sha256"] = hashlib.sha256(bodies[record["key"]]).hexdigest()
    return json.dumps(old, indent=1).encode("utf-8")
