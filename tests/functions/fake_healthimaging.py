"""An in-memory AWS HealthImaging behind our ``ImportJobs`` interface, faithful to the documented behaviour.

- Jobs go SUBMITTED -> IN_PROGRESS -> COMPLETED (or FAILED), one step per GetDICOMImportJob call.
- The same clientToken returns the same job (StartDICOMImportJob is idempotent on it); a token outside the API's
  pattern ([A-Za-z0-9._-]+, 1-64 characters) is a ValidationException.
- StartDICOMImportJob is throttled at AHI's current rate and burst (limits.START_IMPORT_JOB_RATE / _BURST, token
  bucket on an injectable clock); tests that want to meet the throttle pass smaller ones.
- A data store runs at most ``concurrent_jobs`` jobs (SUBMITTED or IN_PROGRESS) at once (limits.
  CONCURRENT_IMPORT_JOBS for the region): one more is refused with ServiceQuotaExceededException.
- A job that ends writes the developer guide's output under <outputS3Uri><datastoreId>-DicomImport-<jobId>/:
  job-output-manifest.json, SUCCESS/success.ndjson, FAILURE/failure.ndjson, WARNING/warning.ndjson.
  Files that are not DICOM Part 10, or that break an element constraint (limits.ELEMENT_CONSTRAINTS), fail with a
  ValidationException record. A file it cannot transcode (encapsulated pixel data whose first fragment does not
  start like its transfer syntax's codestream) is imported with warning 0xB100 TRANSCODING_EXCEPTION. A SOP
  instance the data store already holds with other content lands in a non-primary image set (isPrimary false).
  A FAILED job writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pydicom
from dicom_store_contract import limits
from pydicom.encaps import generate_fragments

from functions.contract import split_s3_uri
from functions.healthimaging import ImportJob, ImportJobRejected, ImportJobSlotsFull, ImportJobThrottled
from functions.tracking import JobStatus

_CLIENT_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# What a codestream starts with, for the transfer syntaxes AHI transcodes (the fake checks no more than this).
_CODESTREAM_STARTS = {
    "1.2.840.10008.1.2.4.51": (b"\xff\xd8",),
    "1.2.840.10008.1.2.4.57": (b"\xff\xd8",),
    "1.2.840.10008.1.2.4.70": (b"\xff\xd8",),
    "1.2.840.10008.1.2.4.80": (b"\xff\xd8",),
    "1.2.840.10008.1.2.4.81": (b"\xff\xd8",),
    "1.2.840.10008.1.2.4.90": (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "),
    "1.2.840.10008.1.2.4.92": (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "),
}


@dataclass
class _Job:
    job: ImportJob
    polls: int = 0


class FakeHealthImaging:
    def __init__(
        self,
        s3: Any,
        datastore_id: str = "0123456789abcdef0123456789abcdef",
        *,
        polls_to_finish: int = 2,
        clock: Callable[[], float] = time.monotonic,
        rate_per_second: float = limits.START_IMPORT_JOB_RATE.value,
        burst: int = limits.START_IMPORT_JOB_BURST.whole,
        region: str = "us-east-1",
        concurrent_jobs: int | None = None,
    ):
        self.s3 = s3
        self.datastore_id = datastore_id
        self.polls_to_finish = polls_to_finish
        self.clock = clock
        self.rate, self.burst = rate_per_second, burst
        self.tokens, self.refilled_at = float(burst), clock()
        self.jobs: dict[str, _Job] = {}
        self.by_client_token: dict[str, str] = {}
        self.start_calls = 0
        self.fail_with: str | None = None  # the message of the next job to end FAILED
        # The default quota differs by region (ap-southeast-2 runs fewer jobs at once).
        self.concurrent_jobs = concurrent_jobs or int(limits.CONCURRENT_IMPORT_JOBS.in_region(region))
        # The data store's instances: SOP Instance UID -> digest of the primary copy.
        self.primary: dict[str, str] = {}

    def _take_token(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now
        if self.tokens < 1:
            raise ImportJobThrottled("ThrottlingException: Rate exceeded")
        self.tokens -= 1

    def start_import_job(self, *, job_name: str, client_token: str, input_s3_uri: str, output_s3_uri: str) -> ImportJob:
        self.start_calls += 1
        self._take_token()
        if not _CLIENT_TOKEN.match(client_token):
            raise ImportJobRejected("ValidationException: clientToken must match [A-Za-z0-9._-]+, 1-64 characters")
        if client_token in self.by_client_token:
            return self.jobs[self.by_client_token[client_token]].job
        if self.running() >= self.concurrent_jobs:
            raise ImportJobSlotsFull(
                f"ServiceQuotaExceededException: the data store runs {self.concurrent_jobs} import jobs already"
            )
        job_id = hashlib.sha256(client_token.encode()).hexdigest()[:32]
        job = ImportJob(
            job_id=job_id,
            job_status=JobStatus.SUBMITTED,
            datastore_id=self.datastore_id,
            submitted_at=datetime.now(UTC).isoformat(),
            input_s3_uri=input_s3_uri,
            output_s3_uri=output_s3_uri,
            job_name=job_name,
        )
        self.jobs[job_id] = _Job(job)
        self.by_client_token[client_token] = job_id
        return job

    def running(self) -> int:
        return sum(entry.job.job_status in (JobStatus.SUBMITTED, JobStatus.IN_PROGRESS) for entry in self.jobs.values())

    def get_import_job(self, job_id: str) -> ImportJob:
        if job_id not in self.jobs:
            raise ImportJobRejected(f"ResourceNotFoundException: no job {job_id}")
        entry = self.jobs[job_id]
        if entry.job.job_status in (JobStatus.COMPLETED, JobStatus.FAILED):
            return self._reported(entry.job)
        entry.polls += 1
        if entry.polls < self.polls_to_finish:
            entry.job = replace(entry.job, job_status=JobStatus.IN_PROGRESS)
        elif self.fail_with is not None:
            entry.job = replace(entry.job, job_status=JobStatus.FAILED, message=self.fail_with, ended_at=_now())
            self.fail_with = None
        else:
            self._import(entry.job)
            entry.job = replace(entry.job, job_status=JobStatus.COMPLETED, ended_at=_now())
        return self._reported(entry.job)

    def _folder(self, job: ImportJob) -> str:
        return f"{job.output_s3_uri}{self.datastore_id}-DicomImport-{job.job_id}/"

    def _reported(self, job: ImportJob) -> ImportJob:
        # GetDICOMImportJob reports the job's own output folder, as in the CLI reference's example.
        return replace(job, output_s3_uri=self._folder(job))

    def _import(self, job: ImportJob) -> None:
        bucket, prefix = split_s3_uri(job.input_s3_uri)
        successes, failures, warnings, image_sets = [], [], [], {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                if body[128:132] != b"DICM":
                    failures.append(
                        {
                            "inputFile": item["Key"],
                            "exception": {
                                "exceptionType": "ValidationException",
                                "message": "DICOM attribute TransferSyntaxUID does not exist",
                            },
                        }
                    )
                    continue
                dataset = pydicom.dcmread(BytesIO(body))
                broken = _broken_constraint(dataset)
                if broken:
                    failures.append(
                        {
                            "inputFile": item["Key"],
                            "exception": {"exceptionType": "ValidationException", "message": broken},
                        }
                    )
                    continue
                series = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID))
                sop = str(dataset.SOPInstanceUID)
                digest = hashlib.sha256(body).hexdigest()
                is_primary = self.primary.setdefault(sop, digest) == digest
                # A conflicting copy gets an image set of its own, beside the primary one.
                image_set_key = "/".join(series) + ("" if is_primary else f"/{digest}")
                image_set_id = hashlib.md5(image_set_key.encode(), usedforsecurity=False).hexdigest()
                image_sets[image_set_id] = image_sets.get(image_set_id, 0) + 1
                record: dict[str, Any] = {
                    "inputFile": item["Key"],
                    "importResponse": {"imageSetId": image_set_id, "isPrimary": is_primary},
                }
                if _cannot_transcode(dataset):
                    # The developer guide's warning.ndjson record: the warnings inside importResponse, each with
                    # its decimal reason code, a type and a message.
                    record["importResponse"].update(
                        imageSetVersion=1,
                        warnings=[
                            {
                                "warning_reason_code": 0xB100,
                                "type": "TranscodingException",
                                "message": "The file was imported but its pixel data could not be transcoded.",
                            }
                        ],
                    )
                    warnings.append(record)
                else:
                    successes.append(record)
        folder = self._folder(job)
        summary = {
            "jobSummary": {
                "jobId": job.job_id,
                "datastoreId": self.datastore_id,
                "inputS3Uri": job.input_s3_uri,
                "outputS3Uri": folder,
                "successOutputS3Uri": f"{folder}SUCCESS/",
                "failureOutputS3Uri": f"{folder}FAILURE/",
                "warningsOutputS3Uri": f"{folder}WARNING/",
                "numberOfScannedFiles": len(successes) + len(warnings) + len(failures),
                "numberOfImportedFiles": len(successes) + len(warnings),
                "numberOfFilesWithCustomerError": len(failures),
                "numberOfFilesWithServerError": 0,
                "numberOfGeneratedImageSets": len(image_sets),
                "imageSetsSummary": [
                    {"imageSetId": i, "numberOfMatchedSOPInstances": n} for i, n in image_sets.items()
                ],
            }
        }
        out_bucket, out_key = split_s3_uri(folder)
        self.s3.put_object(Bucket=out_bucket, Key=f"{out_key}job-output-manifest.json", Body=json.dumps(summary))
        outputs = (
            ("SUCCESS/success.ndjson", successes),
            ("FAILURE/failure.ndjson", failures),
            ("WARNING/warning.ndjson", warnings),
        )
        for name, records in outputs:
            body = "".join(json.dumps(record) + "\n" for record in records)
            self.s3.put_object(Bucket=out_bucket, Key=f"{out_key}{name}", Body=body.encode())


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _broken_constraint(dataset: Any) -> str:
    """The element constraint (AHI's "DICOM element constraints") the data set breaks, or ""."""
    for limit in limits.ELEMENT_CONSTRAINTS:
        if limit.tag not in dataset:
            continue
        text = str(dataset[limit.tag].value or "").strip()
        if not text:
            continue
        if limit.unit == "value":
            if text.lstrip("-").isdigit() and not 0 <= int(text) <= limit.value:
                return f"DICOM attribute {limit.keyword} value {text} is outside 0-{limit.whole}"
        elif len(text) > limit.value:
            return f"DICOM attribute {limit.keyword} length {len(text)} exceeds {limit.whole}"
    return ""


def _cannot_transcode(dataset: Any) -> bool:
    starts = _CODESTREAM_STARTS.get(str(dataset.file_meta.TransferSyntaxUID))
    if starts is None or "PixelData" not in dataset:
        return False
    first = next(generate_fragments(dataset.PixelData), b"")
    return not first.startswith(starts)
