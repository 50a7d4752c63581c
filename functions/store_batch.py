"""StoreBatch (INGEST_MODE=stow-batched): the batch stored into AWS HealthImaging by STOW-RS instead of an import job.

The SCP answered each C-STORE once the instance was in S3 (as in import mode) and wrote the manifest; TriggerImport
recorded the instances RECEIVED and started the workflow, which calls this step until it answers ``done``. Each run:

- reads the manifest and the instance table (consistently): only instances of this batch still pending (RECEIVED,
  IMPORTING, or FAILED/TIMED_OUT by RecordFailure when the workflow gave up: a re-drive) are sent, so a run repeated
  (a retry, a lost Lambda response, a re-drive) stores nothing recorded IMPORTED again;
- sends them in StoreDICOM requests (``POST <AHI_STOW_URL>/studies``; dicom_store_contract.stow_protocol) of at
  most MAX_INSTANCES_PER_REQUEST instances and BYTES_PER_STOW_REQUEST bytes, each object streamed from S3 in 1 MiB
  pieces twice (its SHA-256 for SigV4, then onto the wire; the second read pinned to the first's ETag);
- records each instance as CheckStatus records an import job's outcome: IMPORTED with the image set the response's
  Retrieve URL names, FAILED with HealthImaging's reason; and the batch's job item (``stow-<batch id>``);
- stops before the Lambda's time runs out and returns a cursor (where the next run starts): the workflow loops;
- once the whole batch has its outcomes (the run that answers ``done``), writes them to the audit log group as
  CheckStatus does for an import job (dicom_store_contract.audit_ingest, road HEALTHIMAGING_STOW): one message per
  study, read from the instance table so that every run's outcomes are in it, never failing or repeating the step.

What HealthImaging answers decides what follows: an instance stored or refused (a Failed SOP Sequence entry, or a
400/413 of a request of that instance alone) is final; a request refused without naming an instance (400/413) is
split in halves and sent again, so one bad instance never fails the others; throttling (429, a Failure Reason of
the A7xx family or 0x0110) and unavailability (5xx, a 409 or 422 that lists no instance, a dropped connection, a
response that does not list an instance) are retried a few times with backoff here, then raised as the import
steps' ImportJobThrottled / HealthImagingUnavailable, which the workflow retries with its own backoff; 401/403/404
are the deployment's fault (ImportJobRejected: the workflow records the batch failed).

What S3 answers the reads: an object that is not there (NoSuchKey, or AccessDenied to GetObject for a key a
listing of incoming/ does not show: S3's answer to a role that may not list the whole bucket) fails its instance
alone; any other fault on either read (throttling, 5xx, access denied, a timeout, a body broken off, the object
replaced between the two reads) is a "later" for the request it hit, retried here and then raised as
BatchObjectsUnavailable, which the workflow retries as HealthImagingUnavailable.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
import urllib3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path
from dicom_store_contract import audit_ingest, ingest, limits, stow_protocol, tables
from dicom_store_contract.manifest import Instance, Manifest
from dicom_store_contract.metrics import NAMESPACE

from functions.contract import read_manifest, s3_uri
from functions.healthimaging import HealthImagingUnavailable, ImportJobRejected, ImportJobThrottled
from functions.settings import Settings, audit_logs, client, settings
from functions.tracking import InstanceState, JobStatus, Tracking, awaiting_outcome, stow_job_id, tracking, utc_now
from functions.trigger_import import NOT_STORED

logger = Logger()
metrics = Metrics(namespace=NAMESPACE)

# Ours, not HealthImaging's: a bound on what one refused request costs to split, and on one response's size.
MAX_INSTANCES_PER_REQUEST = 100
# Multipart framing per part (its delimiter and header line), kept in hand under the request's byte limit.
_FRAMING_PER_PART = 256
# Attempts of a throttled or unanswered request within one run, with jittered backoff, before the workflow's Retry.
ATTEMPTS = 3
_BACKOFF_FIRST = 0.5
_BACKOFF_CAP = 8.0
# No request starts with less Lambda time left than this: a 1 GB request is read twice from S3 and sent once.
RESERVE_SECONDS = 120.0
# Runs in a row that ran out of time having stored and failed nothing (every request unanswered, slowly): the next
# such run raises the error its requests left, so the state's bounded Retry and then RecordFailure take over; the
# IsStored loop alone would run again without end (each entry resets the state's Retry counts).
STALLED_RUNS = 3
_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT_CAP = 300.0

_AHI_URL = re.compile(r"https://dicom-medical-imaging\.([a-z0-9-]+)\.")


class Unanswered(Exception):
    """The request got no answer (a timeout, a dropped connection): nothing says what was stored."""


class MissingObject(Exception):
    """The instance's object is not under the batch prefix (any more)."""


class ObjectUnavailable(Exception):
    """S3 did not give an instance's object this time: throttled (SlowDown) or failing (5xx) past botocore's own
    retries, a read timed out or broke off mid-body, access denied, or the object replaced between the read that
    hashed it and the read that sends it (412 to the second read's IfMatch). Its request is sent again, later."""


class BatchObjectsUnavailable(Exception):
    """The workflow's retry error of a batch whose objects S3 did not give within the step's attempts (the StoreBatch
    state's Retry names it; what the step recorded stays recorded)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class StoreDicom(Protocol):
    def post(self, body: stow_protocol.MultipartBody, timeout: float) -> Response: ...


class HttpStoreDicom:
    """StoreDICOM over HTTPS, SigV4-signed with the function role's credentials, one connection."""

    def __init__(self, base_url: str, region: str, credentials: Callable[[], Any] | None = None) -> None:
        self.studies_url = base_url.rstrip("/") + "/studies"
        # An AHI endpoint names its region; another STOW-RS server ignores the signature's.
        named = _AHI_URL.match(self.studies_url)
        self.region = named.group(1) if named else region
        self._credentials = credentials or _role_credentials
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False, ca_certs=get_cert_path(True))

    def post(self, body: stow_protocol.MultipartBody, timeout: float) -> Response:
        credentials = self._credentials()
        if credentials is None:
            raise ImportJobRejected("StoreDICOM: no AWS credentials in the function's environment")
        headers = stow_protocol.signed_headers(credentials, self.region, self.studies_url, body)
        try:
            response = self._pool.urlopen(
                "POST",
                self.studies_url,
                body=body.stream(),
                headers=headers,
                timeout=urllib3.Timeout(connect=min(_CONNECT_TIMEOUT, timeout), read=timeout),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                answer = response.read(stow_protocol.RESPONSE_LIMIT)
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise Unanswered(f"no answer: {type(error).__name__}: {error}") from error
        return Response(response.status, answer)


def _role_credentials() -> Any:
    found = boto3.Session().get_credentials()
    return found.get_frozen_credentials() if found is not None else None


class _S3Object:
    """An instance's object, read in pieces; every read after the first is of the object the first read."""

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.etag = ""

    def listed(self) -> bool:
        """Whether the key is in the bucket (True when S3 cannot say: a denial is never taken for a missing key)."""
        try:
            listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key, MaxKeys=1)
        except (ClientError, BotoCoreError, OSError):
            return True
        return any(item.get("Key") == self.key for item in listing.get("Contents", []))

    def open(self) -> Iterator[bytes]:
        params = {"Bucket": self.bucket, "Key": self.key}
        if self.etag:
            params["IfMatch"] = self.etag
        try:
            response = self.s3.get_object(**params)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code in ("NoSuchKey", "404"):
                raise MissingObject(self.key) from None
            if code in ("PreconditionFailed", "412"):
                raise ObjectUnavailable(f"{self.key}: replaced since it was first read") from error
            if code in ("AccessDenied", "403") and not self.listed():
                # S3 answers a missing key with 403 to a role without s3:ListBucket (GetObject's reference); this
                # role may list incoming/ only (s3:prefix, which a GetObject does not carry), so it asks a listing.
                raise MissingObject(self.key) from None
            raise ObjectUnavailable(f"{self.key}: S3 GetObject: {code}") from error
        except (BotoCoreError, OSError) as error:
            raise ObjectUnavailable(f"{self.key}: S3 GetObject: {type(error).__name__}") from error
        self.etag = self.etag or str(response.get("ETag", ""))
        body = response["Body"]
        try:
            yield from body.iter_chunks(stow_protocol.CHUNK)
        except (BotoCoreError, OSError, urllib3.exceptions.HTTPError) as error:
            # ResponseStreamingError and ReadTimeoutError are botocore's, not OSErrors: a body that broke off.
            raise ObjectUnavailable(f"{self.key}: S3 read broke off: {type(error).__name__}") from error
        finally:
            body.close()


class Later(Enum):
    """Why an instance is still to be sent: the error the workflow retries it under, if this run cannot."""

    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    OBJECTS_UNAVAILABLE = "objects unavailable"  # S3, not HealthImaging


@dataclass
class _Run:
    """One run of the step over one batch."""

    batch_id: str
    bucket: str
    job_id: str
    s3: Any
    store: StoreDicom
    repository: Tracking
    remaining: Callable[[], float]  # seconds of Lambda time left
    stored: int = 0
    failed: int = 0
    requests: int = 0

    # outcomes

    def record_stored(self, instance: Instance, listed: stow_protocol.Listed) -> None:
        image_set = {"imageSetId": listed.image_set_id} if listed.image_set_id else {}
        self.repository.update_instance(
            self.batch_id,
            instance.sop_instance_uid,
            InstanceState.IMPORTED,
            pending_only=True,
            jobId=self.job_id,
            **image_set,
        )
        self.stored += 1

    def record_failed(self, instance: Instance, reason: str) -> None:
        self.repository.update_instance(
            self.batch_id,
            instance.sop_instance_uid,
            InstanceState.FAILED,
            pending_only=True,
            jobId=self.job_id,
            failureReason=reason,
        )
        self.failed += 1

    def record_refused(self, instance: Instance, detail: str) -> None:
        # The words stow mode's SCP records (dicom_store_scp/stow.py record_of): one reason, whichever mode sent it.
        self.record_failed(instance, f"AWS HealthImaging refused it (STOW-RS): {detail}")

    # requests

    def body(
        self, group: list[Instance]
    ) -> tuple[list[Instance], stow_protocol.MultipartBody | None, ObjectUnavailable | None]:
        """The request of the group's instances whose objects are stored (the others recorded FAILED), or, where S3
        did not give an object this time, no request and why (the instances left, for a later attempt)."""
        while group:
            objects = [_S3Object(self.s3, self.bucket, instance.key) for instance in group]
            try:
                parts = [stow_protocol.Part(o.key, o.open) for o in objects]
                return group, stow_protocol.MultipartBody(parts), None
            except MissingObject as missing:
                lost = next(i for i in group if i.key == str(missing))
                self.record_failed(lost, f"{lost.key}: {NOT_STORED}")
                group = [i for i in group if i is not lost]
            except ObjectUnavailable as error:
                return group, None, error
        return group, None, None

    def send(self, group: list[Instance]) -> list[tuple[Instance, Later, str]]:
        """Send the group once; the instances it leaves to a later attempt, with why."""
        group, body, unavailable = self.body(group)
        if unavailable is not None:
            # While hashing: nothing sent, the request again later (its object may be back by then); the
            # instances found missing before stay recorded FAILED and are not in it.
            return [(instance, Later.OBJECTS_UNAVAILABLE, str(unavailable)) for instance in group]
        if body is None:
            return []
        self.requests += 1
        timeout = max(1.0, min(_READ_TIMEOUT_CAP, self.remaining() - 10.0))
        try:
            response = self.store.post(body, timeout)
        except Unanswered as error:
            return [(instance, Later.UNAVAILABLE, str(error)) for instance in group]
        except (ObjectUnavailable, MissingObject) as error:
            # While sending (the second read): the request broke off unfinished, its payload hash unmatched, so
            # HealthImaging stored none of it. Sent again later; an object gone since is found missing then.
            return [(instance, Later.OBJECTS_UNAVAILABLE, f"{error}") for instance in group]
        listed = stow_protocol.listings(response.body)
        later: list[tuple[Instance, Later, str]] = []
        unlisted = []
        for instance in group:
            entry = listed.get(instance.sop_instance_uid)
            if entry is None:
                unlisted.append(instance)
            elif entry.stored:
                self.record_stored(instance, entry)
            elif stow_protocol.retry_later(entry.failure_reason):
                later.append((instance, Later.THROTTLED, stow_protocol.describe_failure(response.status, entry)))
            else:
                self.record_refused(instance, stow_protocol.describe_failure(response.status, entry))
        if unlisted:
            later += self.unlisted(unlisted, response)
        return later

    def unlisted(self, group: list[Instance], response: Response) -> list[tuple[Instance, Later, str]]:
        """The instances a response does not name, by its HTTP status."""
        status = response.status
        message = f"HTTP {status}: {stow_protocol.error_message(response.body)}".rstrip(": ")
        if status == 429:
            return [(instance, Later.THROTTLED, message) for instance in group]
        if status >= 500 or status in (409, 422):
            # 409 unlisting every instance is HealthImaging's ConflictException, a state conflict of the data store,
            # not a word on an instance (422 likewise names none): the sender already had success, so never FAILED.
            return [(instance, Later.UNAVAILABLE, message) for instance in group]
        if status in (400, 413):
            # The request refused, no instance named: halves until the one refused is alone (at most log2 of
            # MAX_INSTANCES_PER_REQUEST splits deep), so the others are stored.
            if len(group) == 1:
                self.record_refused(group[0], message)
                return []
            middle = len(group) // 2
            return self.send(group[:middle]) + self.send(group[middle:])
        if 400 <= status < 500:
            raise ImportJobRejected(f"StoreDICOM refused the request: {message}")
        return [(instance, Later.UNAVAILABLE, f"HTTP {status}: the response does not list it") for instance in group]


def request_groups(instances: list[Instance], run: _Run) -> Iterator[list[Instance]]:
    """Requests in manifest order, each within the instance and byte bounds; an instance larger than one request
    takes is recorded FAILED (import mode's limits let through what a StoreDICOM request cannot carry)."""
    most = limits.BYTES_PER_STOW_REQUEST.whole
    group: list[Instance] = []
    size = _FRAMING_PER_PART
    for instance in instances:
        own = instance.size + _FRAMING_PER_PART
        if own + _FRAMING_PER_PART > most:
            run.record_failed(instance, f"{instance.size} bytes: more than one StoreDICOM request takes ({most})")
            continue
        if group and (len(group) >= MAX_INSTANCES_PER_REQUEST or size + own > most):
            yield group
            group, size = [], _FRAMING_PER_PART
        group.append(instance)
        size += own
    if group:
        yield group


def store_batch(
    execution: dict[str, Any],
    *,
    s3: Any,
    store: StoreDicom,
    repository: Tracking,
    config: Settings,
    remaining: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
    logs: Any = None,
) -> dict[str, Any]:
    """``logs``: the CloudWatch Logs client the batch's ingest audit messages are written with (None: not written)."""
    batch_id, bucket = execution["batchId"], execution["bucket"]
    try:
        manifest = read_manifest(s3, bucket, execution["manifestKey"], config.dicom_prefix)
    except (ClientError, BotoCoreError) as error:  # not a missing manifest (InvalidManifest): S3 throttled or failed
        raise BatchObjectsUnavailable(f"the manifest s3://{bucket}/{execution['manifestKey']}: {error}") from error
    instances = list(manifest.instances)
    cursor = int((execution.get("importJob") or {}).get("cursor", 0)) % max(len(instances), 1)
    job_id = stow_job_id(batch_id)
    repository.put_job(
        {
            "jobId": job_id,
            "jobStatus": JobStatus.IN_PROGRESS,
            "submittedAt": utc_now(),
            "inputS3Uri": s3_uri(bucket, manifest.prefix),
            "datastoreId": config.datastore_id,
            "studyDate": manifest.shared("study_date"),
            "studyInstanceUID": manifest.shared("study_instance_uid"),
            "seriesInstanceUID": manifest.shared("series_instance_uid"),
            "batchId": batch_id,
            "instanceCount": len(instances),
            "rejectedCount": len(manifest.rejected),
            "importedCount": 0,
            "failedCount": 0,
            "message": f"stored by STOW-RS ({ingest.STOW_BATCHED})",
        }
    )
    run = _Run(batch_id, bucket, job_id, s3, store, repository, remaining)
    records = repository.instance_records((i.sop_instance_uid for i in instances), tables.WORKFLOW_GAVE_UP)
    # From the cursor on, then those before it (left for later by the run before): each instance still pending.
    order = instances[cursor:] + instances[:cursor]
    todo = [instance for instance in order if _pending(records.get(instance.sop_instance_uid), batch_id)]
    position = {id(instance): number for number, instance in enumerate(instances)}

    stalled = int((execution.get("importJob") or {}).get("stalled", 0))
    later: list[tuple[Instance, Later, str]] = []
    for group in request_groups(todo, run):
        if run.requests and remaining() < RESERVE_SECONDS:
            return _continue(run, manifest.batch_id, position[id(group[0])], stalled, later)
        later += run.send(group)
    attempt = 1
    while later:
        if attempt >= ATTEMPTS:
            _give_back(run, later)
        delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (attempt - 1)))  # noqa: S311 (jitter)
        if remaining() < RESERVE_SECONDS + delay:
            return _continue(run, manifest.batch_id, position[id(later[0][0])], stalled, later)
        sleep(delay)
        attempt += 1
        retry, later = [instance for instance, _, _ in later], []
        for group in request_groups(retry, run):
            later += run.send(group)

    # Every run's outcomes, not this run's alone: the table holds what the runs before recorded.
    final = repository.instance_records((i.sop_instance_uid for i in instances), "imageSetId", "failureReason")
    ours = {uid: record for uid, record in final.items() if record.get(tables.BATCH_ID) == batch_id}
    imported = sum(record.get("state") in _IMPORTED for record in ours.values())
    failed = sum(record.get("state") == InstanceState.FAILED for record in ours.values())
    repository.update_job(job_id, JobStatus.COMPLETED, endedAt=utc_now(), importedCount=imported, failedCount=failed)
    if logs is not None and config.audit_log_group:
        _audit(logs, config, execution, manifest, ours)
    result = _report(run, batch_id, cursor=0, done=True)
    result.update(importedCount=imported, failedCount=failed)
    return result


_IMPORTED = (InstanceState.IMPORTED, InstanceState.IMPORTED_WITH_WARNINGS)


def _audit(
    logs: Any, config: Settings, execution: dict[str, Any], manifest: Manifest, records: dict[str, dict[str, Any]]
) -> None:
    """The batch's outcome in the audit log group, one message per study, as CheckStatus writes an import job's
    (check_status._audit): the same origin (the batch folder, the SCP's AE title), the data store at the DICOMweb
    endpoint this step posts to, road HEALTHIMAGING_STOW (as the SCP's stow mode) and no import job to name.

    ``records``: the instance table's items of this batch's instances (an instance a later batch holds now is that
    batch's to report). Never fails the step; what is given up is logged (counts and the error, not the messages)
    and counted in AuditMessagesNotWritten.
    """
    outcomes = []
    for instance in manifest.instances:
        record = records.get(instance.sop_instance_uid) or {}
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
        elif state == InstanceState.FAILED:
            reason = str(record.get("failureReason", "")) or "failed"
            outcomes.append(
                audit_ingest.InstanceOutcome(
                    instance.study_instance_uid, instance.sop_class_uid, False, failure_reason=reason
                )
            )
    origin = audit_ingest.Node(manifest.called_ae, "", process=s3_uri(execution["bucket"], manifest.prefix))
    endpoint = urlsplit(config.ahi_stow_url).hostname or config.ahi_stow_url
    data_store = audit_ingest.data_store_node(config.datastore_id, endpoint)
    delivery = audit_ingest.write_outcome(
        logs, config.audit_log_group, outcomes, origin, data_store, road=audit_ingest.HEALTHIMAGING_STOW
    )
    if delivery.given_up:
        metrics.add_metric(name="AuditMessagesNotWritten", unit=MetricUnit.Count, value=delivery.given_up)
        logger.error(
            "ingest audit messages not written",
            extra={
                "batchId": manifest.batch_id,
                "written": delivery.written,
                "notWritten": delivery.given_up,
                "error": delivery.error,
            },
        )


def _pending(record: dict[str, Any] | None, batch_id: str) -> bool:
    """Still to be stored by this batch: an item of this batch (a later batch may hold the instance now) that has
    no outcome yet, or that the workflow gave up on (RecordFailure: a re-drive sends it again; what HealthImaging
    refused stays refused)."""
    return awaiting_outcome(record, batch_id)


def _give_back(run: _Run, later: list[tuple[Instance, Later, str]]) -> None:
    """Attempts spent: the error the workflow retries under (what this run recorded stays recorded)."""
    _count(run)
    whys = {why for _, why, _ in later}
    message = f"{len(later)} instances not stored yet: {later[0][2]}"
    logger.warning("batch store left to the workflow's retry", extra={"batchId": run.batch_id, "reason": message})
    if Later.THROTTLED in whys:
        raise ImportJobThrottled(message)
    if Later.UNAVAILABLE in whys:
        raise HealthImagingUnavailable(message)
    raise BatchObjectsUnavailable(message)


def _count(run: _Run) -> None:
    metrics.add_metric(name="BatchInstancesStored", unit=MetricUnit.Count, value=run.stored)
    metrics.add_metric(name="BatchInstancesNotStored", unit=MetricUnit.Count, value=run.failed)
    metrics.add_metric(name="StoreDicomRequests", unit=MetricUnit.Count, value=run.requests)


def _report(run: _Run, batch_id: str, *, cursor: int, done: bool, stalled: int = 0) -> dict[str, Any]:
    _count(run)
    logger.info(
        "batch stored" if done else "batch store continues",
        extra={"batchId": batch_id, "stored": run.stored, "failed": run.failed, "requests": run.requests},
    )
    return {
        "jobId": run.job_id,
        "done": done,
        "cursor": cursor,
        "storedNow": run.stored,
        "failedNow": run.failed,
        "stalled": stalled,
    }


def _continue(
    run: _Run, batch_id: str, cursor: int, stalled: int, later: list[tuple[Instance, Later, str]]
) -> dict[str, Any]:
    """Time ran short: the cursor for the next run, unless this is the STALLED_RUNS-th run in a row that stored and
    failed nothing, which raises what its requests left (the workflow's bounded Retry, then RecordFailure)."""
    stalled = 0 if run.stored or run.failed else stalled + 1
    if stalled >= STALLED_RUNS:
        if later:
            _give_back(run, later)
        _count(run)
        raise HealthImagingUnavailable(f"{stalled} runs in a row stored nothing: every request went unanswered")
    return _report(run, batch_id, cursor=cursor, done=False, stalled=stalled)


def store_dicom(config: Settings) -> StoreDicom:
    region = boto3.Session().region_name or "us-east-1"
    return HttpStoreDicom(config.ahi_stow_url, region)


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    if config.ingest_mode != ingest.STOW_BATCHED:
        raise ImportJobRejected(f"StoreBatch runs with INGEST_MODE={ingest.STOW_BATCHED}, not {config.ingest_mode!r}")
    return store_batch(
        event,
        s3=client("s3"),
        store=store_dicom(config),
        repository=tracking(),
        config=config,
        remaining=lambda: context.get_remaining_time_in_millis() / 1000.0,
        logs=audit_logs() if config.audit_log_group else None,
    )
