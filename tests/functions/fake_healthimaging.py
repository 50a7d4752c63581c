"""An in-memory AWS HealthImaging behind our ``ImportJobs`` interface, faithful to the documented behaviour.

- Jobs go SUBMITTED -> IN_PROGRESS -> COMPLETED (or FAILED), one step per GetDICOMImportJob call.
- The same clientToken returns the same job (StartDICOMImportJob is idempotent on it); a token outside the API's
  pattern ([A-Za-z0-9._-]+, 1-64 characters) is a ValidationException, and so is a GetDICOMImportJob of a jobId
  outside its shape in botocore's model (JobId: [0-9a-z]+, 1-32 characters), before any lookup.
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
- A job over the per-job quotas (limits.FILES_PER_IMPORT_JOB files, limits.BYTES_PER_IMPORT_JOB bytes under its
  inputS3Uri) ends FAILED with a message saying which.

The scale run (tests/support/scale.py) drives it on a virtual clock: with ``job_seconds`` (files -> seconds) a job
runs for that long whoever polls it, ``advance()`` ends every job whose time has come (``on_job_created`` learns
each new job and when it ends), ``fail_every`` fails every n-th job, and ``server_error`` (operation name -> bool)
makes the boto3 bridge (support.aws.bridge_to_fake) answer an InternalServerException (HTTP 500). It records the
most jobs it ever ran at once (``max_running``) and the jobs started per inputS3Uri (``jobs_by_input``).
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
_JOB_ID = re.compile(r"^[0-9a-z]{1,32}$")  # botocore's medical-imaging model, shape JobId
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
    ends_at: float | None = None  # set when the fake runs on job_seconds
    fails: bool = False


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
        job_seconds: Callable[[int], float] | None = None,
        fail_every: int = 0,
        fails: Callable[[str], bool] | None = None,
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
        self.job_seconds = job_seconds
        self.fail_every = fail_every
        # Which jobs fail, by client token, where the order jobs are created in is not the same from run to run.
        self.fails = fails
        self.server_error: Callable[[str], bool] = lambda operation: False
        self.on_job_created: Callable[[ImportJob, float], None] | None = None
        self._running: set[str] = set()
        self.max_running = 0
        self.jobs_by_input: dict[str, list[str]] = {}

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
        self.advance()
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
        if self.fails is not None:
            failing = self.fails(client_token)
        else:
            failing = bool(self.fail_every) and (len(self.jobs) + 1) % self.fail_every == 0
        entry = _Job(job, fails=failing)
        if self.job_seconds is not None:
            entry.ends_at = self.clock() + self.job_seconds(self._count_files(input_s3_uri))
        self.jobs[job_id] = entry
        self.by_client_token[client_token] = job_id
        self.jobs_by_input.setdefault(input_s3_uri, []).append(job_id)
        self._running.add(job_id)
        self.max_running = max(self.max_running, len(self._running))
        if self.on_job_created is not None and entry.ends_at is not None:
            self.on_job_created(job, entry.ends_at)
        return job

    def running(self) -> int:
        return len(self._running)

    def _count_files(self, input_s3_uri: str) -> int:
        bucket, prefix = split_s3_uri(input_s3_uri)
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)

    def advance(self) -> list[ImportJob]:
        """End every job whose time has come (``job_seconds``); the jobs that ended now."""
        now, ended = self.clock(), []
        for job_id in sorted(self._running):
            entry = self.jobs[job_id]
            if entry.ends_at is not None and entry.ends_at <= now:
                self._end(entry)
                ended.append(entry.job)
        return ended

    def _end(self, entry: _Job) -> None:
        message = (
            self.fail_with if self.fail_with is not None else ("the fake failed this job" if entry.fails else None)
        )
        if message is None:
            message = self._over_quota(entry.job)
        if message is not None:
            entry.job = replace(entry.job, job_status=JobStatus.FAILED, message=message, ended_at=_now())
            self.fail_with = None
        else:
            self._import(entry.job)
            entry.job = replace(entry.job, job_status=JobStatus.COMPLETED, ended_at=_now())
        self._running.discard(entry.job.job_id)

    def _over_quota(self, job: ImportJob) -> str | None:
        bucket, prefix = split_s3_uri(job.input_s3_uri)
        files = size = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                files, size = files + 1, size + item["Size"]
        if files > limits.FILES_PER_IMPORT_JOB.value:
            return f"the input holds {files} files, over the quota of {limits.FILES_PER_IMPORT_JOB.whole} per job"
        if size > limits.BYTES_PER_IMPORT_JOB.value:
            return f"the input holds {size} bytes, over the quota of {limits.BYTES_PER_IMPORT_JOB.whole} per job"
        return None

    def get_import_job(self, job_id: str) -> ImportJob:
        if not _JOB_ID.match(job_id):
            raise ImportJobRejected(f"ValidationException: jobId {job_id!r} must match [0-9a-z]+, 1-32 characters")
        if job_id not in self.jobs:
            raise ImportJobRejected(f"ResourceNotFoundException: no job {job_id}")
        entry = self.jobs[job_id]
        if entry.job.job_status in (JobStatus.COMPLETED, JobStatus.FAILED):
            return self._reported(entry.job)
        if entry.ends_at is not None:
            if entry.ends_at <= self.clock():
                self._end(entry)
            else:
                entry.job = replace(entry.job, job_status=JobStatus.IN_PROGRESS)
            return self._reported(entry.job)
        entry.polls += 1
        if entry.polls < self.polls_to_finish:
            entry.job = replace(entry.job, job_status=JobStatus.IN_PROGRESS)
        else:
            self._end(entry)
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
