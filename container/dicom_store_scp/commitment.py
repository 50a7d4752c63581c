"""Storage Commitment Push Model, SCP role (PS3.4 Annex J): the sender learns which instances we keep.

A requester sends N-ACTION (Action Type 1) with a Transaction UID and the instances it wants committed. The
request is recorded durably and answered at once; when every referenced instance is final the SCP sends one
N-EVENT-REPORT: Event Type 1 when all are committed, 2 when some failed, each failure with its reason. The report
goes on the requesting association while it is open, otherwise on a new association to the address the calling AE
title has in ``COMMITMENT_PEERS``; failed deliveries are retried with backoff until ``COMMITMENT_REPORT_TIMEOUT``.

Local mode (the only mode so far: the SCP offers the SOP class only without ``DICOM_BUCKET``) has no import, so an
instance is final once it is stored: committed if its file is in the store with the referenced SOP class, failed
otherwise. Transactions live in ``<STORAGE_DIR>/commitments/<Transaction UID>.json``; a process that received or
recovered one holds an advisory lock on it, so several worker processes never report one transaction twice.

Association threads only record and enqueue: evaluating and delivering run on this module's own threads, so a
requester that cannot be reached delays nobody else.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from dicom_store_contract import layout, tables
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from .storage import StorageError, _fsync_dir

LOG = logging.getLogger("dicom_store_scp.commitment")

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
# The well-known SOP Instance every N-ACTION and N-EVENT-REPORT of the Push Model names (PS3.4 J.3.5).
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
# Action Type ID (0000,1008): Request Storage Commitment, the Push Model's only action (PS3.4 J.3.2).
REQUEST_STORAGE_COMMITMENT = 1
# Event Type ID (0000,1002) of the report (PS3.4 J.3.3).
EVENT_ALL_COMMITTED = 1  # Storage Commitment Request Successful
EVENT_FAILURES_EXIST = 2  # Storage Commitment Request Complete - Failures Exist

# N-ACTION-RSP statuses (PS3.7 10.1.4.1.10, Annex C).
# The request is recorded; the outcome follows in an N-EVENT-REPORT.
SUCCESS = 0x0000
# Action Type ID is not 1 (Request Storage Commitment).
NO_SUCH_ACTION = 0x0123
# Action Information lacks a valid Transaction UID (0008,1195) or a Referenced SOP Sequence (0008,1199) of valid
# UIDs, holds more references than REFERENCES_LIMIT, or cannot be decoded.
INVALID_ARGUMENT_VALUE = 0x0115
# The transaction could not be recorded (the store failed): nothing was recorded, the requester should retry.
RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) of an instance in the report's Failed SOP Sequence (PS3.3 C.14.1.1).
# Imported into HealthImaging not at all: the import failed or was given up on (instance state FAILED, TIMED_OUT).
PROCESSING_FAILURE = 0x0110
# Not stored here: never received, or refused at C-STORE.
NO_SUCH_OBJECT_INSTANCE = 0x0112
# Stored, but under another SOP class than the request names.
CLASS_INSTANCE_CONFLICT = 0x0119
# A request reused the Transaction UID of a recorded transaction with other instances: they are not committed.
DUPLICATE_TRANSACTION_UID = 0x0131
FAILURE_REASONS = {
    PROCESSING_FAILURE: "processing failure: the import into HealthImaging failed",
    NO_SUCH_OBJECT_INSTANCE: "no such object instance: not stored here",
    CLASS_INSTANCE_CONFLICT: "class / instance conflict: stored under another SOP class",
    DUPLICATE_TRANSACTION_UID: "duplicate transaction UID: the Transaction UID is already in use",
}

# References in one request: 2 MiB of Action Information (guard.py's cap on the data set) holds about 17,000.
REFERENCES_LIMIT = 20_000
# How long a transaction's record is kept once reported or given up (a requester asking again within this time
# with the same Transaction UID and instances gets the report again).
RETENTION = timedelta(days=7)
# Delivery attempts back off from FIRST_RETRY_SECONDS, doubling up to MAX_RETRY_SECONDS, until the timeout.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# How long a report on the requesting association waits for its answer. The association's reactor is paused
# meanwhile (pynetdicom's send_n_event_report), so a requester that is releasing instead of answering waits too:
# after this the report goes on a new association.
SAME_ASSOCIATION_WAIT_SECONDS = 10.0
# How often a running SCP looks for pending transactions nobody reports (their process or task stopped).
RECOVER_EVERY_SECONDS = 60.0
# Reports delivered at once; a requester that cannot be reached holds one of these for a connection timeout.
DELIVERY_THREADS = 4

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class DeliveryError(Exception):
    """The report could not be delivered this time (the message says why)."""


class InvalidRequest(ValueError):
    """The N-ACTION's Action Information cannot be a storage commitment request."""


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str

    def to_json(self) -> dict[str, str]:
        return {"sopClassUID": self.sop_class_uid, "sopInstanceUID": self.sop_instance_uid}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Reference:
        return cls(str(value["sopClassUID"]), str(value["sopInstanceUID"]))


def parse_request(action_information: Dataset) -> tuple[str, list[Reference]]:
    """The Transaction UID and the referenced instances of an N-ACTION request (PS3.4 J.3.2.1.1)."""
    try:
        transaction_uid = str(action_information.get("TransactionUID", "") or "").strip()
        sequence = action_information.get("ReferencedSOPSequence")
        items = list(sequence) if sequence is not None else []
        references = [
            Reference(
                str(item.get("ReferencedSOPClassUID", "") or "").strip(),
                str(item.get("ReferencedSOPInstanceUID", "") or "").strip(),
            )
            for item in items
        ]
    except Exception as error:  # pydicom decodes lazily: a malformed element raises on first access
        raise InvalidRequest(f"Action Information cannot be decoded: {type(error).__name__}: {error}") from None
    if not _is_uid(transaction_uid):
        raise InvalidRequest(f"Transaction UID (0008,1195) is {transaction_uid or 'missing'}")
    if not references:
        raise InvalidRequest("Referenced SOP Sequence (0008,1199) is missing or empty")
    if len(references) > REFERENCES_LIMIT:
        raise InvalidRequest(f"{len(references)} references; at most {REFERENCES_LIMIT} in one request")
    for reference in references:
        if not (_is_uid(reference.sop_class_uid) and _is_uid(reference.sop_instance_uid)):
            raise InvalidRequest(f"Referenced SOP Sequence holds an invalid UID: {reference}")
    return transaction_uid, references


@dataclass
class Transaction:
    """One storage commitment request, as recorded."""

    transaction_uid: str
    references: list[Reference]
    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    received_at: str
    deadline: str
    # pending (not reported yet), reported, undelivered (given up)
    state: str = "pending"
    # The record's own name: the Transaction UID, or for a duplicate request the UID and a suffix.
    record_id: str = ""
    duplicate_of: str = ""
    attempts: int = 0
    last_error: str = ""
    committed: list[dict[str, Any]] | None = None
    failed: list[dict[str, Any]] | None = None
    finished_at: str = ""
    delivered_via: str = ""

    def to_json(self) -> dict[str, Any]:
        document = {
            "transactionUID": self.transaction_uid,
            "recordId": self.record_id or self.transaction_uid,
            "duplicateOf": self.duplicate_of,
            "callingAETitle": self.calling_ae,
            "calledAETitle": self.called_ae,
            "peerAddress": self.peer_address,
            "peerPort": self.peer_port,
            "receivedAt": self.received_at,
            "deadline": self.deadline,
            "state": self.state,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "finishedAt": self.finished_at,
            "deliveredVia": self.delivered_via,
            "references": [reference.to_json() for reference in self.references],
        }
        if self.committed is not None:
            document["committed"] = self.committed
            document["failed"] = self.failed or []
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Transaction:
        return cls(
            transaction_uid=document["transactionUID"],
            record_id=document.get("recordId", document["transactionUID"]),
            duplicate_of=document.get("duplicateOf", ""),
            references=[Reference.from_json(item) for item in document["references"]],
            calling_ae=document.get("callingAETitle", ""),
            called_ae=document.get("calledAETitle", ""),
            peer_address=document.get("peerAddress", ""),
            peer_port=int(document.get("peerPort", 0)),
            received_at=document["receivedAt"],
            deadline=document["deadline"],
            state=document.get("state", "pending"),
            attempts=int(document.get("attempts", 0)),
            last_error=document.get("lastError", ""),
            committed=document.get("committed"),
            failed=document.get("failed"),
            finished_at=document.get("finishedAt", ""),
            delivered_via=document.get("deliveredVia", ""),
        )

    def same_request(self, other: Transaction) -> bool:
        return self.calling_ae == other.calling_ae and set(self.references) == set(other.references)


# -- where transactions are recorded (local store) ------------------------------------------------------------------


class LocalTransactions:
    """``<root>/commitments/<record id>.json``, written atomically and fsync'd; locks in ``commitments/.locks``."""

    def __init__(self, root: Path) -> None:
        self.folder = root / layout.COMMITMENTS
        self.locks = self.folder / ".locks"
        self._held: dict[str, int] = {}
        self._guard = threading.Lock()

    def prepare(self) -> None:
        self.locks.mkdir(parents=True, exist_ok=True)

    def _path(self, record_id: str) -> Path:
        return self.folder / f"{record_id}.json"

    def create(self, transaction: Transaction) -> bool:
        """Record a new transaction and lock it for this process; False when its record already exists."""
        record_id = transaction.record_id or transaction.transaction_uid
        target = self._path(record_id)
        partial = self.folder / f".{record_id}.{uuid.uuid4().hex}.partial"
        try:
            self._write(partial, transaction)
            try:
                # A hard link is created only where no file exists: an atomic "create with this content".
                os.link(partial, target)
            except FileExistsError:
                return False
            _fsync_dir(self.folder)
        except OSError as error:
            raise StorageError(f"{target}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)
        self.claim(record_id)
        return True

    def update(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        partial = self.folder / f".{record_id}.{uuid.uuid4().hex}.partial"
        try:
            self._write(partial, transaction)
            os.replace(partial, self._path(record_id))
            _fsync_dir(self.folder)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StorageError(f"{record_id}: {error.strerror or error}") from error

    def _write(self, path: Path, transaction: Transaction) -> None:
        with path.open("w", encoding="utf-8") as handle:
            json.dump(transaction.to_json(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())

    def load(self, record_id: str) -> Transaction | None:
        try:
            return Transaction.from_json(json.loads(self._path(record_id).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    def record_ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.stem for path in self.folder.glob("*.json"))

    def claim(self, record_id: str) -> bool:
        """Take this process's lock on a transaction (held until released); False when another process has it."""
        with self._guard:
            if record_id in self._held:
                return True
            fd = os.open(self.locks / record_id, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._held[record_id] = fd
            return True

    def release(self, record_id: str) -> None:
        with self._guard:
            fd = self._held.pop(record_id, None)
        if fd is not None:
            os.close(fd)

    def remove(self, record_id: str) -> None:
        self._path(record_id).unlink(missing_ok=True)
        (self.locks / record_id).unlink(missing_ok=True)


# -- what the store holds (local mode: stored is final) -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Per instance: None while not final, else the failure reason (0 = committed)."""

    reasons: dict[Reference, int | None]

    @property
    def final(self) -> bool:
        return all(reason is not None for reason in self.reasons.values())


class LocalOutcomes:
    """An instance is committed once its file is in the local store under the referenced SOP class."""

    def __init__(self, root: Path) -> None:
        from .status import LocalStore  # the status command's reading of the local store

        self.store = LocalStore(root)

    def evaluate(self, transaction: Transaction) -> Outcome:
        from .status import Lookup, StatusError

        reasons: dict[Reference, int | None] = {}
        for reference in transaction.references:
            try:
                found = self.store.find(Lookup(tables.SOP_INSTANCE_UID, reference.sop_instance_uid))
            except StatusError:  # nothing was ever stored here
                found = []
            if not found:
                reasons[reference] = NO_SUCH_OBJECT_INSTANCE
                continue
            reasons[reference] = CLASS_INSTANCE_CONFLICT
            for item in found:
                if self._sop_class(self.store.root / item["key"]) == reference.sop_class_uid:
                    reasons[reference] = 0
                    break
        return Outcome(reasons)

    @staticmethod
    def _sop_class(path: Path) -> str:
        try:
            return str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "")).strip()
        except Exception:  # an unreadable file commits nothing
            return ""


# -- the stack: DynamoDB ---------------------------------------------------------------------------------------------

# A task owns a transaction it reports for this long after its last write; a task that stops leaves it to the next
# one that starts. Far longer than one delivery attempt (SAME_ASSOCIATION_WAIT_SECONDS + a connection timeout), so
# two tasks never send one report: the ownership is a conditional write.
LEASE_SECONDS = 300
# Instance states (functions/tracking.py InstanceState) that are an outcome: imported, or not.
IMPORTED_STATES = frozenset({"IMPORTED", "IMPORTED_WITH_WARNINGS"})
NOT_IMPORTED_STATES = frozenset({"FAILED", "TIMED_OUT"})


def _condition_failed(error: Exception) -> bool:
    response = getattr(error, "response", {}) or {}
    return bool(response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class DynamoTransactions:
    """One item per transaction in the commitment table; the reporting task is its ``owner`` (a lease)."""

    def __init__(self, dynamodb: Any, table: str, owner: str | None = None) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.owner = owner or uuid.uuid4().hex

    def prepare(self) -> None:
        pass

    def _key(self, record_id: str) -> dict[str, Any]:
        return {tables.RECORD_ID: {"S": record_id}}

    def _values(self, transaction: Transaction) -> dict[str, Any]:
        now = time.time()
        values: dict[str, Any] = {
            ":document": {"S": json.dumps(transaction.to_json())},
            ":state": {"S": transaction.state},
            ":owner": {"S": self.owner},
            ":lease": {"N": str(int(now + LEASE_SECONDS))},
        }
        return values

    def create(self, transaction: Transaction) -> bool:
        record_id = transaction.record_id or transaction.transaction_uid
        item = {
            **self._key(record_id),
            "document": {"S": json.dumps(transaction.to_json())},
            "state": {"S": transaction.state},
            tables.PENDING: {"S": "1"},
            "owner": {"S": self.owner},
            "leaseUntil": {"N": str(int(time.time() + LEASE_SECONDS))},
            tables.EXPIRES_AT: {"N": str(int((_parse_iso(transaction.deadline) + RETENTION).timestamp()))},
        }
        try:
            self.dynamodb.put_item(
                TableName=self.table, Item=item, ConditionExpression=f"attribute_not_exists({tables.RECORD_ID})"
            )
        except Exception as error:
            if _condition_failed(error):
                return False
            raise StorageError(f"{self.table}: {error}") from error
        return True

    def update(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        values = self._values(transaction)
        expression = "SET #document = :document, #state = :state, #lease = :lease"
        if transaction.state == "pending":
            expression += ", #pending = :pending"
            values[":pending"] = {"S": "1"}
        else:
            finished = _parse_iso(transaction.finished_at) if transaction.finished_at else _now()
            expression += ", #expires = :expires REMOVE #pending"
            values[":expires"] = {"N": str(int((finished + RETENTION).timestamp()))}
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression=expression,
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={
                    "#document": "document",
                    "#state": "state",
                    "#owner": "owner",
                    "#lease": "leaseUntil",
                    "#pending": tables.PENDING,
                    **({"#expires": tables.EXPIRES_AT} if transaction.state != "pending" else {}),
                },
                ExpressionAttributeValues=values,
            )
        except Exception as error:
            if _condition_failed(error):
                raise StorageError(f"{record_id}: another task reports this transaction now") from None
            raise StorageError(f"{self.table}: {error}") from error

    def load(self, record_id: str) -> Transaction | None:
        item = self.dynamodb.get_item(TableName=self.table, Key=self._key(record_id), ConsistentRead=True).get("Item")
        return Transaction.from_json(json.loads(item["document"]["S"])) if item else None

    def record_ids(self) -> list[str]:
        index = tables.PENDING_COMMITMENTS
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=index.name,
            KeyConditionExpression="#pending = :pending",
            ExpressionAttributeNames={"#pending": index.partition_key},
            ExpressionAttributeValues={":pending": {"S": "1"}},
        )
        return [item[tables.RECORD_ID]["S"] for page in pages for item in page.get("Items", [])]

    def claim(self, record_id: str) -> bool:
        now = int(time.time())
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression="SET #owner = :owner, leaseUntil = :lease",
                ConditionExpression="attribute_exists(recordId) AND "
                "(attribute_not_exists(#owner) OR #owner = :owner OR leaseUntil < :now)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":owner": {"S": self.owner},
                    ":lease": {"N": str(now + LEASE_SECONDS)},
                    ":now": {"N": str(now)},
                },
            )
        except Exception as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def release(self, record_id: str) -> None:
        with contextlib.suppress(Exception):
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression="REMOVE #owner, leaseUntil",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": self.owner}},
            )

    def remove(self, record_id: str) -> None:
        pass  # the table's time to live removes items (expiresAt)


class DynamoOutcomes:
    """An instance is committed once the instance table says HealthImaging imported it."""

    def __init__(self, dynamodb: Any, instance_table: str, missing_seconds: float) -> None:
        self.dynamodb = dynamodb
        self.instance_table = instance_table
        self.missing_seconds = missing_seconds

    def evaluate(self, transaction: Transaction) -> Outcome:
        items = self._items([r.sop_instance_uid for r in transaction.references])
        waited = (_now() - _parse_iso(transaction.received_at)).total_seconds()
        reasons: dict[Reference, int | None] = {}
        for reference in transaction.references:
            item = items.get(reference.sop_instance_uid)
            if item is None:
                # Not recorded yet (its batch is sealed when its association ends) or never received.
                reasons[reference] = NO_SUCH_OBJECT_INSTANCE if waited >= self.missing_seconds else None
                continue
            state = item.get("state", {}).get("S", "")
            sop_class = item.get("sopClassUID", {}).get("S", "")
            if sop_class and sop_class != reference.sop_class_uid:
                reasons[reference] = CLASS_INSTANCE_CONFLICT
            elif state in IMPORTED_STATES:
                reasons[reference] = 0
            elif state in NOT_IMPORTED_STATES:
                reasons[reference] = PROCESSING_FAILURE
            else:
                reasons[reference] = None  # RECEIVED, IMPORTING: the import has not reported yet
        return Outcome(reasons)

    def _items(self, uids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(uids))
        # BatchGetItem reads at most 100 keys per call (by key: no scan).
        for start in range(0, len(unique), 100):
            keys = [{tables.SOP_INSTANCE_UID: {"S": uid}} for uid in unique[start : start + 100]]
            request: dict[str, Any] = {self.instance_table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self.dynamodb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.instance_table, []):
                    found[item[tables.SOP_INSTANCE_UID]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.1)
        return found


# -- the report ------------------------------------------------------------------------------------------------------


def event_information(transaction: Transaction) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the transaction's N-EVENT-REPORT (PS3.4 J.3.3.1.1)."""
    committed = transaction.committed or []
    failed = transaction.failed or []
    information = Dataset()
    information.TransactionUID = transaction.transaction_uid
    if committed:
        information.ReferencedSOPSequence = [_item(entry) for entry in committed]
    if failed:
        information.FailedSOPSequence = [_item(entry, entry["failureReason"]) for entry in failed]
    return (EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED), information


def _item(entry: Mapping[str, Any], failure_reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = entry["sopClassUID"]
    item.ReferencedSOPInstanceUID = entry["sopInstanceUID"]
    if failure_reason is not None:
        item.FailureReason = failure_reason
    return item


# -- the engine ------------------------------------------------------------------------------------------------------


def _log(level: int, message: str, transaction: Transaction, **fields: Any) -> None:
    LOG.log(
        level,
        message,
        extra={
            "fields": {
                "transactionUID": transaction.transaction_uid,
                "callingAE": transaction.calling_ae,
                "peer": f"{transaction.peer_address}:{transaction.peer_port}",
                **fields,
            }
        },
    )


Sender = Callable[[Transaction, Any], str]


class Transactions(Protocol):
    """Where transactions are recorded, and which process (or task) reports each."""

    def prepare(self) -> None: ...
    def create(self, transaction: Transaction) -> bool: ...
    def update(self, transaction: Transaction) -> None: ...
    def load(self, record_id: str) -> Transaction | None: ...
    def record_ids(self) -> list[str]: ...
    def claim(self, record_id: str) -> bool: ...
    def release(self, record_id: str) -> None: ...
    def remove(self, record_id: str) -> None: ...


class Outcomes(Protocol):
    def evaluate(self, transaction: Transaction) -> Outcome: ...


class Commitments:
    """Records requests, waits until their instances are final, delivers each report once.

    ``deliver(transaction, association)`` sends the report and returns how ("same-association" or
    "new-association"); it raises when it could not. The association is the requesting one while this process
    knows it, else None.
    """

    def __init__(
        self,
        transactions: Transactions,
        outcomes: Outcomes,
        deliver: Sender,
        report_timeout: float,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
        evaluate_every: float = 1.0,
        recover_every: float = RECOVER_EVERY_SECONDS,
    ) -> None:
        self.transactions = transactions
        self.outcomes = outcomes
        self.deliver = deliver
        self.report_timeout = report_timeout
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.evaluate_every = evaluate_every
        self.recover_every = recover_every
        # Transactions this engine has scheduled and not finished: recovery leaves them alone.
        self._active: set[str] = set()
        self._last_recovery = time.monotonic()
        self._associations: dict[str, Any] = {}
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="commitment-report")
        self._scheduler = threading.Thread(target=self._run, name="commitment-scheduler", daemon=True)
        self._last_prune = 0.0

    # lifecycle

    def start(self) -> None:
        self.transactions.prepare()
        self._recover()
        self._scheduler.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._scheduler.is_alive():
            self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _recover(self) -> None:
        """Pending transactions left by a process that stopped: this one reports them unless another does."""
        try:
            for record_id in self.transactions.record_ids():
                transaction = self.transactions.load(record_id)
                if transaction is None or transaction.state != "pending" or record_id in self._active:
                    continue
                if self.transactions.claim(record_id):
                    _log(logging.INFO, "storage commitment recovered", transaction, event="commitment-recovered")
                    self._schedule(record_id, 0.0)
        except Exception as error:  # the SCP serves anyway; what is left is taken over at a later start
            LOG.error(
                "storage commitment recovery failed",
                extra={"fields": {"event": "commitment-recovery-failed", "error": f"{type(error).__name__}: {error}"}},
            )

    # requests (association threads)

    def request(self, assoc: Any, action_information: Dataset) -> int:
        """Record an N-ACTION's request; the status to answer it with. Never waits for anything but the disk."""
        requestor = assoc.requestor
        primitive = requestor.primitive
        now = _now()
        try:
            transaction_uid, references = parse_request(action_information)
        except InvalidRequest as error:
            LOG.warning(
                "storage commitment request refused",
                extra={
                    "fields": {
                        "event": "commitment-refused",
                        "peer": f"{requestor.address}:{requestor.port}",
                        "callingAE": str(getattr(primitive, "calling_ae_title", "") or "").strip(),
                        "status": f"0x{INVALID_ARGUMENT_VALUE:04X}",
                        "reason": str(error),
                    }
                },
            )
            return INVALID_ARGUMENT_VALUE
        transaction = Transaction(
            transaction_uid=transaction_uid,
            references=references,
            calling_ae=str(getattr(primitive, "calling_ae_title", "") or "").strip(),
            called_ae=str(getattr(primitive, "called_ae_title", "") or "").strip(),
            peer_address=str(requestor.address),
            peer_port=int(requestor.port),
            received_at=_iso(now),
            deadline=_iso(now + timedelta(seconds=self.report_timeout)),
        )
        try:
            record_id = self._record(transaction)
        except StorageError as error:
            _log(
                logging.ERROR,
                "storage commitment not recorded",
                transaction,
                event="commitment-not-recorded",
                error=str(error),
            )
            return RESOURCE_LIMITATION
        if record_id is not None:
            self._associations[record_id] = assoc
            self._schedule(record_id, 0.0)
        return SUCCESS

    def _record(self, transaction: Transaction) -> str | None:
        """Write the record; the id to schedule, or None when a retransmission needs nothing new."""
        if self.transactions.create(transaction):
            _log(
                logging.INFO,
                "storage commitment requested",
                transaction,
                event="commitment-requested",
                instances=len(transaction.references),
            )
            return transaction.transaction_uid
        recorded = self.transactions.load(transaction.transaction_uid)
        if recorded is not None and recorded.same_request(transaction):
            # The requester asked again (it missed our answer or the report): one transaction, reported again
            # if it was already reported.
            _log(
                logging.INFO,
                "storage commitment requested again",
                transaction,
                event="commitment-repeated",
                state=recorded.state,
            )
            record_id = recorded.record_id or recorded.transaction_uid
            if recorded.state == "pending" or not self.transactions.claim(record_id):
                return None
            recorded.state, recorded.attempts, recorded.last_error = "pending", 0, ""
            recorded.deadline = transaction.deadline
            recorded.peer_address, recorded.peer_port = transaction.peer_address, transaction.peer_port
            self.transactions.update(recorded)
            return record_id
        # Another request under a Transaction UID in use: its instances are reported failed, the recorded
        # transaction stays as it was.
        duplicate = Transaction(**{**transaction.__dict__})
        duplicate.record_id = f"{transaction.transaction_uid}-duplicate-{uuid.uuid4().hex[:12]}"
        duplicate.duplicate_of = transaction.transaction_uid
        duplicate.committed = []
        duplicate.failed = [
            {**reference.to_json(), "failureReason": DUPLICATE_TRANSACTION_UID} for reference in transaction.references
        ]
        self.transactions.create(duplicate)
        _log(
            logging.WARNING,
            "storage commitment with a Transaction UID in use",
            transaction,
            event="commitment-duplicate",
            instances=len(transaction.references),
        )
        return duplicate.record_id

    # scheduling

    def _schedule(self, record_id: str, delay: float) -> None:
        with self._wake:
            self._active.add(record_id)
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), record_id))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = (self._due[0][0] - time.monotonic()) if self._due else 60.0
                    self._wake.wait(timeout=max(0.0, min(timeout, self.recover_every)))
                    self._prune_now_and_then()
                    if time.monotonic() - self._last_recovery >= self.recover_every:
                        self._last_recovery = time.monotonic()
                        self._wake.release()
                        try:
                            # A process or task that stopped (its lock or lease gone) left these to the others.
                            self._recover()
                        finally:
                            self._wake.acquire()
                if self._stopping:
                    return
                _, _, record_id = heapq.heappop(self._due)
            try:
                self._pool.submit(self._step, record_id)
            except RuntimeError:  # the pool is shut down: stopping
                return

    def _step(self, record_id: str) -> None:
        """Evaluate the transaction, then try to deliver its report once; reschedule as needed."""
        transaction = self.transactions.load(record_id)
        if transaction is None or transaction.state != "pending":
            self._forget(record_id)
            return
        try:
            if transaction.committed is None:
                outcome = self.outcomes.evaluate(transaction)
                if not outcome.final:
                    self.transactions.update(transaction)  # in the stack: renews this task's lease
                    self._schedule(record_id, self.evaluate_every)
                    return
                transaction.committed = [r.to_json() for r, reason in outcome.reasons.items() if reason == 0]
                transaction.failed = [
                    {**r.to_json(), "failureReason": reason} for r, reason in outcome.reasons.items() if reason
                ]
                self.transactions.update(transaction)
            self._attempt(transaction)
        except Exception as error:
            LOG.exception("storage commitment step failed", extra={"fields": {"event": "commitment-error"}})
            transaction.last_error = f"{type(error).__name__}: {error}"
            self._retry_or_give_up(transaction)

    def _attempt(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        transaction.attempts += 1
        try:
            via = self.deliver(transaction, self._associations.get(record_id))
        except Exception as error:
            transaction.last_error = (
                str(error) if isinstance(error, DeliveryError) else f"{type(error).__name__}: {error}"
            )
            _log(
                logging.WARNING,
                "storage commitment report not delivered",
                transaction,
                event="commitment-report-failed",
                attempt=transaction.attempts,
                error=transaction.last_error,
            )
            self._retry_or_give_up(transaction)
            return
        transaction.state, transaction.delivered_via, transaction.last_error = "reported", via, ""
        transaction.finished_at = _iso(_now())
        self.transactions.update(transaction)
        _log(
            logging.INFO,
            "storage commitment reported",
            transaction,
            event="commitment-reported",
            eventType=EVENT_FAILURES_EXIST if transaction.failed else EVENT_ALL_COMMITTED,
            committed=len(transaction.committed or []),
            failed=len(transaction.failed or []),
            deliveredVia=via,
            attempts=transaction.attempts,
            failures=[
                {"sopInstanceUID": f["sopInstanceUID"], "failureReason": f"0x{f['failureReason']:04X}"}
                for f in (transaction.failed or [])[:20]
            ],
        )
        self._forget(record_id)

    def _retry_or_give_up(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        delay = min(self.max_retry, self.first_retry * 2 ** max(0, transaction.attempts - 1))
        remaining = (_parse_iso(transaction.deadline) - _now()).total_seconds()
        if remaining > 0:
            transaction.state = "pending"
        else:
            transaction.state, transaction.finished_at = "undelivered", _iso(_now())
        try:
            self.transactions.update(transaction)
        except StorageError as error:
            # In the stack: another task took the transaction over (this one's lease ran out); it reports.
            _log(logging.WARNING, "storage commitment left to another", transaction, event="commitment-released",
                 error=str(error))  # fmt: skip
            self._forget(record_id)
            return
        if remaining > 0:
            self._schedule(record_id, min(delay, remaining))
            return
        _log(
            logging.ERROR,
            "storage commitment report given up",
            transaction,
            event="commitment-undelivered",
            attempts=transaction.attempts,
            error=transaction.last_error,
        )
        self._forget(record_id)

    def _forget(self, record_id: str) -> None:
        with self._wake:
            self._active.discard(record_id)
        self._associations.pop(record_id, None)
        self.transactions.release(record_id)

    def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        cutoff = _now() - RETENTION
        for record_id in self.transactions.record_ids():
            with contextlib.suppress(Exception):
                transaction = self.transactions.load(record_id)
                if transaction and transaction.state != "pending" and _parse_iso(transaction.finished_at) < cutoff:
                    self.transactions.remove(record_id)


# -- delivery over DIMSE ---------------------------------------------------------------------------------------------


class ReportSender:
    """Sends a transaction's N-EVENT-REPORT: on the requesting association while it is open, else on a new one.

    A new association proposes the Storage Commitment Push Model with SCP/SCU role selection, this side as SCP
    (PS3.4 J.3.3: the report may come on another association, which the SCP then requests).
    """

    def __init__(
        self,
        ae_title: str,
        peers: Iterable[tuple[str, str, int]],
        acse_timeout: float,
        dimse_timeout: float,
        network_timeout: float,
    ) -> None:
        self.ae_title = ae_title
        self.peers = {title: (host, port) for title, host, port in peers}
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout

    def __call__(self, transaction: Transaction, assoc: Any) -> str:
        event_type, information = event_information(transaction)
        if assoc is not None and assoc.is_established and not assoc.acse.is_release_requested():
            configured = assoc.dimse_timeout
            assoc.dimse_timeout = min(configured or SAME_ASSOCIATION_WAIT_SECONDS, SAME_ASSOCIATION_WAIT_SECONDS)
            try:
                self._send(assoc, event_type, information)
                return "same-association"
            except DeliveryError as error:
                _log(
                    logging.INFO,
                    "storage commitment report not taken on its association",
                    transaction,
                    event="commitment-same-association-failed",
                    error=str(error),
                )
            finally:
                assoc.dimse_timeout = configured
        address = self.peers.get(transaction.calling_ae)
        if address is None:
            raise DeliveryError(
                "the requesting association has closed and COMMITMENT_PEERS has no address for "
                f"{transaction.calling_ae!r}"
            )
        return self._send_on_new_association(transaction, address, event_type, information)

    def _send_on_new_association(
        self, transaction: Transaction, address: tuple[str, int], event_type: int, information: Dataset
    ) -> str:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, build_role

        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = min(10.0, self.acse_timeout)
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        host, port = address
        assoc = ae.associate(host, port, ae_title=transaction.calling_ae, ext_neg=[role])
        if not assoc.is_established:
            raise DeliveryError(f"no association with {transaction.calling_ae} at {host}:{port}")
        try:
            self._send(assoc, event_type, information)
        finally:
            if assoc.is_established:
                assoc.release()
        return "new-association"

    @staticmethod
    def _send(assoc: Any, event_type: int, information: Dataset) -> None:
        try:
            status, _reply = assoc.send_n_event_report(
                information, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
            )
        except (RuntimeError, ValueError) as error:
            raise DeliveryError(f"N-EVENT-REPORT not sent: {error}") from None
        code = getattr(status, "Status", None)
        if code is None:
            raise DeliveryError("no N-EVENT-REPORT-RSP (timed out, aborted or invalid)")
        if code != SUCCESS:
            raise DeliveryError(f"N-EVENT-REPORT-RSP status 0x{code:04X}")


# -- wiring ----------------------------------------------------------------------------------------------------------


def commitment_offered(config: Any) -> bool:
    """Local mode always; with DICOM_BUCKET when the instance and commitment tables are named."""
    return not config.dicom_bucket or bool(config.instance_table and config.commitment_table)


def build_commitments(config: Any) -> Commitments:
    sender = ReportSender(
        config.ae_title, config.commitment_peers, config.acse_timeout, config.dimse_timeout, config.network_timeout
    )
    if config.dicom_bucket:
        import boto3

        dynamodb = boto3.client("dynamodb")
        return Commitments(
            DynamoTransactions(dynamodb, config.commitment_table),
            DynamoOutcomes(dynamodb, config.instance_table, config.commitment_missing_seconds),
            sender,
            config.commitment_report_timeout,
            # The import takes minutes: look again every few seconds, not every second.
            evaluate_every=5.0,
        )
    root = Path(config.storage_dir).resolve()
    return Commitments(LocalTransactions(root), LocalOutcomes(root), sender, config.commitment_report_timeout)


def handle_n_action(event: Any, commitments: Commitments, sessions: Any) -> tuple[int, Dataset | None]:
    """EVT_N_ACTION: a storage commitment request is recorded and answered at once; the report follows.

    The association's open batch is sealed first: its instances are imported (in the stack) without waiting for
    the association to end, so a requester waiting on its association for the report gets it.
    """
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        LOG.warning(
            "N-ACTION refused",
            extra={"fields": {"event": "commitment-refused", "actionType": event.action_type,
                              "status": f"0x{NO_SUCH_ACTION:04X}"}},
        )  # fmt: skip
        return NO_SUCH_ACTION, None
    try:
        information = event.action_information
    except Exception as error:  # pynetdicom raises when the Action Information cannot be decoded
        LOG.warning("N-ACTION refused", extra={"fields": {"event": "commitment-refused", "reason": str(error)}})
        return INVALID_ARGUMENT_VALUE, None
    from dicom_store_contract.manifest import EndReason

    sessions.seal(event.assoc, EndReason.COMMITMENT)
    return commitments.request(event.assoc, information), None
