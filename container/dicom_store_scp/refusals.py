"""Refused C-STOREs recorded where ``dicom-store-scp status`` finds them (dicom_store_contract.refusals).

The answer to the sender never waits for the record: the association's thread only puts the refusal on a bounded
queue; one thread per receiving process writes it, to the local store (a JSON file) or to the stack's instance
table (a conditional PutItem, retried with backoff while DynamoDB throttles). A full queue drops the record (the
refusal's log line stays the record of it), counted and logged once per run of drops.

The queue and its writer (``RecordWriter``) and the table's retrying PutItem (``TableWriter``) serve stow mode's
outcomes too (stow.py): records of what HealthImaging answered, written off the receive thread the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from dicom_store_contract import layout, refusals, tables
from dicom_store_contract.uids import is_uid

LOG = logging.getLogger("dicom_store_scp.refusals")

# Refusals waiting for the writer: a flood of bad instances costs at most this many small records of memory.
QUEUE_SIZE = 1000
# How long a stopping process waits for the records still queued.
DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class Refusal:
    """One refused C-STORE, as the response and the association tell it."""

    sop_instance_uid: str
    status: int
    reason: str
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    element: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    peer: str = ""
    refused_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def record(self) -> dict[str, str]:
        """The contract's attributes; a UID that is not valid is left out (it names a folder, or an index key)."""
        values = {
            tables.SOP_INSTANCE_UID: self.sop_instance_uid,
            tables.STUDY_INSTANCE_UID: self.study_instance_uid if is_uid(self.study_instance_uid) else "",
            tables.SERIES_INSTANCE_UID: self.series_instance_uid if is_uid(self.series_instance_uid) else "",
            refusals.SOP_CLASS_UID: self.sop_class_uid if is_uid(self.sop_class_uid) else "",
            "state": refusals.REFUSED,
            refusals.STATUS: f"0x{self.status:04X}",
            refusals.REASON: self.reason,
            refusals.ELEMENT: self.element,
            refusals.CALLING_AE: self.calling_ae,
            refusals.CALLED_AE: self.called_ae,
            refusals.PEER: self.peer,
            refusals.REFUSED_AT: self.refused_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        return {name: value for name, value in values.items() if value}


class Record(Protocol):
    """Anything a writer records: it names the instance it is about."""

    @property
    def sop_instance_uid(self) -> str: ...


class Sink(Protocol):
    def write(self, record: Any) -> bool:
        """Record it; False when it was deliberately not recorded (a received copy wins, the day's cap)."""


class RecordWriter:
    """The bounded queue and its writer thread (``start``, or the first record, starts it). ``noun`` names the
    records in its log lines ("refusal": events ``refusals-dropped``, ``refusal-not-recorded``)."""

    def __init__(self, sink: Sink, capacity: int = QUEUE_SIZE, noun: str = "refusal") -> None:
        self.sink = sink
        self.noun = noun
        self._queue: queue.Queue[Record | None] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self.dropped = 0  # over the process's life
        self._dropping = 0  # in the current run of drops

    def record(self, record: Record) -> None:
        """Queue the record; never blocks (the C-STORE answer is waiting)."""
        if not is_uid(record.sop_instance_uid):
            return  # nothing the sender could ask status about: the log line is all there is
        self.start()
        event = f"{self.noun.replace(' ', '-')}s-dropped"
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._dropping += 1
                first = self._dropping == 1
            if first:
                LOG.warning(
                    f"{self.noun}s not recorded: the queue is full",
                    extra={"fields": {"event": event, "queued": self._queue.maxsize}},
                )
            return
        with self._lock:
            dropped, self._dropping = self._dropping, 0
        if dropped:
            LOG.warning(
                f"{self.noun}s not recorded while the queue was full",
                extra={"fields": {"event": event, "dropped": dropped}},
            )

    def start(self) -> None:
        if self._writer is not None:
            return
        with self._lock:
            if self._writer is None:
                name = f"{self.noun.replace(' ', '-')}s"
                self._writer = threading.Thread(target=self._write_all, name=name, daemon=True)
                self._writer.start()

    def _write_all(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self.sink.write(record)
            except Exception as error:  # a record lost must not end the writer
                LOG.warning(
                    f"{self.noun} not recorded",
                    extra={
                        "fields": {
                            "event": f"{self.noun.replace(' ', '-')}-not-recorded",
                            "sopInstanceUID": record.sop_instance_uid,
                            "error": f"{type(error).__name__}: {error}",
                        }
                    },
                )

    def stop(self, timeout: float = DRAIN_SECONDS) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then end the writer."""
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        writer.join(timeout)


class RefusalLog(RecordWriter):
    """The refusals' queue and writer (``noun`` "refusal")."""


# -- the local store ---------------------------------------------------------------------------------------------


class LocalRefusals:
    """``<STORAGE_DIR>/refused/<YYYYMMDD>/...json``: at most ``per_day`` files a day, ``retention_days`` kept."""

    def __init__(
        self,
        root: Path,
        per_day: int = refusals.LOCAL_PER_DAY,
        retention_days: int = refusals.RETENTION_DAYS,
    ) -> None:
        self.root = root.resolve()
        self.folder = self.root / layout.REFUSED
        self.per_day = per_day
        self.retention_days = retention_days
        self._day = ""
        self._written_today = 0

    def write(self, refusal: Refusal) -> bool:
        day = refusal.refused_at.strftime("%Y%m%d")
        if day != self._day:
            self._new_day(day, refusal.refused_at)
        if self._written_today >= self.per_day:
            if self._written_today == self.per_day:
                LOG.warning(
                    "refusals not recorded for the rest of the day: the local store's daily cap is reached",
                    extra={"fields": {"event": "refusals-capped", "day": day, "cap": self.per_day}},
                )
                self._written_today += 1
            return False
        record = refusal.record()
        target = self.root / layout.refusal_key(
            day,
            record.get(tables.STUDY_INSTANCE_UID, ""),
            record.get(tables.SERIES_INSTANCE_UID, ""),
            refusal.sop_instance_uid,
        )
        write_record(target, record)  # not fsync'd: nothing was acknowledged on its strength
        self._written_today += 1
        return True

    def _new_day(self, day: str, now: datetime) -> None:
        """Count the day's files already there (another process, or this one before a restart); sweep old days."""
        self._day = day
        today = self.folder / day
        self._written_today = sum(len(files) for _, _, files in os.walk(today)) if today.is_dir() else 0
        oldest = (now - timedelta(days=self.retention_days)).strftime("%Y%m%d")
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.is_dir() and len(entry.name) == 8 and entry.name.isdigit() and entry.name < oldest:
                    shutil.rmtree(entry.path, ignore_errors=True)


# -- the stack's instance table ----------------------------------------------------------------------------------

# DynamoDB's answers that mean "not now": retried with backoff.
_RETRYABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)
ATTEMPTS = 6
_FIRST_BACKOFF = 0.2
_MAX_BACKOFF = 5.0


class TableWriter:
    """Conditional PutItems into the instance table, retried with backoff while DynamoDB throttles."""

    def __init__(
        self,
        instance_table: str,
        client: Any = None,
        *,
        attempts: int = ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.instance_table = instance_table
        self._client = client
        self.attempts = attempts
        self.sleep = sleep

    def client(self) -> Any:
        if self._client is None:
            import boto3
            import botocore.config

            # This writer is the one retry layer (below): the client itself tries once.
            config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 1})
            self._client = boto3.session.Session().client("dynamodb", config=config)
        return self._client

    def put(self, request: dict[str, Any]) -> bool:
        """PutItem; False when its condition failed (never retried: the item holds a later truth)."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, self.attempts + 1):
            try:
                self.client().put_item(**request)
                return True
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code == "ConditionalCheckFailedException":
                    return False
                if code not in _RETRYABLE or attempt == self.attempts:
                    raise
            except BotoCoreError:  # the endpoint did not answer
                if attempt == self.attempts:
                    raise
            # Full jitter: workers throttled together do not retry together.
            ceiling = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (attempt - 1))
            self.sleep(ceiling * secrets.randbelow(1001) / 1000)
        return False


class TableRefusals(TableWriter):
    """A ``REFUSED`` item in the instance table, only where it holds nothing for the instance or a refusal."""

    def item(self, refusal: Refusal) -> dict[str, Any]:
        expires = refusal.refused_at + timedelta(days=refusals.RETENTION_DAYS)
        item: dict[str, Any] = {name: {"S": value} for name, value in refusal.record().items()}
        item[tables.EXPIRES_AT] = {"N": str(int(expires.timestamp()))}
        return item

    def write(self, refusal: Refusal) -> bool:
        request = {
            "TableName": self.instance_table,
            "Item": self.item(refusal),
            # An item the pipeline wrote (received, imported, failed...) is never replaced by a refusal.
            "ConditionExpression": "attribute_not_exists(#key) OR #state = :refused",
            "ExpressionAttributeNames": {"#key": tables.SOP_INSTANCE_UID, "#state": "state"},
            "ExpressionAttributeValues": {":refused": {"S": refusals.REFUSED}},
        }
        return self.put(request)


def build_refusals(config: Any) -> RefusalLog | None:
    """The local store's refusal files; with DICOM_BUCKET, the instance table's items (None without a table)."""
    if config.dicom_bucket:
        return RefusalLog(TableRefusals(config.instance_table)) if config.instance_table else None
    return RefusalLog(LocalRefusals(Path(config.storage_dir)))


def write_record(target: Path, record: dict[str, Any]) -> None:
    """A record of the local store as JSON, written whole then renamed (status never reads half of one), its
    folders made. Not fsync'd: the local records (refusals, stow outcomes) say what happened; none is what a
    C-STORE success stood on."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
