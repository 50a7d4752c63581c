"""An in-memory AWS HealthImaging behind our ``ImportJobs`` interface, faithful to the documented behaviour.

- Jobs go SUBMITTED -> IN_PROGRESS -> COMPLETED (or FAILED), one step per GetDICOMImportJob call.
- The same clientToken returns the same job (StartDICOMImportJob is idempotent on it).
- StartDICOMImportJob is throttled at 1 request/s with a burst of 2 (token bucket on an injectable clock): an
  earlier edition of AHI's quota, far below today's (dicom_store_contract.limits.START_IMPORT_JOB_RATE), so the
  tests meet throttling often.
- A job that ends writes the developer guide's output under <outputS3Uri><datastoreId>-DicomImport-<jobId>/:
  job-output-manifest.json, SUCCESS/success.ndjson, FAILURE/failure.ndjson. Files that are not DICOM Part 10
  fail with a ValidationException record; a FAILED job writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pydicom

from functions.contract import split_s3_uri
from functions.healthimaging import ImportJob, ImportJobRejected, ImportJobThrottled
from functions.tracking import JobStatus


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
        rate_per_second: float = 1.0,
        burst: int = 2,
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
        if not (1 <= len(client_token) <= 64):
            raise ImportJobRejected("ValidationException: clientToken must be 1-64 characters")
        if client_token in self.by_client_token:
            return self.jobs[self.by_client_token[client_token]].job
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
        successes, failures, image_sets = [], [], {}
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
                dataset = pydicom.dcmread(BytesIO(body), stop_before_pixels=True)
                series = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID))
                image_set_id = hashlib.md5("/".join(series).encode(), usedforsecurity=False).hexdigest()
                image_sets[image_set_id] = image_sets.get(image_set_id, 0) + 1
                successes.append(
                    {
                        "inputFile": item["Key"],
                        "importResponse": {"imageSetId": image_set_id, "isPrimary": True},
                    }
                )
        folder = self._folder(job)
        summary = {
            "jobSummary": {
                "jobId": job.job_id,
                "datastoreId": self.datastore_id,
                "inputS3Uri": job.input_s3_uri,
                "outputS3Uri": folder,
                "successOutputS3Uri": f"{folder}SUCCESS/",
                "failureOutputS3Uri": f"{folder}FAILURE/",
                "numberOfScannedFiles": len(successes) + len(failures),
                "numberOfImportedFiles": len(successes),
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
        for name, records in (("SUCCESS/success.ndjson", successes), ("FAILURE/failure.ndjson", failures)):
            body = "".join(json.dumps(record) + "\n" for record in records)
            self.s3.put_object(Bucket=out_bucket, Key=f"{out_key}{name}", Body=body.encode())


def _now() -> str:
    return datetime.now(UTC).isoformat()
