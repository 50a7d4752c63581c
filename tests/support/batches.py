"""Batches as the SCP stores them (docs/contracts.md), written straight to S3 for pipeline tests."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


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
) -> tuple[str, dict[str, Any]]:
    """Objects first, then (unless told not to) the manifest; the first ``corrupt`` objects are not DICOM.

    Returns the manifest's key and its content.
    """
    batch_prefix = f"{prefix}incoming/{batch_id}/"
    study, series = generate_uid(), generate_uid()
    instances = []
    for number in range(count):
        sop = generate_uid()
        body = part10(study, series, sop) if number >= corrupt else b"not a DICOM file" * 10
        key = f"{batch_prefix}{study}/{series}/{sop}.dcm"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        instances.append(
            {
                "key": key,
                "sopClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "sopInstanceUID": sop,
                "studyInstanceUID": study,
                "seriesInstanceUID": series,
                "studyDate": "20040119",
                "transferSyntaxUID": "1.2.840.10008.1.2.1",
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
    manifest = {
        "manifestVersion": 1,
        "batchId": batch_id,
        "prefix": batch_prefix,
        "callingAETitle": "MODALITY1",
        "calledAETitle": "STORESCP",
        "peerAddress": "10.0.1.23",
        "peerPort": 50123,
        "startedAt": "2026-11-23T19:05:01.123456Z",
        "endedAt": "2026-11-23T19:05:09.654321Z",
        "endReason": "released",
        "instanceCount": count,
        "totalBytes": sum(i["size"] for i in instances),
        "instances": instances,
    }
    manifest_key = f"{prefix}manifests/{batch_id}.json"
    if write_manifest:
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    return manifest_key, manifest
