"""The Storage Commitment Push Model's messages (PS3.4 Annex J), with no I/O: the SOP class, every status and
Failure Reason the SCP sends and when, a request as checked (``validate_request``) and as recorded (``Reference``,
``Transaction``), and an evaluation's per-instance ``Outcome``. The data sets themselves are read and written in
``information``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dicom_store_contract import refusals
from dicom_store_contract.uids import is_uid

# One logger for the whole subpackage: its log lines keep the name they always had.
LOG = logging.getLogger("dicom_store_scp.commitment")

# The SOP class (PS3.4 J.3): its N-ACTION is the request, its N-EVENT-REPORT the report.
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
# The well-known SOP Instance every N-ACTION and N-EVENT-REPORT of the Push Model names (PS3.4 J.3.5).
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
# Action Type ID (0000,1008): Request Storage Commitment, the Push Model's only action (PS3.4 J.3.2).
REQUEST_STORAGE_COMMITMENT = 1

# Event Type ID (0000,1002) of the report (PS3.4 J.3.3).
# Storage Commitment Request Successful: every referenced instance is committed.
EVENT_ALL_COMMITTED = 1
# Storage Commitment Request Complete - Failures Exist: at least one instance failed, each with its Failure Reason.
EVENT_FAILURES_EXIST = 2

# N-ACTION-RSP statuses (PS3.7 10.1.4.1.10, Annex C).
# Success: the request is recorded; the outcome follows in an N-EVENT-REPORT. (The only N-EVENT-REPORT-RSP status
# the sender takes as "report delivered".)
SUCCESS = 0x0000
# Refused, no such action type: the Action Type ID is not 1 (Request Storage Commitment).
NO_SUCH_ACTION = 0x0123
# Refused, invalid argument value: the Action Information lacks a valid Transaction UID (0008,1195) or a Referenced
# SOP Sequence (0008,1199) of valid UIDs, holds more references than REFERENCES_LIMIT, or cannot be decoded.
INVALID_ARGUMENT_VALUE = 0x0115
# Refused, resource limitation: the transaction could not be recorded (the store failed); nothing was recorded, the
# requester should retry.
RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) of an instance in the report's Failed SOP Sequence (PS3.3 C.14.1.1).
# Processing failure: not imported into HealthImaging; the import failed or was given up on (instance state FAILED,
# TIMED_OUT).
PROCESSING_FAILURE = 0x0110
# No such object instance: not stored here; never received, or refused at C-STORE.
NO_SUCH_OBJECT_INSTANCE = 0x0112
# Class / instance conflict: stored, but under another SOP class than the request names.
CLASS_INSTANCE_CONFLICT = 0x0119
# Duplicate transaction UID: a request reused the Transaction UID of a recorded transaction with other instances;
# they are not committed.
DUPLICATE_TRANSACTION_UID = 0x0131
FAILURE_REASONS = {
    PROCESSING_FAILURE: "processing failure: the import into HealthImaging failed",
    NO_SUCH_OBJECT_INSTANCE: "no such object instance: not stored here",
    CLASS_INSTANCE_CONFLICT: "class / instance conflict: stored under another SOP class",
    DUPLICATE_TRANSACTION_UID: "duplicate transaction UID: the Transaction UID is already in use",
}

# References in one request: 2 MiB of Action Information (protocol.SMALL_DATA_SET_LIMIT) holds about 17,000.
REFERENCES_LIMIT = 20_000
# How long a transaction's record is kept once reported or given up (a requester asking again within this time
# with the same Transaction UID and instances gets the report again).
RETENTION = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the request, as parsed and recorded -------------------------------------------------------------------------------


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


def validate_request(transaction_uid: str, references: list[Reference]) -> None:
    """A storage commitment request's Transaction UID and references are usable (PS3.4 J.3.2.1.1), or InvalidRequest."""
    if not is_uid(transaction_uid):
        raise InvalidRequest(f"Transaction UID (0008,1195) is {transaction_uid or 'missing'}")
    if not references:
        raise InvalidRequest("Referenced SOP Sequence (0008,1199) is missing or empty")
    if len(references) > REFERENCES_LIMIT:
        raise InvalidRequest(f"{len(references)} references; at most {REFERENCES_LIMIT} in one request")
    for reference in references:
        if not (is_uid(reference.sop_class_uid) and is_uid(reference.sop_instance_uid)):
            raise InvalidRequest(f"Referenced SOP Sequence holds an invalid UID: {reference}")


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


# -- what an evaluation found ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Per instance: None while not final, else the failure reason (0 = committed)."""

    reasons: dict[Reference, int | None]

    @property
    def final(self) -> bool:
        return all(reason is not None for reason in self.reasons.values())


# -- what an instance's record means: the one rule every store's evaluation applies ---------------------------------

# Local import mode's one state: the instance's file is in the store, and local mode has no import to wait for
# (``dicom-store-scp status`` prints it).
STORED = "STORED"
# States that are an outcome (functions/tracking.py InstanceState, which stow mode's records reuse: ingest.STOW_*):
# HealthImaging holds the instance (or, in local import mode, the store does), or it will not.
IMPORTED_STATES = frozenset({"IMPORTED", "IMPORTED_WITH_WARNINGS"})
COMMITTED_STATES = IMPORTED_STATES | {STORED}
NOT_IMPORTED_STATES = frozenset({"FAILED", "TIMED_OUT"})


def failure_reason(
    reference: Reference, state: str, sop_class_uid: str, waited: float, missing_seconds: float
) -> int | None:
    """One referenced instance's Failure Reason (0: committed; None: not final yet) from what the store records about
    it: its ``state`` ("" when nothing is recorded) and the SOP class it was recorded under ("" when not known).

    A refusal's record (nothing was stored: the sender may still send a good copy) or no record at all is "never
    received" once ``missing_seconds`` have passed since the request (0 where the record is written before the
    C-STORE answer), and not final before: the record of an answer already given may still be on its way."""
    if not state or state == refusals.REFUSED:
        return NO_SUCH_OBJECT_INSTANCE if waited >= missing_seconds else None
    if sop_class_uid and sop_class_uid != reference.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    if state in COMMITTED_STATES:
        return 0
    if state in NOT_IMPORTED_STATES:
        return PROCESSING_FAILURE
    return None  # RECEIVED, IMPORTING: the import has not reported yet


# -- the report --------------------------------------------------------------------------------------------------------


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
