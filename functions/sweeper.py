"""Sweeper (scheduled): seal batches whose SCP task died before writing their manifest, so they still import.

A batch prefix with objects but no manifest, whose newest object is older than SWEEP_MIN_AGE_MINUTES, gets a
manifest with endReason "swept". Writing it fires TriggerImport like any other manifest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from dicom_store_contract import layout
from dicom_store_contract.manifest import EndReason, Instance, Manifest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import list_objects
from functions.settings import Settings, client, settings

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)

# The UIDs sit near the start of a dataset; read a little, and more only when that was not enough.
HEADER_READS = (64 * 1024, 1024 * 1024)
HEADER_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate")


def batch_ids(s3: Any, bucket: str, prefix: str) -> list[str]:
    ids = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=layout.incoming_prefix(prefix), Delimiter="/"):
        for folder in page.get("CommonPrefixes", []):
            batch_id = layout.batch_id_of_folder(folder["Prefix"])
            if batch_id is not None:
                ids.append(batch_id)
    return ids


def exists(s3: Any, bucket: str, key: str) -> bool:
    # Listed, not HEAD: S3 answers HEAD of a missing key 404 only to a caller with an unconditional
    # s3:ListBucket (403 otherwise); our role lists only under incoming/ and manifests/ (s3:prefix).
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    return bool(listed) and listed[0]["Key"] == key


def _parse_header(body: bytes) -> dict[str, str] | None:
    import pydicom  # in the Lambda zip for the sweeper only; imported late so the other functions load faster

    try:
        dataset = pydicom.dcmread(BytesIO(body), stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except Exception:  # a cut-off header reads as garbage in many ways; the caller reads more
        return None
    if "SOPInstanceUID" not in dataset:
        return None
    meta = getattr(dataset, "file_meta", None)
    return {
        "sopClassUID": str(dataset.get("SOPClassUID", "")),
        "sopInstanceUID": str(dataset.SOPInstanceUID),
        "studyInstanceUID": str(dataset.get("StudyInstanceUID", "")),
        "seriesInstanceUID": str(dataset.get("SeriesInstanceUID", "")),
        "studyDate": str(dataset.get("StudyDate", "")),
        "transferSyntaxUID": str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
    }


def describe_object(s3: Any, bucket: str, key: str, size: int) -> Instance:
    header = None
    for length in HEADER_READS:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{min(length, size) - 1}")["Body"].read()
        header = _parse_header(body)
        if header is not None or length >= size:
            break
    # The key names the instance (<study>/<series>/<sop>.dcm); it stands in for a header we could not read.
    study, series, sop = layout.uids_of_instance_key(key)
    header = header or {}
    return Instance(
        key=key,
        sop_class_uid=header.get("sopClassUID", ""),
        sop_instance_uid=header.get("sopInstanceUID") or sop,
        study_instance_uid=header.get("studyInstanceUID") or study,
        series_instance_uid=header.get("seriesInstanceUID") or series,
        study_date=header.get("studyDate", ""),
        transfer_syntax_uid=header.get("transferSyntaxUID", ""),
        size=size,
    )


def seal_batch(s3: Any, bucket: str, prefix: str, batch_id: str, objects: list[dict[str, Any]]) -> bool:
    # Every object is listed (AHI imports them all), oldest first: of two objects with one SOP Instance UID (an
    # older SCP stored both) the manifest's reader tracks the first listed, the copy acknowledged first.
    ordered = sorted(objects, key=lambda item: (item["LastModified"], item["Key"]))
    instances = [describe_object(s3, bucket, item["Key"], item["Size"]) for item in ordered]
    modified = [item["LastModified"] for item in objects]
    manifest = Manifest.build(
        prefix,
        batch_id,
        tuple(instances),
        started_at=min(modified),
        ended_at=max(modified),
        end_reason=EndReason.SWEPT,
    )
    try:
        # If-None-Match: a late SCP or a concurrent sweep that sealed the batch first wins, untouched.
        s3.put_object(
            Bucket=bucket,
            Key=layout.manifest_key(prefix, batch_id),
            Body=manifest.encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise
    return True


def sweep(s3: Any, config: Settings, now: datetime) -> list[str]:
    """Seal every abandoned batch; return the batch ids sealed by this run."""
    bucket, prefix = config.dicom_bucket, config.dicom_prefix
    cutoff = now - timedelta(minutes=config.sweep_min_age_minutes)
    sealed = []
    for batch_id in batch_ids(s3, bucket, prefix):
        if exists(s3, bucket, layout.manifest_key(prefix, batch_id)):
            continue
        objects = [item for item in list_objects(s3, bucket, layout.batch_prefix(prefix, batch_id)) if item["Size"]]
        if not objects or max(item["LastModified"] for item in objects) > cutoff:
            continue  # still being written to, or nothing to import
        if seal_batch(s3, bucket, prefix, batch_id, objects):
            logger.warning(
                "sealed an abandoned batch",
                extra={
                    "batchId": batch_id,
                    "instances": len(objects),
                    # Its manifest starts the import; should that workflow end without importing, this restarts it.
                    "ifNotImported": f"dicom-store-scp redrive --since {now:%Y-%m-%d} --batch {batch_id}",
                },
            )
            sealed.append(batch_id)
    return sealed


@metrics.log_metrics
@logger.inject_lambda_context
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    sealed = sweep(client("s3"), settings(), datetime.now(UTC))
    metrics.add_metric(name="BatchesSwept", unit=MetricUnit.Count, value=len(sealed))
    return {"sealed": sealed}
