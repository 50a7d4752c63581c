"""The audit trail of one receiving process: what happened, as DICOM audit messages, handed to every sink.

What the SCP's threads do here is small and never waits: a C-STORE adds its study, SOP class and patient to its
association's ledger (a dictionary update under a lock); the association's end turns the ledger into one DICOM
Instances Transferred message per study; a refusal for a reason of trust becomes a Security Alert. Building the XML
is the end of the association's work (or the refusal's); delivering it is each sink's own thread.

Patient identifiers go to the audit sinks and nowhere else: nothing here logs them or counts them in a metric.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_store_contract import audit_messages as messages
from dicom_store_contract.audit_messages import IngestedStudy, Node, Source, Study
from pydicom.charset import convert_encodings, decode_bytes

from .sinks import Sink

LOG = logging.getLogger("dicom_store_scp.audit")

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
_SPECIFIC_CHARACTER_SET = 0x00080005
# Distinct (Patient ID, Patient's Name) pairs kept per study and association; more are counted, not listed.
PATIENTS_PER_STUDY = 16

# A-ASSOCIATE-RJ (result, source, diagnostic) answers given for a reason of trust, and what the alert says.
_TRUST_REFUSALS = {
    (0x01, 0x01, 0x01): "association rejected: the peer's address is not in PEER_CIDRS",
    (0x01, 0x01, 0x03): "association rejected: calling AE title not recognised (REQUIRE_CALLING_AE_TITLE)",
}


@dataclass
class _Ledger:
    """What one association transferred, study by study (at most ``limit`` studies before they are reported)."""

    sender: Node
    studies: dict[str, Study] = field(default_factory=dict)
    # Patients beyond PATIENTS_PER_STUDY, by study.
    unlisted_patients: dict[str, int] = field(default_factory=dict)
    # Instances refused before their study could be read (status -> count).
    unknown_study_failures: dict[int, int] = field(default_factory=dict)
    # INGEST_MODE=stow: what HealthImaging made of this association's instances, by study.
    ingested: dict[str, IngestedStudy] = field(default_factory=dict)


@dataclass(frozen=True)
class _StowAnswer:
    study_instance_uid: str
    sop_class_uid: str
    stored: bool
    image_set_id: str
    failure_reason: str


def _text(value: Any, encodings: Sequence[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            text = decode_bytes(value, list(encodings), set())
        except Exception:
            text = value.decode("latin-1")
        return text.rstrip("\0 ").strip()
    return str(value).strip()


def _encodings(header: Mapping[int, Any]) -> list[str]:
    raw = header.get(_SPECIFIC_CHARACTER_SET)
    if raw is None:
        return ["iso8859"]
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    terms = [term.strip() for term in text.rstrip("\0 ").split("\\")] or [""]
    try:
        return list(convert_encodings(terms))
    except Exception:
        return ["iso8859"]


class AuditTrail:
    """The audit messages of one receiving process."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        ae_title: str,
        source_id: str = "",
        enterprise_site_id: str = "",
        studies_per_association: int = 1000,
        address: str = "",
    ) -> None:
        self.sinks = list(sinks)
        self.source = Source(source_id or ae_title, enterprise_site_id)
        self.application = Node(ae_title, address or socket.gethostname(), process=str(os.getpid()))
        self.studies_per_association = studies_per_association
        # INGEST_MODE=stow: the data store, the destination of the ingest messages (set by build.py).
        self.data_store: Node | None = None
        self._lock = threading.Lock()
        self._ledgers: dict[int, _Ledger] = {}
        # HealthImaging's answer to the C-STORE an association's thread is handling, until store_answered takes it.
        self._stow_answers = threading.local()

    # -- the trail's own life --------------------------------------------------------------------------------------

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
        self.emit(messages.application_activity(self.source, self.application, started=True))

    def stop(self, timeout: float = 5.0) -> None:
        self.emit(messages.application_activity(self.source, self.application, started=False))
        for sink in self.sinks:
            sink.stop(timeout)

    def emit(self, message: str) -> None:
        for sink in self.sinks:
            sink.offer(message)

    # -- C-STORE -------------------------------------------------------------------------------------------------------

    def store_answered(
        self, assoc: Any, status: int, sop_class: str, study_uid: str, header: Mapping[int, Any] | None
    ) -> None:
        """Add one answered C-STORE to its association's ledger (the study unknown: ``study_uid`` empty)."""
        self._take_stow_answers(assoc)
        full: list[Study] = []
        with self._lock:
            ledger = self._ledgers.get(id(assoc))
            if ledger is None:
                ledger = self._ledgers[id(assoc)] = _Ledger(_sender(assoc))
            if not study_uid:
                ledger.unknown_study_failures[status] = ledger.unknown_study_failures.get(status, 0) + 1
                return
            study = ledger.studies.get(study_uid)
            if study is None:
                if len(ledger.studies) >= self.studies_per_association:
                    # Memory stays bounded: the studies so far are reported now, the association goes on.
                    full = list(ledger.studies.values())
                    ledger.studies.clear()
                study = ledger.studies[study_uid] = Study(study_uid)
            if status == 0:
                study.sop_classes[sop_class] = study.sop_classes.get(sop_class, 0) + 1
            else:
                study.failures[status] = study.failures.get(status, 0) + 1
            if header is not None:
                encodings = _encodings(header)
                patient = (_text(header.get(PATIENT_ID), encodings), _text(header.get(PATIENT_NAME), encodings))
                if patient not in study.patients:
                    if len(study.patients) < PATIENTS_PER_STUDY:
                        study.patients[patient] = None
                    else:
                        ledger.unlisted_patients[study_uid] = ledger.unlisted_patients.get(study_uid, 0) + 1
            sender = ledger.sender
        for each in full:
            self._transferred(sender, each, 0, {}, "")

    def _take_stow_answers(self, assoc: Any) -> None:
        """The stow answers this thread kept (:meth:`stow_answered`) into the association's ledger."""
        answers: list[_StowAnswer] = getattr(self._stow_answers, "pending", [])
        if not answers:
            return
        self._stow_answers.pending = []
        full: list[IngestedStudy] = []
        with self._lock:
            ledger = self._ledgers.get(id(assoc))
            if ledger is None:
                ledger = self._ledgers[id(assoc)] = _Ledger(_sender(assoc))
            for answer in answers:
                ingested = ledger.ingested.get(answer.study_instance_uid)
                if ingested is None:
                    if len(ledger.ingested) >= self.studies_per_association:
                        full = list(ledger.ingested.values())  # as for the studies: reported now, memory bounded
                        ledger.ingested.clear()
                    ingested = ledger.ingested[answer.study_instance_uid] = IngestedStudy(answer.study_instance_uid)
                ingested.add(answer.sop_class_uid, answer.stored, answer.image_set_id, answer.failure_reason)
        self._ingested(full)

    def stow_answered(
        self, study_uid: str, sop_class: str, stored: bool, image_set_id: str = "", failure_reason: str = ""
    ) -> None:
        """INGEST_MODE=stow: HealthImaging's answer for the instance this thread is storing (ingest.StowAuditRecords).

        Kept for the thread's next :meth:`store_answered`, which the same C-STORE calls once it is answered; at the
        association's end each study's outcome in HealthImaging is one message.
        """
        if not study_uid:
            return
        pending: list[_StowAnswer] = getattr(self._stow_answers, "pending", [])
        pending.append(_StowAnswer(study_uid, sop_class, stored, image_set_id, failure_reason))
        self._stow_answers.pending = pending

    def _ingested(self, studies: Sequence[IngestedStudy]) -> None:
        if self.data_store is None:
            return
        for study in studies:
            self.emit(
                messages.ingest_outcome(
                    self.source, self.application, self.data_store, study, messages.HEALTHIMAGING_STOW
                )
            )

    # -- association events (pynetdicom's, bound by server.py) ---------------------------------------------------------

    def association_ended(self, assoc: Any) -> None:
        """EVT_RELEASED / EVT_ABORTED: one DICOM Instances Transferred message per study the association sent."""
        with self._lock:
            ledger = self._ledgers.pop(id(assoc), None)
        if ledger is None:
            return
        how = "released" if getattr(assoc, "is_released", False) else "aborted"
        unknown = sum(ledger.unknown_study_failures.values())
        unknown_text = ""
        if unknown:
            unknown_text = f"; {unknown} instance(s) of an unreadable study refused: " + _statuses(
                ledger.unknown_study_failures
            )
        if not ledger.studies and unknown:
            study = Study("")
            self._transferred(ledger.sender, study, unknown, ledger.unknown_study_failures, how)
            self._ingested(list(ledger.ingested.values()))
            return
        for study in ledger.studies.values():
            failures = dict(study.failures)
            extra = unknown_text
            unlisted = ledger.unlisted_patients.get(study.study_instance_uid, 0)
            if unlisted:
                extra += f"; {unlisted} more patient identities in this study not listed"
            self._transferred(ledger.sender, study, sum(failures.values()), failures, how, extra)
        self._ingested(list(ledger.ingested.values()))

    def _transferred(
        self, sender: Node, study: Study, failed: int, failures: Mapping[int, int], how: str, extra: str = ""
    ) -> None:
        stored = sum(study.sop_classes.values())
        if failed and stored:
            outcome = messages.MINOR_FAILURE
        elif failed:
            outcome = messages.SERIOUS_FAILURE
        else:
            outcome = messages.SUCCESS
        description = f"{stored} instance(s) stored" + (f", association {how}" if how else "")
        if failed:
            description += f"; {failed} refused: {_statuses(failures)}"
        description += extra
        shown = study if study.study_instance_uid else None
        self.emit(messages.instances_transferred(self.source, sender, self.application, shown, outcome, description))

    def association_refused(self, assoc: Any) -> None:
        """After EVT_REQUESTED's checks, and on EVT_REJECTED: a Security Alert when the refusal was about trust."""
        primitive = getattr(assoc.acceptor, "primitive", None)
        if primitive is None or getattr(primitive, "result", None) not in (0x01, 0x02):
            return
        reason = _TRUST_REFUSALS.get((primitive.result, primitive.result_source, primitive.diagnostic))
        if reason is None or getattr(assoc, "_audit_refusal_reported", False):
            return
        assoc._audit_refusal_reported = True  # EVT_REQUESTED's check and EVT_REJECTED may both see it
        self.emit(messages.security_alert(self.source, self.application, _sender(assoc), reason))

    def handshake_failed(self, address: tuple[Any, ...], error: BaseException) -> None:
        """A TLS handshake refused for a reason of trust (no client certificate, one the CA did not sign, ...)."""
        if not is_trust_failure(error):
            return
        peer = Node("", str(address[0]))
        self.emit(messages.security_alert(self.source, self.application, peer, f"TLS handshake failed: {error}"))

    # -- Storage Commitment (commitment/scheduler.py) ------------------------------------------------------------------

    def commitment_answered(
        self,
        calling_ae: str,
        address: str,
        transaction_uid: str,
        sop_classes: Sequence[str],
        status: int,
        detail: str = "",
    ) -> None:
        """The N-ACTION-RSP given to a Storage Commitment request: success (recorded), or the failure it answered."""
        description = f"N-ACTION answered 0x{status:04X}: " + (
            detail or f"request recorded, {len(sop_classes)} instance(s); the report follows"
        )
        outcome = messages.SUCCESS if status == 0 else messages.SERIOUS_FAILURE
        self.emit(
            messages.storage_commitment(
                self.source, self.application, Node(calling_ae, address), transaction_uid, _counted(sop_classes),
                reported=False, outcome=outcome, description=description,
            )
        )  # fmt: skip

    def commitment_reported(
        self,
        calling_ae: str,
        address: str,
        transaction_uid: str,
        committed: Sequence[str],
        failed: Sequence[tuple[str, int]],
        delivered: str,
    ) -> None:
        """The N-EVENT-REPORT of a transaction: sent (``delivered`` says how), or given up (``delivered`` empty).

        ``committed``: the SOP class of each committed instance; ``failed``: the SOP class and failure reason of each
        failed one (the reasons counted in the description).
        """
        classes = _counted([*committed, *(sop_class for sop_class, _ in failed)])
        reasons: dict[int, int] = {}
        for _, reason in failed:
            reasons[reason] = reasons.get(reason, 0) + 1
        description = f"{len(committed)} committed"
        if failed:
            description += f", {len(failed)} failed: {_statuses(reasons)}"
        if delivered:
            description = f"N-EVENT-REPORT sent ({delivered}): {description}"
            outcome = messages.MINOR_FAILURE if failed else messages.SUCCESS
        else:
            description = f"N-EVENT-REPORT not delivered before its deadline (given up): {description}"
            outcome = messages.SERIOUS_FAILURE
        self.emit(
            messages.storage_commitment(
                self.source, self.application, Node(calling_ae, address), transaction_uid, classes,
                reported=True, outcome=outcome, description=description,
            )
        )  # fmt: skip

    def event_handlers(self) -> list[tuple[Any, Callable[..., None]]]:
        """pynetdicom event handlers, bound after the SCP's own (server.event_handlers)."""
        from pynetdicom import evt

        return [
            (evt.EVT_REQUESTED, lambda event: self.association_refused(event.assoc)),
            (evt.EVT_REJECTED, lambda event: self.association_refused(event.assoc)),
            (evt.EVT_RELEASED, lambda event: self.association_ended(event.assoc)),
            (evt.EVT_ABORTED, lambda event: self.association_ended(event.assoc)),
        ]


def _statuses(counts: Mapping[int, int]) -> str:
    return ", ".join(f"0x{status:04X} x{count}" for status, count in sorted(counts.items()))


def _counted(sop_classes: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sop_class in sop_classes:
        counts[sop_class] = counts.get(sop_class, 0) + 1
    return counts


def _sender(assoc: Any) -> Node:
    requestor = assoc.requestor
    primitive = requestor.primitive
    calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
    return Node(calling, str(requestor.address))


def is_trust_failure(error: BaseException) -> bool:
    """A TLS handshake error that is about trust: not a peer that connected and closed (a load balancer's check)."""
    import ssl

    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return False
    return isinstance(error, ssl.SSLError)
