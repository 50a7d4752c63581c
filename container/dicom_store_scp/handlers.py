"""Event handlers: access control, C-STORE validation and storage, association bookkeeping.

No socket code here (see server.py). Dependencies arrive through the bind arguments. A received data set is
never decoded in full: the receive loop (engine.py) streams it to a spool file, we read just the header elements
needed to validate and name it, and the file's bytes are stored exactly as received.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_store_contract import limits, uids
from dicom_store_contract.manifest import EndReason, Instance
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from . import header as header_walker
from . import protocol, statuses, validation
from .batches import AssociationClosing, DuplicateInstance, Sessions
from .checksum import ALGORITHM as CHECKSUM_ALGORITHM
from .metrics import Recorder
from .refusals import Refusal, RefusalLog
from .storage import StorageError

LOG = logging.getLogger("dicom_store_scp.handlers")

_SOP_CLASS_UID = Tag(0x0008, 0x0016)
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
_STUDY_DATE = Tag(0x0008, 0x0020)
_STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)
_SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)
_HEADER_TAGS: list[BaseTag | int] = sorted(
    {_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_DATE, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID, *validation.TAGS}
)
# The header is read up to the last element any check needs, never into the pixel data.
_LAST_HEADER_TAG = max(_HEADER_TAGS)
_LAST_TAG_NUMBER = int(_LAST_HEADER_TAG)
# The values read are keyed by plain ints (a BaseTag key compares through pydicom's Python-level __eq__).
_SOP_CLASS_UID_NUMBER, _SOP_INSTANCE_UID_NUMBER, _STUDY_DATE_NUMBER = map(
    int, (_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_DATE)
)
_STUDY_INSTANCE_UID_NUMBER, _SERIES_INSTANCE_UID_NUMBER = int(_STUDY_INSTANCE_UID), int(_SERIES_INSTANCE_UID)
_WANTED = frozenset(int(tag) for tag in _HEADER_TAGS)

# pydicom logs each complaint about a data set (as a JSON line, through the root logger) and also raises it as a
# Python warning, printed as a raw stderr line and remembered, text and all, in its module's warning registry: a
# peer that sends a different bad value each time (a Specific Character Set, say) grows that registry without
# bound. Ignored warnings are neither printed nor remembered.
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
# pydicom reads a data set whose first element is not encoded as the negotiated transfer syntax says (explicit
# VR where implicit was negotiated, or the reverse) the other way, with only a warning: the instance would be
# stored under File Meta Information that misdescribes it. That warning is an error here: 0xC000. (Inserted
# ahead of the filter above, so it wins.)
warnings.filterwarnings("error", message=r"Expected (explicit|implicit) VR, but found", category=UserWarning)


# A-ASSOCIATE-RJ (PS3.8 7.1.1.9): result, source, reason.
_REJECTED_PERMANENT = 0x01
_REJECTED_TRANSIENT = 0x02
_SERVICE_USER = 0x01
_SERVICE_PROVIDER_PRESENTATION = 0x03
_NO_REASON_GIVEN = 0x01
_LOCAL_LIMIT_EXCEEDED = 0x02

_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}

# The same, as the AssociationsRejected metric's Reason (dicom_store_contract.metrics.REJECTION_REASONS).
_REJECT_METRIC_REASONS = {
    (0x01, 0x03): "CallingAETitle",
    (0x01, 0x07): "CalledAETitle",
    (0x03, 0x02): "AssociationLimit",
}


def peer(assoc: Any) -> dict[str, Any]:
    """Who the association is with, for every log line about it."""
    requestor = assoc.requestor
    primitive = requestor.primitive
    return {
        "peer": f"{requestor.address}:{requestor.port}",
        "callingAE": str(getattr(primitive, "calling_ae_title", "") or "").strip(),
        "calledAE": str(getattr(primitive, "called_ae_title", "") or "").strip(),
    }


def _stop_after_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _LAST_HEADER_TAG


def _uid_fault(value: str) -> str:
    if not value:
        return "data set has none"
    if len(value) > uids.MAX_LENGTH and uids.has_uid_form(value):
        # AHI would import up to 256 characters, but DICOM allows 64: no other DICOM node could take it from AHI.
        return (
            f"data set has {len(value)} characters, DICOM allows {uids.MAX_LENGTH} (AHI {limits.AHI_UID_LENGTH.whole})"
        )
    return f"data set has {value}"


# -- connection and association events --------------------------------------------------------------------------


def handle_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN: name the connection's threads after the peer, so every log line they emit says who."""
    host, port = event.address[:2]
    # pynetdicom finds its acceptor threads by the "AcceptorThread" in their names: keep it.
    event.assoc.name = f"AcceptorThread peer {host}:{port}"
    event.assoc.dul.name = f"DUL peer {host}:{port}"


def handle_connection_closed(event: Any) -> None:
    """EVT_CONN_CLOSE: a peer that closed before asking for an association (a load balancer's TCP health check).

    pynetdicom's association thread would wait for the A-ASSOCIATE-RQ until the ACSE timeout, holding a thread
    and an association slot for every health check. An empty item on its queue is what that wait returns on a
    timeout, so the thread ends now, quietly.
    """
    assoc = event.assoc
    if assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)


def handle_requested(
    event: Any,
    peer_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    over_budget: Callable[[], bool] | None,
    recorder: Recorder,
) -> None:
    """EVT_REQUESTED: checks pynetdicom cannot make (AE titles and its per-process limit it checks itself).

    - peers outside ``PEER_CIDRS``: rejected permanent, service user, no reason given;
    - with several worker processes, the task-wide ``MAXIMUM_ASSOCIATIONS``: rejected transient, service
      provider (presentation), local limit exceeded, as pynetdicom answers for its own limit.
    """
    assoc = event.assoc
    if peer_networks and not _peer_allowed(assoc.requestor.address, peer_networks):
        _reject(assoc, (_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON_GIVEN), "peer not in PEER_CIDRS")
        recorder.association_rejected("PeerAddress")
    elif over_budget is not None and over_budget():
        _reject(
            assoc, (_REJECTED_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED), "local limit exceeded"
        )
        recorder.association_rejected("AssociationLimit")


def _peer_allowed(address: str, peer_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in peer_networks)


def _reject(assoc: Any, result_source_reason: tuple[int, int, int], reason: str) -> None:
    assoc.acse.send_reject(*result_source_reason)
    LOG.warning(
        "association rejected", extra={"fields": {"event": "association-rejected", **peer(assoc), "reason": reason}}
    )
    assoc.kill()


def handle_rejected(event: Any, recorder: Recorder) -> None:
    """EVT_REJECTED: log pynetdicom's own rejections (AE titles, association limit) with their reason."""
    assoc = event.assoc
    primitive = assoc.acceptor.primitive
    recorder.association_rejected(_REJECT_METRIC_REASONS.get((primitive.result_source, primitive.diagnostic), "Other"))
    reason = _REJECT_REASONS.get((primitive.result_source, primitive.diagnostic), "unknown")
    LOG.warning(
        "association rejected",
        extra={
            "fields": {
                "event": "association-rejected",
                **peer(assoc),
                "reason": reason,
                "result": primitive.result,
                "source": primitive.result_source,
                "diagnostic": primitive.diagnostic,
            }
        },
    )


def handle_accepted(event: Any, recorder: Recorder) -> None:
    """EVT_ACCEPTED: count it; log the presentation contexts we declined, so a sender's misconfiguration is visible."""
    recorder.association_accepted()
    declined = [
        {
            "abstractSyntax": str(context.abstract_syntax),
            "transferSyntaxes": [str(ts) for ts in context.transfer_syntax],
            "result": context.result,
        }
        for context in event.assoc.rejected_contexts
    ]
    if declined:
        LOG.info(
            "presentation contexts declined",
            extra={"fields": {"event": "contexts-declined", **peer(event.assoc), "declined": declined}},
        )


def handle_established(event: Any, sessions: Sessions) -> None:
    sessions.open(event.assoc)


def handle_released(event: Any, sessions: Sessions) -> None:
    sessions.close(event.assoc, EndReason.RELEASED)


def handle_aborted(event: Any, sessions: Sessions) -> None:
    sessions.close(event.assoc, EndReason.ABORTED)


# -- C-STORE -----------------------------------------------------------------------------------------------------------


def handle_store(event: Any, sessions: Sessions, recorder: Recorder, refusals: RefusalLog | None = None) -> int:
    """A received C-STORE (engine's _StoreEvent): validate, store durably, and only then answer success.

    ``refusals``: where a refusal is recorded for ``dicom-store-scp status`` (refusals.py), besides its log line.
    With an audit trail, the answer goes in its association's audit record (audit/trail.py), with what the header
    told of the study and patient (already read: nothing more is parsed for it).
    """
    read: list[tuple[dict[int, str], dict[int, Any]]] = []
    status = _handle_store(event, sessions, recorder, refusals, read)
    if sessions.audit is not None:
        values, header = read[0] if read else ({}, None)
        sessions.audit.store_answered(
            event.assoc, status, str(event.request.AffectedSOPClassUID), values.get(_STUDY_INSTANCE_UID_NUMBER, ""),
            header,
        )  # fmt: skip
    return status


def _handle_store(
    event: Any,
    sessions: Sessions,
    recorder: Recorder,
    refusals: RefusalLog | None,
    read: list[tuple[dict[int, str], dict[int, Any]]],
) -> int:
    # The receive loop calls this once the data set's last fragment is in the spool file: where StoreLatency starts.
    received = time.monotonic()
    request = event.request
    source = Path(event.dataset_path)
    try:
        session = sessions.get(event.assoc)
    except AssociationClosing:
        return _fail(event, None, recorder, refusals, statuses.OUT_OF_RESOURCES_CLOSING, "association is not open")

    def fail(
        status: int, detail: str, fields: dict[str, Any] | None = None, values: dict[int, str] | None = None
    ) -> int:
        return _fail(event, sessions, recorder, refusals, status, detail, fields, values)

    try:
        values, header = _read_header(source, str(event.context.transfer_syntax), event.head, event.size)
    except Exception as error:  # pydicom raises many types for malformed input
        return fail(statuses.CANNOT_PARSE_DATASET, f"{type(error).__name__}: {error}")
    read.append((values, header))

    status, detail = _validate(request, values)
    if status != statuses.SUCCESS:
        return fail(status, detail, values=values)
    status, detail, fields = validation.check(header)
    if status != statuses.SUCCESS:
        return fail(status, detail, fields, values)
    limited = validation.limited_support(header)
    if limited:
        LOG.warning(
            "stored; AWS HealthImaging documents limited support for it",
            extra={
                "fields": {
                    "event": "ahi-limited-support",
                    **peer(event.assoc),
                    "sopInstanceUID": str(request.AffectedSOPInstanceUID),
                    "content": limited,
                    "source": validation.DICOM_SUPPORT_PAGE,
                }
            },
        )

    instance = Instance(
        sop_class_uid=values[_SOP_CLASS_UID_NUMBER],
        sop_instance_uid=values[_SOP_INSTANCE_UID_NUMBER],
        study_instance_uid=values[_STUDY_INSTANCE_UID_NUMBER],
        series_instance_uid=values[_SERIES_INSTANCE_UID_NUMBER],
        study_date=values[_STUDY_DATE_NUMBER],
        transfer_syntax_uid=str(event.context.transfer_syntax),
        size=event.size,
        # Computed as the receive loop wrote the file (engine.py): the file is not read again for it.
        checksum=event.checksum,
        checksum_algorithm=CHECKSUM_ALGORITHM,
    )
    try:
        sessions.store(session, source, instance)
    except StorageError as error:
        return fail(error.status or statuses.OUT_OF_RESOURCES_STORAGE, str(error), values=values)
    except DuplicateInstance as error:
        return fail(
            statuses.DUPLICATE_SOP_INSTANCE, str(error), {"batchId": error.batch_id, "differs": error.differs}, values
        )
    except AssociationClosing as error:
        return fail(statuses.OUT_OF_RESOURCES_CLOSING, str(error), values=values)
    recorder.instance_stored(instance.size, time.monotonic() - received, event.receive_seconds)
    return statuses.SUCCESS


_UID_TAGS = {_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID}
_UID_TAG_NUMBERS = {int(tag) for tag in _UID_TAGS}
_HEADER_TAG_NUMBERS = [int(tag) for tag in _HEADER_TAGS]


def _read_header(
    source: Path, transfer_syntax: str, head: bytes | bytearray | None = None, size: int = 0
) -> tuple[dict[int, str], dict[int, Any]]:
    """(the handler's text of each header tag, each found element's value for validation.py); raises what pydicom
    raises for a header it cannot read.

    The wanted elements alone are found by header.py; their values are read without pydicom when they are plain
    text (nearly always), by pydicom otherwise, and by pydicom's ``read_partial`` whenever the walker is unsure.
    ``head``: the file's first bytes (all ``size`` of them when it is short), kept in memory by the receive
    path (engine.py), walked before the file.
    """
    walked = header_walker.read_elements(source, transfer_syntax, _WANTED, _LAST_TAG_NUMBER, head, size)
    if walked is not None:
        values = header_walker.plain_values(walked, _HEADER_TAG_NUMBERS, _UID_TAG_NUMBERS)
        if values is not None:
            return values, walked.raw_values()
        header = header_walker.as_dataset(walked)
    else:
        with source.open("rb") as handle:
            header = read_partial(handle, stop_when=_stop_after_header, specific_tags=_HEADER_TAGS)
    # pydicom converts a value when it is first read: an unknown VR or an undecodable value raises only now.
    decoded = {int(tag): (_uid_as_sent if tag in _UID_TAGS else _element_text)(header, tag) for tag in _HEADER_TAGS}
    tags = header.keys()  # (iterating a Dataset itself would convert every element)
    return decoded, {int(tag): header.get_item(tag).value for tag in tags}


def _uid_as_sent(header: Any, tag: BaseTag | int) -> str:
    """A UID as the data set's bytes have it, less trailing padding (the NUL DICOM prescribes, or the space some
    senders use). pydicom strips all surrounding spaces, so " 1.2.3" would be stored and tracked as "1.2.3" while the
    object sent to HealthImaging says otherwise: such a UID is refused like any other malformed one."""
    if tag not in header:
        return ""
    raw = getattr(header.get_item(tag), "value", None)
    text = _element_text(header, tag)  # pydicom's reading first: it raises for what it cannot decode (0xC000)
    return raw.rstrip(b"\0 ").decode("latin-1") if isinstance(raw, bytes) else text


def _element_text(header: Any, tag: BaseTag | int) -> str:
    if tag not in header:
        return ""
    value = header[tag].value
    return str(value).strip() if value is not None else ""


def _validate(request: Any, values: dict[int, str]) -> tuple[int, str]:
    sop_class = values[_SOP_CLASS_UID_NUMBER]
    if sop_class != str(request.AffectedSOPClassUID):
        return statuses.SOP_CLASS_MISMATCH, f"data set has {sop_class or 'none'}"
    sop_instance = values[_SOP_INSTANCE_UID_NUMBER]
    if not uids.is_uid(sop_instance):
        return statuses.BAD_SOP_INSTANCE_UID, _uid_fault(sop_instance)
    if sop_instance != str(request.AffectedSOPInstanceUID):
        return statuses.SOP_INSTANCE_MISMATCH, f"data set has {sop_instance}"
    study = values[_STUDY_INSTANCE_UID_NUMBER]
    if not uids.is_uid(study):
        return statuses.BAD_STUDY_INSTANCE_UID, _uid_fault(study)
    series = values[_SERIES_INSTANCE_UID_NUMBER]
    if not uids.is_uid(series):
        return statuses.BAD_SERIES_INSTANCE_UID, _uid_fault(series)
    return statuses.SUCCESS, ""


def _fail(
    event: Any,
    sessions: Sessions | None,
    recorder: Recorder,
    refusals: RefusalLog | None,
    status: int,
    detail: str,
    fields: dict[str, Any] | None = None,
    values: dict[int, str] | None = None,
) -> int:
    if sessions is not None:
        with contextlib.suppress(AssociationClosing):
            sessions.record_failure(sessions.get(event.assoc))
    # The response names the element (Offending Element), never its value.
    keyword = (fields or {}).get("element")
    event.offending_element = statuses.OFFENDING_ELEMENTS.get(status) or (
        tag_for_keyword(keyword) if isinstance(keyword, str) else None
    )
    request = event.request
    # The study and series the data set names, where it was read: a lookup by study finds the refusal too.
    known = values or {}
    return refused_store(
        event.assoc, recorder, status, detail, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
        refusals=refusals, study=known.get(_STUDY_INSTANCE_UID_NUMBER, ""),
        series=known.get(_SERIES_INSTANCE_UID_NUMBER, ""), **(fields or {}),
    )  # fmt: skip


def refused_store(
    assoc: Any,
    recorder: Recorder,
    status: int,
    detail: str,
    sop_class: str,
    sop_instance: str,
    *,
    refusals: RefusalLog | None = None,
    study: str = "",
    series: str = "",
    **fields: Any,
) -> int:
    """Count and log a C-STORE answered with a failure status (one line for every reason), and record it where
    ``dicom-store-scp status`` finds it (``refusals``: only the status, its reason, the element's keyword, the
    UIDs and who sent it, never a value of the data set); the status."""
    recorder.instance_failed(statuses.family(status))
    if refusals is not None:
        who = peer(assoc)
        keyword = fields.get("element")
        refusals.record(
            Refusal(
                sop_instance_uid=sop_instance,
                status=status,
                reason=statuses.REASONS[status],
                sop_class_uid=sop_class,
                study_instance_uid=study,
                series_instance_uid=series,
                element=keyword if isinstance(keyword, str) else "",
                calling_ae=who["callingAE"],
                called_ae=who["calledAE"],
                peer=who["peer"],
            )
        )
    LOG.warning(
        "C-STORE failed",
        extra={
            "fields": {
                "event": "c-store-failed",
                **peer(assoc),
                "status": f"0x{status:04X}",
                "reason": statuses.REASONS[status],
                "detail": detail,
                "sopInstanceUID": sop_instance,
                "sopClassUID": sop_class,
                **fields,
            }
        },
    )
    return status


def refused_request(
    assoc: Any, request: str, status: int, detail: str, message_id: int, sop_class: str, **fields: Any
) -> None:
    """Log a DIMSE request other than C-STORE answered with a failure status: the association goes on."""
    LOG.warning(
        "request refused",
        extra={
            "fields": {
                "event": "request-refused",
                **peer(assoc),
                "request": request,
                "status": f"0x{status:04X}",
                "reason": statuses.REASONS[status],
                "detail": detail,
                "messageId": message_id,
                "sopClassUID": sop_class,
                **fields,
            }
        },
    )


def protocol_aborted(assoc: Any, recorder: Recorder, source: int, reason: int, detail: str) -> None:
    """Count and log an A-ABORT the SCP sends for a protocol fault (before or after negotiation: the same line)."""
    recorder.protocol_abort()
    LOG.warning(
        "association aborted",
        extra={
            "fields": {
                "event": "protocol-abort",
                **peer(assoc),
                "reason": protocol.ABORT_REASONS[(source, reason)],
                "abortSource": source,
                "abortReason": reason,
                "detail": detail,
            }
        },
    )
