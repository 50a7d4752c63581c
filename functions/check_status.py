"""CheckStatus: poll the batch's import job; once it has ended, record every instance's outcome."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from dicom_store_contract import audit_ingest, job_events
from dicom_store_contract.manifest import Manifest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import read_manifest, s3_uri, split_s3_uri
from functions.healthimaging import (
    FileOutcome,
    ImportJobs,
    import_jobs,
    job_output_uri,
    read_job_output,
)
from functions.settings import Settings, audit_logs, client, settings
from functions.tracking import InstanceState, JobStatus, Tracking, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)


def _object_key(input_file: str) -> str:
    return split_s3_uri(input_file)[1] if input_file.startswith("s3://") else input_file.lstrip("/")


def match_outcomes(manifest: Manifest, outcomes: tuple[FileOutcome, ...]) -> dict[str, FileOutcome]:
    """Outcomes by SOP Instance UID.

    The guide's examples show ``inputFile`` as an object key; matching also by the path below the batch
    prefix and by file name (``<SOPInstanceUID>.dcm``, unique within a batch) keeps us right if AHI reports
    it relative to ``inputS3Uri`` instead.
    """
    by_key = {_object_key(outcome.input_file): outcome for outcome in outcomes}
    by_name = {posixpath.basename(key): outcome for key, outcome in by_key.items()}
    matched = {}
    for instance in manifest.instances:
        relative = instance.key[len(manifest.prefix) :]
        outcome = by_key.get(instance.key) or by_key.get(relative) or by_name.get(posixpath.basename(instance.key))
        if outcome is not None:
            matched[instance.sop_instance_uid] = outcome
    return matched


def check_status(
    execution: dict[str, Any],
    *,
    s3: Any,
    jobs: ImportJobs,
    repository: Tracking,
    config: Settings,
    logs: Any = None,
) -> dict[str, Any]:
    """``logs``: the CloudWatch Logs client the job's ingest audit messages are written with (None: not written)."""
    batch_id, job_id = execution["batchId"], execution["jobId"]
    polling = dict(execution.get("polling") or {})
    job = jobs.get_import_job(job_id)
    result = {**polling, "jobStatus": job.job_status, "ended": job.ended, "succeeded": False}
    if not job.ended:
        repository.update_job(job_id, job.job_status)
        return result

    manifest = read_manifest(s3, execution["bucket"], execution["manifestKey"], config.dicom_prefix)
    output = read_job_output(s3, job_output_uri(job, execution.get("outputS3Uri", "")))
    outcomes = match_outcomes(manifest, output.outcomes)
    imported = failed = with_warnings = non_primary = 0
    audited: list[audit_ingest.InstanceOutcome] = []
    for instance in manifest.instances:
        outcome = outcomes.get(instance.sop_instance_uid)
        if outcome is not None and outcome.imported:
            audited.append(
                audit_ingest.InstanceOutcome(
                    instance.study_instance_uid,
                    instance.sop_class_uid,
                    True,
                    image_set_id=outcome.image_set_id,
                    warnings=bool(outcome.warnings),
                )
            )
            # warning.ndjson lists files imported with warnings; isPrimary false means the instance landed in a
            # non-primary image set (it conflicted with what the data store already held).
            state = InstanceState.IMPORTED_WITH_WARNINGS if outcome.warnings else InstanceState.IMPORTED
            warnings: dict[str, Any] = {"warnings": list(outcome.warnings)} if outcome.warnings else {}
            repository.update_instance(
                batch_id,
                instance.sop_instance_uid,
                state,
                jobId=job_id,
                imageSetId=outcome.image_set_id,
                isPrimary=outcome.is_primary,
                **warnings,
            )
            imported += 1
            with_warnings += bool(outcome.warnings)
            non_primary += not outcome.is_primary
            continue
        # A COMPLETED job may still have refused some files; a file it does not mention was not imported.
        if outcome is not None:
            reason = outcome.reason or "import failed"
        elif job.job_status == JobStatus.COMPLETED:
            reason = "not reported in the import job output"
        else:
            reason = job.message or f"import job {job.job_status}"
        audited.append(
            audit_ingest.InstanceOutcome(
                instance.study_instance_uid, instance.sop_class_uid, False, failure_reason=reason
            )
        )
        repository.update_instance(
            batch_id,
            instance.sop_instance_uid,
            InstanceState.FAILED,
            # Without an outcome of AHI's, a reason recorded earlier (TriggerImport: the object is not stored) stays.
            pending_only=outcome is None,
            jobId=job_id,
            failureReason=reason,
        )
        failed += 1

    repository.update_job(
        job_id,
        job.job_status,
        endedAt=job.ended_at or None,
        message=job.message or None,
        importedCount=imported,
        failedCount=failed,
        warningCount=with_warnings,
        nonPrimaryCount=non_primary,
    )
    if logs is not None and config.audit_log_group:
        _audit(logs, config, execution, manifest, job_id, audited)
    metrics.add_metric(name="InstancesImported", unit=MetricUnit.Count, value=imported)
    metrics.add_metric(name="InstancesFailed", unit=MetricUnit.Count, value=failed)
    metrics.add_metric(name="InstancesImportedWithWarnings", unit=MetricUnit.Count, value=with_warnings)
    metrics.add_metric(name="InstancesInNonPrimaryImageSets", unit=MetricUnit.Count, value=non_primary)
    logger.info(
        "import job ended",
        extra={
            "batchId": batch_id,
            "jobId": job_id,
            "jobStatus": job.job_status,
            "imported": imported,
            "failed": failed,
            "importedWithWarnings": with_warnings,
            "nonPrimary": non_primary,
        },
    )
    result.update(
        succeeded=job.job_status == JobStatus.COMPLETED and failed == 0,
        importedCount=imported,
        failedCount=failed,
        warningCount=with_warnings,
        nonPrimaryCount=non_primary,
        message=job.message,
    )
    return result


def _audit(
    logs: Any,
    config: Settings,
    execution: dict[str, Any],
    manifest: Manifest,
    job_id: str,
    audited: list[audit_ingest.InstanceOutcome],
) -> None:
    """The job's outcome in the audit log group, one message per study (dicom_store_contract.audit_ingest).

    Never fails the step: the outcome is recorded in the tables above, and a retried CheckStatus would only write
    the messages again. What is given up after the retries is logged (counts and the error, not the messages) and
    counted in AuditMessagesNotWritten (AuditMessagesLostAlarm).
    """
    origin = audit_ingest.Node(manifest.called_ae, "", process=s3_uri(execution["bucket"], manifest.prefix))
    data_store = audit_ingest.data_store_node(config.datastore_id, f"medical-imaging.{config.region}.amazonaws.com")
    delivery = audit_ingest.write_outcome(
        logs, config.audit_log_group, audited, origin, data_store, road=audit_ingest.HEALTHIMAGING_IMPORT, job_id=job_id
    )
    if delivery.given_up:
        metrics.add_metric(name="AuditMessagesNotWritten", unit=MetricUnit.Count, value=delivery.given_up)
        logger.error(
            "ingest audit messages not written",
            extra={
                "batchId": manifest.batch_id,
                "jobId": job_id,
                "written": delivery.written,
                "notWritten": delivery.given_up,
                "error": delivery.error,
            },
        )


# --- waiting for AHI's job events (EventBridge) instead of polling -----------------------------------------
#
# WaitForCompletion invokes this function with its task token ("waitForJobEvent"); AHI publishes "Import Job
# Completed" / "Import Job Failed" events (source aws.medical-imaging) that an EventBridge rule delivers here. The
# token is stored on the job item; whichever comes second (the event, or a registration that finds the job ended)
# sends it back. An event that never comes only costs the poll interval: the wait then times out and polls.


def _wake(sfn: Any, task_token: str, job_id: str, job_status: str) -> bool:
    try:
        sfn.send_task_success(taskToken=task_token, output=json.dumps({"jobId": job_id, "jobStatus": job_status}))
    except ClientError as error:
        # TaskTimedOut / InvalidToken: that wait already ended (polled, or woken by the other path). AccessDenied:
        # the stack does not allow it yet; the wait times out and polls.
        logger.info("wait not woken", extra={"jobId": job_id, "error": error.response["Error"]["Code"]})
        return False
    return True


def register_wait(wait: dict[str, Any], *, jobs: ImportJobs, repository: Tracking, sfn: Any) -> dict[str, Any]:
    job_id, task_token = wait["jobId"], wait["taskToken"]
    repository.set_wait_token(job_id, task_token)
    # The job may have ended before the token was stored, and its event found none: look once.
    job = jobs.get_import_job(job_id)
    woken = job.ended and _wake(sfn, task_token, job_id, job.job_status)
    return {"registered": True, "jobStatus": job.job_status, "woken": woken}


def relay_job_event(event: dict[str, Any], *, repository: Tracking, sfn: Any, config: Settings) -> dict[str, Any]:
    detail = event.get("detail") or {}
    job_id, job_status = str(detail.get("jobId", "")), str(detail.get("jobStatus", ""))
    if not job_events.matches(event, config.datastore_id):
        return {"relayed": False, "jobId": job_id}
    job = repository.get_job(job_id) or {}
    token = job.get("waitToken")
    woken = bool(token) and _wake(sfn, str(token), job_id, job_status)
    logger.info("import job event", extra={"jobId": job_id, "jobStatus": job_status, "woken": woken})
    return {"relayed": woken, "jobId": job_id}


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "waitForJobEvent" in event:
        return register_wait(
            event["waitForJobEvent"], jobs=import_jobs(), repository=tracking(), sfn=client("stepfunctions")
        )
    if event.get("source") == job_events.SOURCE:
        return relay_job_event(event, repository=tracking(), sfn=client("stepfunctions"), config=settings())
    metrics.add_metric(name="ImportJobPolls", unit=MetricUnit.Count, value=1)
    config = settings()
    logs = audit_logs() if config.audit_log_group else None
    return check_status(event, s3=client("s3"), jobs=import_jobs(), repository=tracking(), config=config, logs=logs)
