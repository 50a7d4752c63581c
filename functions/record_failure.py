"""RecordFailure: the workflow gave up on a batch (a caught error, or the polling bound); record it.

The instances it records FAILED (TIMED_OUT at the polling bound) never reached HealthImaging by this batch, and no
other step will say so: it writes the batch's ingest outcome to the audit log group as CheckStatus and StoreBatch
do (dicom_store_contract.audit_ingest), one message per study, read from the instance table.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from dicom_store_contract import audit_ingest, ingest, tables
from dicom_store_contract.manifest import Manifest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import read_manifest, s3_uri
from functions.settings import Settings, audit_logs, client, settings
from functions.tracking import InstanceState, InstanceTableThrottled, JobStatus, Tracking, stow_job_id, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)

# The Error name the state machine gives the polling bound (a Pass state fills $.error with it).
POLLING_BOUND = "PollingBoundReached"


def record_failure(
    execution: dict[str, Any], *, s3: Any, repository: Tracking, config: Settings, logs: Any = None
) -> dict[str, Any]:
    """``logs``: the CloudWatch Logs client the batch's ingest audit messages are written with (None: not written)."""
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
    # Marked given up, not refused: a re-drive of the batch sends them again (StoreBatch) or records what the job
    # reports of them (StartImportJob, CheckStatus), and records of HealthImaging's own refusals stay as they are.
    attributes: dict[str, Any] = {"failureReason": message, tables.WORKFLOW_GAVE_UP: True}
    if job_id:
        attributes["jobId"] = job_id
    # Instances CheckStatus or StoreBatch already settled keep their outcome; those an earlier give-up marked take
    # this one's reason.
    uids = (i.sop_instance_uid for i in manifest.instances)
    marked = repository.update_instances(batch_id, uids, state, pending_only=True, **attributes)
    if logs is not None and config.audit_log_group:
        _audit(logs, config, execution, manifest, repository, job_id)
    logger.error(
        "batch import gave up",
        extra={"batchId": batch_id, "jobId": job_id, "state": state, "reason": message},
    )
    metrics.add_metric(name="BatchesTimedOut" if timed_out else "BatchesFailed", unit=MetricUnit.Count, value=1)
    return {"batchId": batch_id, "jobId": job_id, "state": state, "instances": marked, "message": message}


_IMPORTED = (InstanceState.IMPORTED, InstanceState.IMPORTED_WITH_WARNINGS)
# Not imported by this batch: refused, or given up on (the polling bound: the job may still end in HealthImaging,
# but nothing will record it; the reason says which).
_NOT_IMPORTED = (InstanceState.FAILED, InstanceState.TIMED_OUT)


def _audit(
    logs: Any,
    config: Settings,
    execution: dict[str, Any],
    manifest: Manifest,
    repository: Tracking,
    job_id: str | None,
) -> None:
    """The batch's outcome in the audit log group, one message per study, as CheckStatus and StoreBatch write theirs.

    Read from the instance table after this step recorded the batch: every instance this batch still holds (one a
    later batch holds now is that batch's to report), FAILED/TIMED_OUT with the reason recorded and, in stow-batched
    mode, those an earlier StoreBatch run stored (it reports only once the whole batch is done, which it never was).
    The road is the one the batch took (the stack's IngestMode the execution carries). Never fails the step: what
    is given up is logged (counts and the error, not the messages) and counted in AuditMessagesNotWritten.
    """
    uids = [instance.sop_instance_uid for instance in manifest.instances]
    try:
        records = repository.instance_records(uids, "imageSetId", "failureReason")
    except (ClientError, InstanceTableThrottled) as error:
        # The outcomes are recorded (above); only their messages are lost: one per study of the batch.
        studies = len({i.study_instance_uid for i in manifest.instances if i.study_instance_uid})
        code = error.response["Error"]["Code"] if isinstance(error, ClientError) else type(error).__name__
        _not_written(manifest, job_id, audit_ingest.Delivery(0, studies, f"{code}: {error}"))
        return
    outcomes = []
    for instance in manifest.instances:
        record = records.get(instance.sop_instance_uid) or {}
        if record.get(tables.BATCH_ID) != manifest.batch_id:
            continue
        state = record.get("state")
        if state in _IMPORTED:
            outcomes.append(
                audit_ingest.InstanceOutcome(
                    instance.study_instance_uid,
                    instance.sop_class_uid,
                    True,
                    image_set_id=str(record.get("imageSetId", "")),
                    warnings=state == InstanceState.IMPORTED_WITH_WARNINGS,
                )
            )
        elif state in _NOT_IMPORTED:
            reason = str(record.get("failureReason", "")) or "failed"
            outcomes.append(
                audit_ingest.InstanceOutcome(
                    instance.study_instance_uid, instance.sop_class_uid, False, failure_reason=reason
                )
            )
    origin = audit_ingest.Node(manifest.called_ae, "", process=s3_uri(execution["bucket"], manifest.prefix))
    if execution.get("ingestMode") == ingest.STOW_BATCHED:
        # As StoreBatch: the DICOMweb endpoint it posts to, and no import job (stow-<batch id> is ours).
        road, job = audit_ingest.HEALTHIMAGING_STOW, ""
        endpoint = urlsplit(config.ahi_stow_url).hostname or config.ahi_stow_url
    else:
        road, job = audit_ingest.HEALTHIMAGING_IMPORT, job_id or ""
        endpoint = f"medical-imaging.{config.region}.amazonaws.com"
    data_store = audit_ingest.data_store_node(config.datastore_id, endpoint)
    delivery = audit_ingest.write_outcome(
        logs, config.audit_log_group, outcomes, origin, data_store, road=road, job_id=job
    )
    if delivery.given_up:
        _not_written(manifest, job_id, delivery)


def _not_written(manifest: Manifest, job_id: str | None, delivery: audit_ingest.Delivery) -> None:
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


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    logs = audit_logs() if config.audit_log_group else None
    return record_failure(event, s3=client("s3"), repository=tracking(), config=config, logs=logs)
