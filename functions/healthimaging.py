"""AWS HealthImaging behind one small interface: start an import job, read its properties, find its output.

moto has no HealthImaging backend, so everything the pipeline needs from the service goes through
``ImportJobs``; the tests drive the pipeline with an in-memory fake of the same interface.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from botocore.exceptions import ClientError

from functions.contract import split_s3_uri
from functions.settings import client, settings
from functions.tracking import JobStatus

# StartDICOMImportJob is throttled (dicom_store_contract.limits: START_IMPORT_JOB_RATE): "try again in a moment".
RETRYABLE_ERROR_CODES = frozenset({"ThrottlingException", "TooManyRequestsException"})
# HealthImaging's documented 500 (and any 5xx): the request did nothing; the SDK retried it already, the workflow
# retries the step again with backoff rather than give the batch up for a fault of the service's.
SERVER_ERROR_CODES = frozenset({"InternalServerException"})
# A data store runs a bounded number of import jobs at once (CONCURRENT_IMPORT_JOBS, by region): "try again when
# one of them has ended", which can take hours. Never "this batch is bad".
SLOTS_FULL_ERROR_CODES = frozenset({"ServiceQuotaExceededException"})


class ImportJobThrottled(Exception):
    """HealthImaging asked us to slow down. The state machine retries on this error name with backoff."""


class HealthImagingUnavailable(Exception):
    """HealthImaging answered a server error (500). The state machine retries on this error name with backoff."""


class ImportJobSlotsFull(Exception):
    """The data store runs as many import jobs as its quota allows. The state machine waits (hours, bounded)."""


class ImportJobRejected(Exception):
    """HealthImaging refused the request for a reason retrying will not fix."""


@dataclass(frozen=True)
class ImportJob:
    job_id: str
    job_status: JobStatus
    datastore_id: str
    submitted_at: str = ""
    ended_at: str = ""
    input_s3_uri: str = ""
    output_s3_uri: str = ""
    message: str = ""
    job_name: str = ""

    @property
    def ended(self) -> bool:
        return JobStatus(self.job_status).ended


class ImportJobs(Protocol):
    def start_import_job(
        self,
        *,
        job_name: str,
        client_token: str,
        input_s3_uri: str,
        output_s3_uri: str,
    ) -> ImportJob: ...

    def get_import_job(self, job_id: str) -> ImportJob: ...


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value or "")


class HealthImagingImportJobs:
    """``ImportJobs`` over the boto3 ``medical-imaging`` client for one data store."""

    def __init__(self, client: Any, datastore_id: str, data_access_role_arn: str):
        self.client = client
        self.datastore_id = datastore_id
        self.data_access_role_arn = data_access_role_arn

    def start_import_job(self, *, job_name: str, client_token: str, input_s3_uri: str, output_s3_uri: str) -> ImportJob:
        try:
            response = self.client.start_dicom_import_job(
                jobName=job_name,
                dataAccessRoleArn=self.data_access_role_arn,
                clientToken=client_token,
                datastoreId=self.datastore_id,
                inputS3Uri=input_s3_uri,
                outputS3Uri=output_s3_uri,
            )
        except ClientError as error:
            raise _translate(error) from error
        return ImportJob(
            job_id=response["jobId"],
            job_status=JobStatus(response["jobStatus"]),
            datastore_id=response["datastoreId"],
            submitted_at=_timestamp(response.get("submittedAt")),
            input_s3_uri=input_s3_uri,
            output_s3_uri=output_s3_uri,
            job_name=job_name,
        )

    def get_import_job(self, job_id: str) -> ImportJob:
        try:
            response = self.client.get_dicom_import_job(datastoreId=self.datastore_id, jobId=job_id)
        except ClientError as error:
            raise _translate(error) from error
        properties = response["jobProperties"]
        return ImportJob(
            job_id=properties["jobId"],
            job_status=JobStatus(properties["jobStatus"]),
            datastore_id=properties["datastoreId"],
            submitted_at=_timestamp(properties.get("submittedAt")),
            ended_at=_timestamp(properties.get("endedAt")),
            input_s3_uri=properties.get("inputS3Uri", ""),
            output_s3_uri=properties.get("outputS3Uri", ""),
            message=properties.get("message", ""),
            job_name=properties.get("jobName", ""),
        )


def _translate(error: ClientError) -> Exception:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    if code in RETRYABLE_ERROR_CODES:
        return ImportJobThrottled(f"{code}: {message}")
    if code in SLOTS_FULL_ERROR_CODES:
        return ImportJobSlotsFull(f"{code}: {message}")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in SERVER_ERROR_CODES or status >= 500:
        return HealthImagingUnavailable(f"{code}: {message}")
    if code in (
        "ValidationException",
        "AccessDeniedException",
        "ConflictException",
        "ResourceNotFoundException",
    ):
        return ImportJobRejected(f"{code}: {message}")
    return error


# --- job output ------------------------------------------------------------------------------------------
#
# Per the AHI developer guide ("Understanding import jobs"), a job writes under
# <outputS3Uri>/<datastoreId>-DicomImport-<jobId>/: job-output-manifest.json (a jobSummary with
# successOutputS3Uri / failureOutputS3Uri / warningsOutputS3Uri and counts), SUCCESS/success.ndjson
# ({"inputFile", "importResponse": {"imageSetId", "isPrimary"}}), FAILURE/failure.ndjson
# ({"inputFile", "exception": {"exceptionType", "message"}}) and WARNING/warning.ndjson (imported, with
# warnings, same shape as success). GetDICOMImportJob reports outputS3Uri with the job folder appended.
#
# The guide ("Understanding import jobs") shows a warning.ndjson record as
#   {"inputFile", "importResponse": {"imageSetId", "imageSetVersion", "isPrimary",
#                                    "warnings": [{"warning_reason_code": 45330, "type": "InvalidOffsetTable",
#                                                  "message": ...}]}}
# and its "HealthImaging warning codes" page lists the codes (hexadecimal reason, decimal, enum name). We read a
# record's warnings from "warnings" (or "warning"), in "importResponse" or at the top level: codes as numbers,
# "0xB100" strings or enum names, or objects holding one of those under "warning_reason_code", "warningReason",
# "reason", "code", "warningType" or "type"; each becomes "0xB112 INVALID_OFFSET_TABLE".

OUTPUT_MANIFEST = "job-output-manifest.json"

WARNING_CODES = {
    0xB000: "COERCION_OF_DATA_ELEMENTS",
    0xB006: "ELEMENTS_DISCARDED",
    0xB007: "SOP_CLASS_DATA_MISMATCH",
    0xB100: "TRANSCODING_EXCEPTION",
    0xB110: "FRAMES_EXTRACTION_FAILURE",
    0xB111: "FRAME_NUMBER_MISMATCH",
    0xB112: "INVALID_OFFSET_TABLE",
    0xB120: "UNSUPPORTED_TRANSFER_SYNTAX",
}
_WARNING_BY_NAME = {name: code for code, name in WARNING_CODES.items()}


def _warning_code(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("warning_reason_code", "warningReason", "reason", "code", "warningType", "type"):
            if value.get(key) not in (None, ""):
                return _warning_code(value[key])
        return "unknown"
    code: int | None = None
    if isinstance(value, int):
        code = value
    elif isinstance(value, str):
        text = value.strip()
        if text.upper() in _WARNING_BY_NAME:
            code = _WARNING_BY_NAME[text.upper()]
        else:
            try:
                code = int(text, 16) if text.lower().startswith("0x") else int(text)
            except ValueError:
                return text or "unknown"
    if code is None:
        return str(value)
    name = WARNING_CODES.get(code)
    return f"0x{code:04X} {name}" if name else f"0x{code:04X}"


def warning_codes(record: dict[str, Any]) -> tuple[str, ...]:
    """The warnings one warning.ndjson record reports, as "0xB100 TRANSCODING_EXCEPTION"."""
    found: list[Any] = []
    for holder in (record, record.get("importResponse") or {}):
        for key in ("warnings", "warning"):
            value = holder.get(key) if isinstance(holder, dict) else None
            if value is None:
                continue
            found.extend(value if isinstance(value, list) else [value])
    codes = tuple(dict.fromkeys(_warning_code(value) for value in found))
    return codes or ("unspecified",)


def job_output_uri(job: ImportJob, requested_output_s3_uri: str = "") -> str:
    """The folder the job writes its results to."""
    folder = f"{job.datastore_id}-DicomImport-{job.job_id}/"
    uri = job.output_s3_uri or requested_output_s3_uri
    if not uri.endswith("/"):
        uri += "/"
    return uri if uri.endswith(folder) else uri + folder


@dataclass(frozen=True)
class FileOutcome:
    input_file: str
    imported: bool
    image_set_id: str = ""
    is_primary: bool = False
    reason: str = ""
    # Set for a file listed in warning.ndjson: imported, with these warnings (see warning_codes).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobOutput:
    summary: dict[str, Any]
    outcomes: tuple[FileOutcome, ...]


def _read(s3: Any, uri: str) -> bytes | None:
    bucket, key = split_s3_uri(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def _ndjson(body: bytes | None) -> Iterator[dict[str, Any]]:
    for line in (body or b"").decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


def read_job_output(s3: Any, output_uri: str) -> JobOutput:
    """Every file outcome the job reported; absent files (a job that FAILED early writes none) are empty."""
    manifest = _read(s3, output_uri + OUTPUT_MANIFEST)
    summary = json.loads(manifest).get("jobSummary", {}) if manifest else {}
    success_uri = summary.get("successOutputS3Uri") or output_uri + "SUCCESS/"
    failure_uri = summary.get("failureOutputS3Uri") or output_uri + "FAILURE/"
    warning_uri = summary.get("warningsOutputS3Uri") or output_uri + "WARNING/"
    outcomes: list[FileOutcome] = []
    for uri, name in ((success_uri, "success.ndjson"), (warning_uri, "warning.ndjson")):
        for record in _ndjson(_read(s3, uri + name)):
            response = record.get("importResponse") or {}
            outcomes.append(
                FileOutcome(
                    input_file=record.get("inputFile", ""),
                    imported=True,
                    image_set_id=response.get("imageSetId", ""),
                    is_primary=bool(response.get("isPrimary", True)),
                    warnings=warning_codes(record) if name == "warning.ndjson" else (),
                )
            )
    for record in _ndjson(_read(s3, failure_uri + "failure.ndjson")):
        exception = record.get("exception", {})
        reason = ": ".join(part for part in (exception.get("exceptionType"), exception.get("message")) if part)
        outcomes.append(FileOutcome(input_file=record.get("inputFile", ""), imported=False, reason=reason))
    return JobOutput(summary, tuple(outcomes))


@cache
def import_jobs() -> HealthImagingImportJobs:
    """The process-wide HealthImaging wrapper for the configured data store."""
    current = settings()
    return HealthImagingImportJobs(client("medical-imaging"), current.datastore_id, current.data_access_role_arn)
