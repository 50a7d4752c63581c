"""StartImportJob: one AWS HealthImaging import job per batch, recorded in the job and instance tables."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from dicom_store_contract.executions import FOLLOWED_JOB
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import read_manifest, s3_uri
from functions.healthimaging import ImportJob, ImportJobRejected, ImportJobs, import_jobs
from functions.settings import Settings, client, settings
from functions.tracking import InstanceState, Tracking, tracking

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)


def client_token(batch_id: str) -> str:
    # The batch id never repeats and fits AHI's 64-character token, so a retried or re-driven start
    # gets the job that already exists instead of importing the batch twice.
    return batch_id


def start_import_job(
    execution: dict[str, Any], *, s3: Any, jobs: ImportJobs, repository: Tracking, config: Settings
) -> dict[str, Any]:
    batch_id, bucket = execution["batchId"], execution["bucket"]
    manifest = read_manifest(s3, bucket, execution["manifestKey"], config.dicom_prefix)
    input_uri = s3_uri(bucket, manifest.prefix)
    output_uri = s3_uri(config.results_bucket, f"{batch_id}/")
    followed = execution.get(FOLLOWED_JOB)
    if followed:
        job = _followed_job(jobs, str(followed), input_uri)
    else:
        job = jobs.start_import_job(
            job_name=batch_id,
            client_token=client_token(batch_id),
            input_s3_uri=input_uri,
            output_s3_uri=output_uri,
        )
    single = manifest.instances[0] if len(manifest.instances) == 1 else None
    repository.put_job(
        {
            "jobId": job.job_id,
            "jobStatus": job.job_status,
            "submittedAt": job.submitted_at,
            "inputS3Uri": input_uri,
            "outputS3Uri": output_uri,
            "datastoreId": config.datastore_id,
            "dataAccessRoleArn": config.data_access_role_arn,
            # The seed tracked one instance per job; a batch keeps these only where all its instances agree.
            "studyDate": manifest.shared("study_date"),
            "studyInstanceUID": manifest.shared("study_instance_uid"),
            "seriesInstanceUID": manifest.shared("series_instance_uid"),
            "sopInstanceUID": single.sop_instance_uid if single else None,
            "message": job.message,
            "batchId": batch_id,
            "instanceCount": len(manifest.instances),
            # Entries of the manifest set apart (TriggerImport recorded them FAILED, or they repeat a SOP Instance).
            "rejectedCount": len(manifest.rejected),
            "importedCount": 0,
            "failedCount": 0,
        }
    )
    # Pending only: an instance TriggerImport already recorded FAILED (its object is not stored) keeps its reason.
    marked = repository.update_instances(
        batch_id,
        (i.sop_instance_uid for i in manifest.instances),
        InstanceState.IMPORTING,
        pending_only=True,
        jobId=job.job_id,
    )
    logger.info("import job started", extra={"batchId": batch_id, "jobId": job.job_id, "instances": marked})
    return {
        "jobId": job.job_id,
        "jobStatus": job.job_status,
        "inputS3Uri": input_uri,
        "outputS3Uri": output_uri,
        "instanceCount": len(manifest.instances),
    }


def _followed_job(jobs: ImportJobs, job_id: str, input_uri: str) -> ImportJob:
    """The job a re-drive names (the job table recorded it for this batch): read, never started again."""
    job = jobs.get_import_job(job_id)
    # A job of another batch would record this batch's instances with that batch's outcomes.
    if job.input_s3_uri and job.input_s3_uri.rstrip("/") != input_uri.rstrip("/"):
        raise ImportJobRejected(f"import job {job_id} imports {job.input_s3_uri}, not this batch's {input_uri}")
    return job


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Attempts against ImportJobsStarted shows how often AHI's start rate pushed a start into a retry.
    metrics.add_metric(name="ImportJobStartAttempts", unit=MetricUnit.Count, value=1)
    result = start_import_job(event, s3=client("s3"), jobs=import_jobs(), repository=tracking(), config=settings())
    metrics.add_metric(name="ImportJobsStarted", unit=MetricUnit.Count, value=1)
    return result
