"""TriggerImport: a batch manifest landed in S3; check it, record its instances, start the import workflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from dicom_store_contract.manifest import InvalidManifest, Manifest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import list_objects, read_manifest
from functions.settings import Settings, client, settings
from functions.tracking import Tracking, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)


@dataclass(frozen=True)
class Triggered:
    batch_id: str
    execution_arn: str
    started: bool

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "executionArn": self.execution_arn, "started": self.started}


def check_objects(s3: Any, bucket: str, manifest: Manifest) -> None:
    """Every listed object must be stored, with the listed size; AHI imports the prefix, not the list."""
    stored = {item["Key"]: item["Size"] for item in list_objects(s3, bucket, manifest.prefix)}
    missing = [instance.key for instance in manifest.instances if instance.key not in stored]
    if missing:
        raise InvalidManifest(f"{len(missing)} listed object(s) are not stored, first {missing[0]}")
    wrong_size = [i.key for i in manifest.instances if i.size and stored[i.key] != i.size]
    if wrong_size:
        raise InvalidManifest(f"{len(wrong_size)} object(s) differ in size from the manifest, first {wrong_size[0]}")
    unlisted = set(stored) - {instance.key for instance in manifest.instances}
    if unlisted:
        # AHI will import these too, untracked: worth a look, not worth refusing the batch over.
        logger.warning("objects under the batch prefix missing from the manifest", extra={"count": len(unlisted)})


def execution_arn(state_machine_arn: str, name: str) -> str:
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"


def execution_exists(sfn: Any, arn: str) -> bool:
    try:
        sfn.describe_execution(executionArn=arn)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return False
        raise
    return True


def trigger_import(bucket: str, key: str, *, s3: Any, sfn: Any, repository: Tracking, config: Settings) -> Triggered:
    manifest = read_manifest(s3, bucket, key, config.dicom_prefix)
    arn = execution_arn(config.state_machine_arn, manifest.batch_id)
    # S3 delivers events at least once; the execution name (the batch id) makes the second delivery a no-op.
    if execution_exists(sfn, arn):
        logger.info("batch already started", extra={"batchId": manifest.batch_id})
        return Triggered(manifest.batch_id, arn, started=False)
    check_objects(s3, bucket, manifest)
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
    return Triggered(manifest.batch_id, arn, started)


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
