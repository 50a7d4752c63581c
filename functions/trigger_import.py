"""TriggerImport: a batch manifest landed in S3; check it, record its instances, start the import workflow."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from dicom_store_contract.executions import execution_arn, execution_exists
from dicom_store_contract.manifest import InvalidManifest, Manifest, RejectedEntry
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import list_objects, read_manifest
from functions.settings import Settings, client, settings
from functions.tracking import Tracking, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)


# Why an instance listed but not stored is not imported (its item's failureReason).
NOT_STORED = "its object is not stored under the batch prefix: nothing to import"


@dataclass(frozen=True)
class Triggered:
    batch_id: str
    execution_arn: str
    started: bool
    rejected: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "batchId": self.batch_id,
            "executionArn": self.execution_arn,
            "started": self.started,
            "rejected": self.rejected,
        }


def check_objects(s3: Any, bucket: str, manifest: Manifest) -> tuple[RejectedEntry, ...]:
    """The listed instances whose object is not stored (AHI imports the prefix, not the list): each rejected.

    A stored object of another size than listed is imported all the same, and its outcome is tracked by its key:
    logged, not rejected. So are objects under the prefix that no entry lists (AHI imports them untracked).
    """
    stored = {item["Key"]: item["Size"] for item in list_objects(s3, bucket, manifest.prefix)}
    missing = tuple(
        RejectedEntry(
            reason=f"{instance.key}: {NOT_STORED}",
            key=instance.key,
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_instance_uid,
            study_instance_uid=instance.study_instance_uid,
            series_instance_uid=instance.series_instance_uid,
        )
        for instance in manifest.instances
        if instance.key not in stored
    )
    wrong_size = [i.key for i in manifest.instances if i.size and i.key in stored and stored[i.key] != i.size]
    if wrong_size:
        logger.warning(
            "objects differ in size from the manifest; imported as stored",
            extra={"batchId": manifest.batch_id, "count": len(wrong_size), "first": wrong_size[0]},
        )
    listed = {instance.key for instance in manifest.instances} | {entry.key for entry in manifest.rejected}
    unlisted = set(stored) - listed
    if unlisted:
        # AHI will import these too, untracked: worth a look, not worth refusing the batch over.
        logger.warning("objects under the batch prefix missing from the manifest", extra={"count": len(unlisted)})
    return missing


def report_rejected(manifest: Manifest, missing: tuple[RejectedEntry, ...], recorded: int) -> None:
    """One line for the entries of this batch that are not imported as listed, and the metric."""
    entries = manifest.rejected + missing
    if not entries:
        return
    duplicates = sum(1 for entry in entries if entry.listed_as)
    logger.error(
        "manifest entries rejected; the rest of the batch imports",
        extra={
            "batchId": manifest.batch_id,
            "rejected": len(entries),
            "recordedFailed": recorded,
            # Copies of an instance the batch tracks: AHI imports them too (the item's duplicateKeys).
            "duplicates": duplicates,
            # Entries naming no SOP Instance UID: in this line only.
            "untracked": sum(1 for entry in entries if not entry.sop_instance_uid and not entry.listed_as),
            "reasons": [entry.reason for entry in entries[:10]],
        },
    )
    metrics.add_metric(name="ManifestEntriesRejected", unit=MetricUnit.Count, value=len(entries))


def trigger_import(bucket: str, key: str, *, s3: Any, sfn: Any, repository: Tracking, config: Settings) -> Triggered:
    manifest = read_manifest(s3, bucket, key, config.dicom_prefix)
    arn = execution_arn(config.state_machine_arn, manifest.batch_id)
    # S3 delivers events at least once; the execution name (the batch id) makes the second delivery a no-op.
    if execution_exists(sfn, arn):
        logger.info("batch already started", extra={"batchId": manifest.batch_id})
        return Triggered(manifest.batch_id, arn, started=False)
    missing = check_objects(s3, bucket, manifest)
    if missing:
        missing_keys = {entry.key for entry in missing}
        manifest = replace(manifest, instances=tuple(i for i in manifest.instances if i.key not in missing_keys))
    # One bad entry never holds up the others: each is recorded FAILED with its reason, the rest imports.
    failed = repository.record_rejected(manifest.batch_id, manifest.rejected + missing)
    report_rejected(manifest, missing, failed)
    rejected = len(manifest.rejected) + len(missing)
    if not manifest.instances:
        logger.error("no entry of the manifest can be imported", extra={"batchId": manifest.batch_id})
        return Triggered(manifest.batch_id, arn, started=False, rejected=rejected)
    recorded = repository.record_received(manifest)
    execution_input = {
        "batchId": manifest.batch_id,
        "bucket": bucket,
        "manifestKey": key,
        "prefix": manifest.prefix,
    }
    try:
        arn = sfn.start_execution(
            stateMachineArn=config.state_machine_arn,
            name=manifest.batch_id,
            input=json.dumps(execution_input),
        )["executionArn"]
        started = True
    except ClientError as error:
        if error.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        started = False
    logger.info(
        "batch import started" if started else "batch already started",
        extra={"batchId": manifest.batch_id, "instances": len(manifest.instances), "recorded": recorded},
    )
    return Triggered(manifest.batch_id, arn, started, rejected)


@metrics.log_metrics
@logger.inject_lambda_context
@event_source(data_class=S3Event)
def handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    results, rejected = [], []
    for record in event.records:
        # S3 notifications URL-encode the key (a space arrives as "+"); Powertools decodes only the first
        # record's ``object_key``, so each record is decoded here.
        bucket, key = record.s3.bucket.name, unquote_plus(record.s3.get_object.key)
        try:
            triggered = trigger_import(
                bucket,
                key,
                s3=client("s3"),
                sfn=client("stepfunctions"),
                repository=tracking(),
                config=settings(),
            )
        except InvalidManifest as error:
            logger.error("manifest rejected", extra={"bucket": bucket, "key": key, "reason": str(error)})
            metrics.add_metric(name="ManifestsRejected", unit=MetricUnit.Count, value=1)
            rejected.append({"key": key, "reason": str(error)})
            continue
        metrics.add_metric(name="BatchesStarted", unit=MetricUnit.Count, value=int(triggered.started))
        results.append(triggered.to_json())
    if rejected:
        # Fail the invocation so the rejection shows in the function's error metric and destination.
        raise InvalidManifest(json.dumps(rejected))
    return {"batches": results}
