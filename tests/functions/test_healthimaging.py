"""Our HealthImaging wrapper against botocore's Stubber (request shapes), and the job-output reader."""

from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber

from functions import settings
from functions.healthimaging import (
    HealthImagingImportJobs,
    HealthImagingUnavailable,
    ImportJob,
    ImportJobRejected,
    ImportJobSlotsFull,
    ImportJobThrottled,
    job_output_uri,
    read_job_output,
    warning_codes,
)
from functions.settings import RETRY_CONFIG

from .conftest import DATASTORE_ID, RESULTS_BUCKET, ROLE_ARN

JOB_ID = "09876543210987654321098765432109"
START = {
    "jobName": "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb",
    "dataAccessRoleArn": ROLE_ARN,
    "clientToken": "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb",
    "datastoreId": DATASTORE_ID,
    "inputS3Uri": "s3://dicom-bucket/incoming/20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb/",
    "outputS3Uri": "s3://results-bucket/20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb/",
}


@pytest.fixture
def stubbed(aws_credentials):
    # No retries here: each stubbed error should reach our translation exactly once.
    client = boto3.client("medical-imaging", region_name="us-east-1", config=RETRY_CONFIG.merge(_no_retries()))
    with Stubber(client) as stubber:
        yield stubber, HealthImagingImportJobs(client, DATASTORE_ID, ROLE_ARN)
        stubber.assert_no_pending_responses()


def _no_retries():
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": 1})


def start(jobs):
    return jobs.start_import_job(
        job_name=START["jobName"],
        client_token=START["clientToken"],
        input_s3_uri=START["inputS3Uri"],
        output_s3_uri=START["outputS3Uri"],
    )


def test_start_sends_the_documented_request(stubbed):
    stubber, jobs = stubbed
    submitted = datetime(2026, 11, 23, 19, 5, 10, tzinfo=UTC)
    stubber.add_response(
        "start_dicom_import_job",
        {"datastoreId": DATASTORE_ID, "jobId": JOB_ID, "jobStatus": "SUBMITTED", "submittedAt": submitted},
        expected_params=START,
    )
    job = start(jobs)
    assert (job.job_id, job.job_status, job.submitted_at) == (JOB_ID, "SUBMITTED", submitted.isoformat())


@pytest.mark.parametrize(
    ("code", "error"),
    [("ThrottlingException", ImportJobThrottled), ("ServiceQuotaExceededException", ImportJobSlotsFull)],
)
def test_throttling_and_quota_errors_become_retryable(stubbed, code, error):
    # Throttled: retried within seconds. Concurrent-job quota: the data store is busy, waited for (hours).
    stubber, jobs = stubbed
    stubber.add_client_error("start_dicom_import_job", service_error_code=code, http_status_code=429)
    with pytest.raises(error, match=code):
        start(jobs)


@pytest.mark.parametrize("operation", ["start_dicom_import_job", "get_dicom_import_job"])
def test_a_server_error_is_retryable_not_a_reason_to_give_the_batch_up(stubbed, operation):
    # Issue 26's scale run: a 500 the SDK's retries did not absorb reached the workflow as "ClientError", which only
    # its catch-all Catch matched: the batch was recorded FAILED although HealthImaging had refused nothing.
    stubber, jobs = stubbed
    stubber.add_client_error(operation, service_error_code="InternalServerException", http_status_code=500)
    with pytest.raises(HealthImagingUnavailable, match="InternalServerException"):
        start(jobs) if operation == "start_dicom_import_job" else jobs.get_import_job(JOB_ID)


def test_validation_errors_are_not_retryable(stubbed):
    stubber, jobs = stubbed
    stubber.add_client_error("start_dicom_import_job", service_error_code="ValidationException", http_status_code=400)
    with pytest.raises(ImportJobRejected):
        start(jobs)


def test_get_reads_the_job_properties(stubbed):
    stubber, jobs = stubbed
    output = f"{START['outputS3Uri']}{DATASTORE_ID}-DicomImport-{JOB_ID}/"
    stubber.add_response(
        "get_dicom_import_job",
        {
            "jobProperties": {
                "jobId": JOB_ID,
                "jobName": START["jobName"],
                "jobStatus": "FAILED",
                "datastoreId": DATASTORE_ID,
                "dataAccessRoleArn": ROLE_ARN,
                "endedAt": datetime(2026, 11, 23, 19, 6, tzinfo=UTC),
                "submittedAt": datetime(2026, 11, 23, 19, 5, tzinfo=UTC),
                "inputS3Uri": START["inputS3Uri"],
                "outputS3Uri": output,
                "message": "Access denied to the input bucket",
            }
        },
        expected_params={"datastoreId": DATASTORE_ID, "jobId": JOB_ID},
    )
    job = jobs.get_import_job(JOB_ID)
    assert job.ended and job.job_status == "FAILED"
    assert job.message == "Access denied to the input bucket"
    assert job_output_uri(job) == output


def test_every_client_retries_in_standard_mode(environment):
    # Throttling (StartDICOMImportJob's rate, DynamoDB, Step Functions) is retried with backoff by every client.
    for service in ("s3", "dynamodb", "stepfunctions", "medical-imaging"):
        retries = settings.client(service).meta.config.retries
        # botocore reads RETRY_CONFIG's max_attempts (8) as retries after the first attempt.
        assert retries == {"mode": "standard", "total_max_attempts": 9}


def test_output_folder_is_derived_when_the_job_reports_only_the_requested_prefix():
    job = ImportJob(job_id=JOB_ID, job_status="COMPLETED", datastore_id=DATASTORE_ID, output_s3_uri="s3://r/b")
    assert job_output_uri(job) == f"s3://r/b/{DATASTORE_ID}-DicomImport-{JOB_ID}/"


def test_job_output_reads_success_warning_and_failure_records(s3):
    folder = f"b/{DATASTORE_ID}-DicomImport-{JOB_ID}/"
    s3.put_object(Bucket=RESULTS_BUCKET, Key=f"{folder}job-output-manifest.json", Body=b'{"jobSummary": {}}')
    s3.put_object(
        Bucket=RESULTS_BUCKET,
        Key=f"{folder}SUCCESS/success.ndjson",
        Body=b'{"inputFile":"in/a.dcm","importResponse":{"imageSetId":"set1","isPrimary":false}}\n',
    )
    s3.put_object(
        Bucket=RESULTS_BUCKET,
        Key=f"{folder}WARNING/warning.ndjson",
        Body=b'{"inputFile":"in/b.dcm","importResponse":{"imageSetId":"set1","isPrimary":true,"warnings":[]}}\n',
    )
    s3.put_object(
        Bucket=RESULTS_BUCKET,
        Key=f"{folder}FAILURE/failure.ndjson",
        Body=b'{"inputFile":"in/c.dcm","exception":{"exceptionType":"ValidationException","message":"no TS"}}\n',
    )
    outcomes = {o.input_file: o for o in read_job_output(s3, f"s3://{RESULTS_BUCKET}/{folder}").outcomes}
    assert outcomes["in/a.dcm"].imported and outcomes["in/a.dcm"].is_primary is False
    assert outcomes["in/b.dcm"].imported and outcomes["in/b.dcm"].image_set_id == "set1"
    assert not outcomes["in/c.dcm"].imported
    assert outcomes["in/c.dcm"].reason == "ValidationException: no TS"


def test_missing_job_output_reads_as_no_outcomes(s3):
    assert read_job_output(s3, f"s3://{RESULTS_BUCKET}/nothing/").outcomes == ()


@pytest.mark.parametrize(
    "record",
    [
        {"warnings": [{"warningReason": "0xB100", "warningType": "TRANSCODING_EXCEPTION"}]},
        {"importResponse": {"warnings": ["TRANSCODING_EXCEPTION"]}},
        {"warning": {"code": 45312}},
        {"warnings": ["0xb100"]},
    ],
)
def test_warning_codes_are_read_in_every_documented_form(record):
    # The warning codes page gives hexadecimal, decimal and enum forms; any of them reads the same.
    assert warning_codes(record) == ("0xB100 TRANSCODING_EXCEPTION",)


def test_the_guides_warning_record_reads_as_its_code_and_name():
    # Verbatim the warning.ndjson example of the developer guide's "Understanding import jobs".
    record = {
        "inputFile": "dicom_input/warningDicomFile1.dcm",
        "importResponse": {
            "imageSetId": "12345612345612345678907890789012",
            "imageSetVersion": 1,
            "isPrimary": True,
            "warnings": [
                {
                    "warning_reason_code": 45330,
                    "type": "InvalidOffsetTable",
                    "message": "The file was imported but contains an invalid offset table, may see issues when "
                    "retrieving certain frames.",
                }
            ],
        },
    }
    assert warning_codes(record) == ("0xB112 INVALID_OFFSET_TABLE",)


def test_a_warning_record_without_codes_still_reads_as_a_warning():
    assert warning_codes({"inputFile": "a.dcm", "importResponse": {"imageSetId": "s"}}) == ("unspecified",)
    assert warning_codes({"warnings": ["0xB201"]}) == ("0xB201",)
