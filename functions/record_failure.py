"""RecordFailure: the workflow gave up on a batch (a caught error, or the polling bound); record it."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from dicom_store_contract import ingest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import read_manifest
from functions.settings import Settings, client, settings
from functions.tracking import InstanceState, JobStatus, Tracking, stow_job_id, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)

# The Error name the state machine gives the polling bound (a Pass state fills $.error with it).
POLLING_BOUND = "PollingBoundReached"


def record_failure(execution: dict[str, Any], *, s3: Any, repository: Tracking, config: Settings) -> dict[str, Any]:
    batch_id = execution["batchId"]
    error = execution.get("error") or {}
    error_name = str(error.get("Error", "Unknown"))
    timed_out = error_name == POLLING_BOUND
    state = InstanceState.TIMED_OUT if timed_out else InstanceState.FAILED
    message = f"{error_name}: {error.get('Cause', '')}".rstrip(": ")
    job_id = (execution.get("importJob") or {}).get("jobId")
    if not job_id and execution.get("ingestMode") == ingest.STOW_BATCHED:
        # StoreBatch wrote the batch's job item on its first run, which may be the one that failed: its id is ours.
        job_id = stow_job_id(batch_id) if repository.get_job(stow_job_id(batch_id)) else None
    if job_id:
        repository.update_job(job_id, JobStatus.TIMED_OUT if timed_out else JobStatus.FAILED, message=message)
    manifest = read_manifest(s3, execution["bucket"], execution["manifestKey"], config.dicom_prefix)
    attributes: dict[str, Any] = {"failureReason": message}
    if job_id:
        attributes["jobId"] = job_id
    # Instances CheckStatus already settled keep their outcome.
    uids = (i.sop_instance_uid for i in manifest.instances)
    marked = repository.update_instances(batch_id, uids, state, pending_only=True, **attributes)
    logger.error(
        "batch import gave up",
        extra={"batchId": batch_id, "jobId": job_id, "state": state, "reason": message},
    )
    metrics.add_metric(name="BatchesTimedOut" if timed_out else "BatchesFailed", unit=MetricUnit.Count, value=1)
    return {"batchId": batch_id, "jobId": job_id, "state": state, "instances": marked, "message": message}


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return record_failure(event, s3=client("s3"), repository=tracking(), config=settings())
