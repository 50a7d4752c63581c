"""INGEST_MODE=stow: each instance stored into AWS HealthImaging by STOW-RS before its C-STORE success.

One instance per request, ``POST <AHI_STOW_URL>/studies`` (StoreDICOM; PS3.18 10.5): a ``multipart/related;
type="application/dicom"`` body of one part, the spool file as received. What the answer means:

- success (0x0000) only when the response's Referenced SOP Sequence (0008,1199) lists the instance;
- its Failed SOP Sequence (0008,1198) entry's Failure Reason (0008,1197) decides the failure: out of resources
  (A7xx) and processing failure (0x0110) are worth retrying, anything else is AHI refusing the instance;
- HTTP 429, 5xx and a 409 that lists no instance (throttled, unavailable, HealthImaging's ConflictException) are
  retried with jittered backoff while the time budget (half the DIMSE timeout, as for S3) allows, then answered
  "retry later"; 401/403/404 and other 4xx about the request are the deployment's fault (credentials, policy, data
  store id), also "retry later"; 400 and 413 are about the instance;
- a timeout, a dropped connection, a response that does not list the instance: not confirmed, never a success.

What the answer was is recorded in the instance table (``INSTANCE_TABLE_NAME``; without one, in the local store:
stow_outcomes.py), where ``dicom-store-scp status`` and Storage Commitment read it: IMPORTED with the image set for a
stored instance, FAILED with HealthImaging's reason for one it refused (dicom_store_contract.ingest names the item).
The C-STORE answer is HealthImaging's truth and never waits for, or depends on, that write: the record is queued and
written by one thread per receiving process (refusals.RecordWriter), a conditional PutItem retried with backoff,
which never replaces a later record (``updatedAt``) nor a stored instance's with a refusal of another copy. A record
lost (the queue full, DynamoDB down for its retries) is logged; the instance is then missing from the table, never
recorded as what it is not.

Memory: the body is streamed from the spool file in 1 MiB pieces, twice (once for the SHA-256 SigV4 signs,
``x-amz-content-sha256``, once onto the wire); the Content-Length is the file's size plus the framing.
Credentials come from botocore's default chain (the ECS task role) and are never logged.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.session
import urllib3
from botocore.httpsession import get_cert_path
from dicom_store_contract import ingest, layout, refusals, stow_protocol, tables

from . import statuses, stow_outcomes
from .config import Config, ConfigError
from .metrics import Recorder
from .refusals import RecordWriter, TableWriter
from .storage import Storage, StorageError

LOG = logging.getLogger("dicom_store_scp.stow")

# A store response lists one instance: a few hundred bytes. More than this is not a store response.
_RESPONSE_LIMIT = 1024 * 1024
_CONNECT_TIMEOUT_CAP = 5.0
_READ_TIMEOUT_CAP = 60.0
_BACKOFF_FIRST = 0.2
_BACKOFF_CAP = 5.0


class Verdict(enum.Enum):
    """What a STOW-RS exchange says about one instance, and so the C-STORE status the sender hears."""

    STORED = statuses.SUCCESS
    BUSY = statuses.STOW_BUSY
    NOT_PERMITTED = statuses.STOW_NOT_PERMITTED
    UNCONFIRMED = statuses.STOW_UNCONFIRMED
    REFUSED = statuses.STOW_REFUSED
    TOO_LARGE = statuses.INSTANCE_TOO_LARGE


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str
    http_status: int | None = None
    failure_reason: int | None = None
    image_set_id: str = ""
    attempts: int = 1
    sop_class_uid: str = ""  # as the response lists it

    @property
    def retryable(self) -> bool:
        return self.verdict is Verdict.BUSY or (self.verdict is Verdict.UNCONFIRMED and self.http_status is None)


class StowFailed(StorageError):
    """The store service did not confirm the instance; ``status`` is what the sender hears."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome
        self.status = outcome.verdict.value


def judge(http_status: int, body: bytes, sop_instance_uid: str) -> Outcome:
    """One response, read for one instance (no I/O: the table the tests hold it to)."""
    listed = stow_protocol.listings(body).get(sop_instance_uid)
    if listed is not None:
        if listed.stored:
            return Outcome(
                Verdict.STORED,
                "stored",
                http_status,
                image_set_id=listed.image_set_id,
                sop_class_uid=listed.sop_class_uid,
            )
        code = listed.failure_reason
        text = stow_protocol.describe_failure(http_status, listed)
        if stow_protocol.retry_later(code):
            return Outcome(Verdict.BUSY, text, http_status, code, sop_class_uid=listed.sop_class_uid)
        return Outcome(Verdict.REFUSED, text, http_status, code, sop_class_uid=listed.sop_class_uid)
    message = f"HTTP {http_status}: {stow_protocol.error_message(body)}".rstrip(": ")
    # 409 naming no instance: HealthImaging's ConflictException (the data store's state), a "later", not a refusal.
    if http_status in (409, 429) or http_status >= 500:
        return Outcome(Verdict.BUSY, message, http_status)
    if http_status == 413:
        return Outcome(Verdict.TOO_LARGE, message, http_status)
    if http_status == 400:
        return Outcome(Verdict.REFUSED, message, http_status)
    if 400 <= http_status < 500:
        return Outcome(Verdict.NOT_PERMITTED, message, http_status)
    # 2xx (or anything else) that does not list the instance: nothing says it is stored.
    return Outcome(Verdict.UNCONFIRMED, f"HTTP {http_status}: the response does not list the instance", http_status)


@dataclass(frozen=True)
class StowSettings:
    url: str  # the base URL; requests go to <url>/studies
    region: str
    budget: float  # seconds one instance may take, retries included
    pool_connections: int = 10


class StowClient:
    """StoreDICOM requests, one instance each, on a pool of connections shared by every association."""

    def __init__(
        self,
        settings: StowSettings,
        credentials: Callable[[], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.studies_url = settings.url.rstrip("/") + "/studies"
        self._credentials = credentials or _default_credentials()
        self._sleep = sleep
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    def pool(self) -> urllib3.PoolManager:
        # Made on first use: connections must not cross a fork (workers.py).
        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    num_pools=2,
                    maxsize=self.settings.pool_connections,
                    retries=False,
                    ca_certs=get_cert_path(True),
                )
            return self._pool

    def store(self, source: Path, sop_instance_uid: str) -> Outcome:
        """Send the instance until the service answers for it, or the budget is spent; never raises."""
        deadline = time.monotonic() + self.settings.budget
        try:
            body = stow_protocol.MultipartBody([stow_protocol.file_part(source)])
        except OSError as error:
            return Outcome(Verdict.UNCONFIRMED, f"spool file unreadable: {error}")
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(body, sop_instance_uid, deadline - time.monotonic())
            if not outcome.retryable:
                break
            delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (attempt - 1)))  # noqa: S311 (jitter)
            # Another attempt only where it can still be answered (a second of it, at least) within the budget.
            if time.monotonic() + delay + 1.0 >= deadline:
                break
            self._sleep(delay)
        return dataclasses.replace(outcome, attempts=attempt)

    def _attempt(self, body: stow_protocol.MultipartBody, sop_instance_uid: str, remaining: float) -> Outcome:
        credentials = self._credentials()
        if credentials is None:
            return Outcome(Verdict.NOT_PERMITTED, "no AWS credentials in the default chain")
        headers = stow_protocol.signed_headers(credentials, self.settings.region, self.studies_url, body)
        remaining = max(remaining, 1.0)
        timeout = urllib3.Timeout(connect=min(_CONNECT_TIMEOUT_CAP, remaining), read=min(_READ_TIMEOUT_CAP, remaining))
        try:
            response = self.pool().urlopen(
                "POST",
                self.studies_url,
                body=body.stream(),
                headers=headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                answer = response.read(_RESPONSE_LIMIT)
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            return Outcome(Verdict.UNCONFIRMED, f"no answer: {type(error).__name__}: {error}")
        return judge(response.status, answer, sop_instance_uid)


def _default_credentials() -> Callable[[], Any]:
    session = botocore.session.get_session()

    def frozen() -> Any:
        # Refreshable credentials (the task role's) renew themselves; the frozen copy signs one request.
        found = session.get_credentials()
        return found.get_frozen_credentials() if found is not None else None

    return frozen


# -- the record of each outcome, in the instance table ------------------------------------------------------------


@dataclass(frozen=True)
class StowRecord:
    """What HealthImaging answered for one instance, as its instance table item."""

    sop_instance_uid: str
    state: str  # ingest.STOW_STORED or ingest.STOW_REFUSED
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    batch_id: str = ""
    sop_class_uid: str = ""
    image_set_id: str = ""
    failure_reason: str = ""
    at: str = ""  # when the answer came (UTC, ISO 8601 with milliseconds and Z)

    def item(self) -> dict[str, Any]:
        values = {
            tables.SOP_INSTANCE_UID: self.sop_instance_uid,
            tables.STUDY_INSTANCE_UID: self.study_instance_uid,
            tables.SERIES_INSTANCE_UID: self.series_instance_uid,
            tables.BATCH_ID: self.batch_id,
            ingest.SOP_CLASS_UID: self.sop_class_uid,
            "state": self.state,
            ingest.IMAGE_SET_ID: self.image_set_id,
            ingest.FAILURE_REASON: self.failure_reason,
            ingest.UPDATED_AT: self.at,
        }
        # An index key must be a non-empty string when present: what is not known is left out.
        return {name: {"S": value} for name, value in values.items() if value}


def record_of(outcome: Outcome, key: str, at: str) -> StowRecord | None:
    """The item for HealthImaging's answer about the instance at ``key``; None where it did not answer for it
    (throttled, not permitted, unconfirmed: the sender retries; the refusal record says so)."""
    study, series, sop_instance_uid = layout.uids_of_instance_key(key)
    batch_id = layout.batch_id_of_folder(key.rsplit("/", 3)[0]) or ""
    common = {
        "study_instance_uid": study,
        "series_instance_uid": series,
        "batch_id": batch_id,
        "sop_class_uid": outcome.sop_class_uid,
        "at": at,
    }
    if outcome.verdict is Verdict.STORED:
        return StowRecord(sop_instance_uid, ingest.STOW_STORED, image_set_id=outcome.image_set_id, **common)
    # 413 and 400 (and a Failed SOP Sequence entry with any other reason) are HealthImaging's word on the instance.
    if outcome.verdict in (Verdict.REFUSED, Verdict.TOO_LARGE) and outcome.http_status is not None:
        reason = f"AWS HealthImaging refused it (STOW-RS): {outcome.detail}"
        return StowRecord(sop_instance_uid, ingest.STOW_REFUSED, failure_reason=reason, **common)
    return None


class TableStowRecords(TableWriter):
    """Each outcome as the instance's item, where the item holds nothing later.

    Written where the table holds nothing for the instance, or a refusal (nothing was stored), or an item older
    than this answer; and a refusal by HealthImaging never replaces a stored instance's item: it still holds the
    copy stored before."""

    def write(self, record: StowRecord) -> bool:
        condition = "attribute_not_exists(#key) OR #state = :refused OR attribute_not_exists(#at) OR #at < :at"
        values = {":refused": {"S": refusals.REFUSED}, ":at": {"S": record.at}}
        if record.state == ingest.STOW_REFUSED:
            condition = (
                "attribute_not_exists(#key) OR #state = :refused OR "
                "((attribute_not_exists(#at) OR #at < :at) AND NOT #state IN (:stored, :warned))"
            )
            values.update({":stored": {"S": ingest.STOW_STORED}, ":warned": {"S": "IMPORTED_WITH_WARNINGS"}})
        return self.put(
            {
                "TableName": self.instance_table,
                "Item": record.item(),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {
                    "#key": tables.SOP_INSTANCE_UID,
                    "#state": "state",
                    "#at": ingest.UPDATED_AT,
                },
                "ExpressionAttributeValues": values,
            }
        )


def build_records(config: Config) -> RecordWriter | None:
    """The writer of stow mode's outcomes: into the instance table when one is named, else into the local store
    (stow_outcomes.py) unless DICOM_BUCKET names S3, where only a table is read for them."""
    where = stow_outcomes.recorded_in(config)
    if where == stow_outcomes.IN_TABLE:
        return RecordWriter(TableStowRecords(config.instance_table), noun="stow record")
    if where == stow_outcomes.IN_LOCAL_STORE:
        return RecordWriter(stow_outcomes.LocalStowRecords(Path(config.storage_dir)), noun="stow record")
    return None


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_config(
    config: Config, copy: Storage | None, records: RecordWriter | None = None, recorder: Recorder | None = None
) -> StowStorage:
    """The stow backend the configuration describes; ConfigError when it cannot say where to store."""
    # ECS sets AWS_REGION; botocore itself reads AWS_DEFAULT_REGION and the config file.
    region = os.environ.get("AWS_REGION") or str(botocore.session.get_session().get_config_variable("region") or "")
    if config.ahi_stow_url:
        url = config.ahi_stow_url.rstrip("/")
        # An AHI endpoint names its region; another STOW-RS server ignores the signature's.
        named = re.match(r"https://dicom-medical-imaging\.([a-z0-9-]+)\.", url)
        region = named.group(1) if named else region or "us-east-1"
    elif region:
        url = ingest.dicomweb_base_url(region, config.datastore_id)
    else:
        raise ConfigError("INGEST_MODE=stow: no AWS region (AWS_REGION) for the DICOMweb endpoint; set AHI_STOW_URL")
    settings = StowSettings(
        url=url,
        region=region,
        # As for S3: the failure status must reach the sender well before its own DIMSE timeout cuts us off.
        budget=config.dimse_timeout / 2,
        pool_connections=config.max_pool_connections or config.maximum_associations,
    )
    spool = Path(config.spool_dir) if config.spool_dir else None
    return StowStorage(StowClient(settings), copy, spool, records, recorder)


class StowStorage:
    """The Storage interface over StoreDICOM: an instance is stored once HealthImaging says so; with a copy
    store (STOW_KEEP_S3_COPY), it is kept there too, after HealthImaging confirmed it (the copy holds only what
    HealthImaging holds). Manifests go to the copy store, or nowhere."""

    def __init__(
        self,
        client: StowClient,
        copy: Storage | None = None,
        spool: Path | None = None,
        records: RecordWriter | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.client = client
        self.copy = copy
        self._spool = spool
        self.records = records
        self.recorder = recorder or Recorder(enabled=False)

    def spool_dir(self) -> Path | None:
        return self.copy.spool_dir() if self.copy is not None else self._spool

    def describe(self) -> str:
        where = f"STOW-RS {self.client.studies_url}"
        return where + (f", a copy in {self.copy.describe()}" if self.copy is not None else "")

    def store_instance(self, source: Path, key: str, checksum: str) -> None:
        sop_instance_uid = layout.uids_of_instance_key(key)[2]
        started = time.monotonic()
        outcome = self.client.store(source, sop_instance_uid)
        self.recorder.ahi_store(time.monotonic() - started)  # AHIStoreLatency: whatever the answer
        if self.records is not None:
            record = record_of(outcome, key, _utc_now())
            if record is not None:
                self.records.record(record)  # queued: the answer does not wait for the table
        fields = {
            "event": "stow",
            "sopInstanceUID": sop_instance_uid,
            "verdict": outcome.verdict.name,
            "httpStatus": outcome.http_status,
            "attempts": outcome.attempts,
            "seconds": round(time.monotonic() - started, 3),
        }
        if outcome.verdict is not Verdict.STORED:
            # The handler's "C-STORE failed" line follows with the status; this one says what the service said.
            LOG.info("STOW-RS did not store the instance", extra={"fields": {**fields, "detail": outcome.detail}})
            raise StowFailed(outcome)
        LOG.debug("stored by STOW-RS", extra={"fields": {**fields, "imageSetId": outcome.image_set_id}})
        if self.copy is not None:
            self.copy.store_instance(source, key, checksum)

    def store_manifest(self, key: str, body: bytes) -> None:
        if self.copy is not None:
            self.copy.store_manifest(key, body)
